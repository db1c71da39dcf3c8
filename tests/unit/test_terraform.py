"""infra/terraform deploys what template.yaml deploys: parity, checked by parsing both.

The terraform binary cannot be fetched here, so the module is read with python-hcl2 and
compared with the template: every table (keys, attributes, indexes, TTL, recovery), queue
(settings, dead-letter redrive), topic and subscription, bucket, function (handler, runtime,
architecture, memory, timeout, environment names, triggers) and every policy statement of every
function, node and router role is in the other, and nothing more. Terraform names are the
template's logical ids in snake case (``OAuthClientsTable`` -> ``oauth_clients_table``).
checkov's run is in tests/functional/test_deploy_checkov.py.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any

import hcl2
import pytest

from infra.local.template import ScheduleTrigger, SqsTrigger, Template
from tests.support.iam_gate import function_policies

TERRAFORM = Path(__file__).resolve().parents[2] / "infra" / "terraform"
FUNCTIONS = {"ApiFunction": "api_function", "EventsFunction": "events_function",
             "ReaperFunction": "reaper_function"}


def snake(logical_id: str) -> str:
    name = logical_id.replace("OAuth", "Oauth")
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", name).lower()


def _plain(value: Any) -> Any:
    """python-hcl2's output without its quoting and block markers."""
    if isinstance(value, dict):
        return {_plain(k): _plain(v) for k, v in value.items() if k != "__is_block__"}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


@functools.cache
def module() -> dict[str, dict[str, dict[str, Any]]]:
    """``{"resource"|"data": {type: {name: body}}}`` over every .tf file."""
    merged: dict[str, dict[str, dict[str, Any]]] = {"resource": {}, "data": {}, "variable": {}}
    for path in sorted(TERRAFORM.glob("*.tf")):
        with path.open() as handle:
            parsed = _plain(hcl2.load(handle))
        for kind in ("resource", "data"):
            for block in parsed.get(kind, []):
                for type_, named in block.items():
                    merged[kind].setdefault(type_, {}).update(named)
        for block in parsed.get("variable", []):
            merged["variable"].update(block)
    return merged


@functools.cache
def template() -> Template:
    return Template.load()


def resources(type_: str) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = module()["resource"].get(type_, {})
    return found


def of_type(cfn_type: str) -> dict[str, dict[str, Any]]:
    return {k: template().properties(k) for k, r in template().resources.items()
            if r["Type"] == cfn_type}


def _one(blocks: Any) -> Any:
    """A block that python-hcl2 may give as a list of one."""
    return blocks[0] if isinstance(blocks, list) else blocks


# --- layout ------------------------------------------------------------------------------------


def test_standard_layout_with_a_pinned_provider():
    assert {p.name for p in TERRAFORM.glob("*.tf")} >= {"versions.tf", "variables.tf",
                                                         "outputs.tf"}
    text = (TERRAFORM / "versions.tf").read_text()
    assert re.search(r'source\s*=\s*"hashicorp/aws"', text)
    assert re.search(r'version\s*=\s*"~> \d+\.\d+"', text)


def test_every_template_parameter_is_a_variable():
    variables = set(module()["variable"])
    for parameter in template().document["Parameters"]:
        assert snake(parameter) in variables, parameter


# --- state -------------------------------------------------------------------------------------


def _table_shape_from_template(props: dict[str, Any]) -> dict[str, Any]:
    keys = {k["KeyType"]: k["AttributeName"] for k in props["KeySchema"]}
    indexes = {}
    for index in props.get("GlobalSecondaryIndexes", []):
        index_keys = {k["KeyType"]: k["AttributeName"] for k in index["KeySchema"]}
        indexes[index["IndexName"]] = (index_keys["HASH"], index_keys.get("RANGE"),
                                       index["Projection"]["ProjectionType"])
    ttl = props.get("TimeToLiveSpecification")
    return {"billing": props["BillingMode"], "hash": keys["HASH"], "range": keys.get("RANGE"),
            "attributes": {a["AttributeName"]: a["AttributeType"]
                           for a in props["AttributeDefinitions"]},
            "indexes": indexes, "ttl": ttl["AttributeName"] if ttl else None,
            "pitr": bool(props.get("PointInTimeRecoverySpecification", {})
                         .get("PointInTimeRecoveryEnabled"))}


def _table_shape_from_terraform(body: dict[str, Any]) -> dict[str, Any]:
    ttl = body.get("ttl")
    return {"billing": body["billing_mode"], "hash": body["hash_key"],
            "range": body.get("range_key"),
            "attributes": {a["name"]: a["type"] for a in body.get("attribute", [])},
            "indexes": {i["name"]: (i["hash_key"], i.get("range_key"), i["projection_type"])
                        for i in body.get("global_secondary_index", [])},
            "ttl": _one(ttl)["attribute_name"] if ttl and _one(ttl).get("enabled") else None,
            "pitr": bool(_one(body.get("point_in_time_recovery", [{}])).get("enabled"))}


def test_tables_keys_indexes_ttl_and_recovery_are_the_same():
    tables = of_type("AWS::DynamoDB::Table")
    terraform = resources("aws_dynamodb_table")
    assert {snake(t) for t in tables} == set(terraform)
    for logical_id, props in tables.items():
        assert _table_shape_from_terraform(terraform[snake(logical_id)]) == \
            _table_shape_from_template(props), logical_id


def _redrive(text: str | None) -> tuple[str, int] | None:
    if not text:
        return None
    match = re.search(r"deadLetterTargetArn\s*=\s*aws_sqs_queue\.(\w+)\.arn.*?"
                      r"maxReceiveCount\s*=\s*(\d+)", text, re.S)
    assert match, text
    return match.group(1), int(match.group(2))


def test_queues_and_their_dead_letter_redrive_are_the_same():
    queues = of_type("AWS::SQS::Queue")
    terraform = resources("aws_sqs_queue")
    assert {snake(q) for q in queues} == set(terraform)
    for logical_id, props in queues.items():
        body = terraform[snake(logical_id)]
        redrive = props.get("RedrivePolicy")
        expected = None if not redrive else (
            snake(redrive["deadLetterTargetArn"]["Fn::GetAtt"][0]),
            int(redrive["maxReceiveCount"]))
        assert (body.get("visibility_timeout_seconds"), body.get("message_retention_seconds"),
                body.get("sqs_managed_sse_enabled"), _redrive(body.get("redrive_policy"))) == (
            props.get("VisibilityTimeout"), props.get("MessageRetentionPeriod"),
            props.get("SqsManagedSseEnabled"), expected), logical_id


def test_topics_subscriptions_and_queue_policies_are_the_same():
    assert {snake(t) for t in of_type("AWS::SNS::Topic")} == set(resources("aws_sns_topic"))
    for logical_id, props in of_type("AWS::SNS::Topic").items():
        assert resources("aws_sns_topic")[snake(logical_id)].get("kms_master_key_id") == \
            props.get("KmsMasterKeyId")
    subscriptions = resources("aws_sns_topic_subscription")
    assert {snake(s) for s in of_type("AWS::SNS::Subscription")} == set(subscriptions)
    for logical_id, props in of_type("AWS::SNS::Subscription").items():
        body = subscriptions[snake(logical_id)]
        assert body["protocol"] == props["Protocol"]
        assert body["raw_message_delivery"] == props["RawMessageDelivery"]
        assert body["endpoint"] == \
            f"${{aws_sqs_queue.{snake(props['Endpoint']['Fn::GetAtt'][0])}.arn}}"
        assert body["topic_arn"] == f"${{aws_sns_topic.{snake(props['TopicArn']['Ref'])}.arn}}"
    assert {snake(p) for p in of_type("AWS::SQS::QueuePolicy")} == \
        set(resources("aws_sqs_queue_policy"))


def test_buckets_are_private_and_encrypted_alike():
    buckets = of_type("AWS::S3::Bucket")
    assert {snake(b) for b in buckets} == set(resources("aws_s3_bucket"))
    for logical_id, props in buckets.items():
        name = snake(logical_id)
        block = resources("aws_s3_bucket_public_access_block")[name]
        expected = props["PublicAccessBlockConfiguration"]
        assert [block[k] for k in ("block_public_acls", "block_public_policy",
                                   "ignore_public_acls", "restrict_public_buckets")] == [
            expected[k] for k in ("BlockPublicAcls", "BlockPublicPolicy", "IgnorePublicAcls",
                                  "RestrictPublicBuckets")]
        rule = _one(resources("aws_s3_bucket_server_side_encryption_configuration")[name]
                    ["rule"])
        algorithm = _one(rule["apply_server_side_encryption_by_default"])["sse_algorithm"]
        assert algorithm == props["BucketEncryption"]["ServerSideEncryptionConfiguration"][0][
            "ServerSideEncryptionByDefault"]["SSEAlgorithm"]


# --- functions ---------------------------------------------------------------------------------


def _locals() -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for path in sorted(TERRAFORM.glob("*.tf")):
        with path.open() as handle:
            for block in _plain(hcl2.load(handle)).get("locals", []):
                merged.update(block)
    return merged


def test_functions_are_the_same():
    functions = template().functions()
    globals_ = template().document["Globals"]["Function"]
    lambdas = resources("aws_lambda_function")
    assert {FUNCTIONS[f] for f in functions} == set(lambdas)
    local = _locals()
    assert local["runtime"] == globals_["Runtime"]
    assert local["architectures"] == globals_["Architectures"]
    assert local["memory_size"] == globals_["MemorySize"]
    for logical_id, spec in functions.items():
        body = lambdas[FUNCTIONS[logical_id]]
        assert (body["handler"], body["timeout"]) == (spec.handler, spec.timeout_seconds)
        short = FUNCTIONS[logical_id].removesuffix("_function")
        own = f"local.{short}_environment"
        assert body["environment"][0]["variables"] == (
            f"${{merge(local.environment, {own})}}" if spec.environment
            else "${local.environment}")
        assert set(local.get(f"{short}_environment", {})) == set(spec.environment)
        assert body["filename"] == "${local.lambda_zip}"
    assert set(local["environment"]) == set(template().function_environment())


def test_triggers_are_the_same():
    events = template().properties("EventsFunction")["Events"]["Events"]["Properties"]
    mapping = resources("aws_lambda_event_source_mapping")["events_function_events"]
    assert mapping["event_source_arn"] == "${aws_sqs_queue.events_queue.arn}"
    assert events["Queue"] == {"Fn::GetAtt": ["EventsQueue", "Arn"]}
    assert mapping["function_name"] == "${aws_lambda_function.events_function.arn}"
    assert (mapping["batch_size"], mapping["function_response_types"]) == (
        events["BatchSize"], events["FunctionResponseTypes"])
    schedule = template().properties("ReaperFunction")["Events"]["EveryMinute"]["Properties"]
    rule = resources("aws_cloudwatch_event_rule")["reaper_function_every_minute"]
    assert rule["schedule_expression"] == schedule["Schedule"]
    assert schedule["Name"] == {"Fn::Sub": "${AWS::StackName}-reaper"}
    assert rule["name"] == "${local.reaper_rule}"
    assert _locals()["reaper_rule"] == "${var.name}-reaper"
    # Both start on, and the control plane switches them (control_plane/standby.py): Terraform
    # must not switch them back on each apply.
    assert "Enabled" not in events and "State" not in schedule  # SAM's default: on
    assert (mapping["enabled"], mapping["lifecycle"]) == (True, [{"ignore_changes": ["enabled"]}])
    assert (rule["state"], rule["lifecycle"]) == ("ENABLED", [{"ignore_changes": ["state"]}])
    target = resources("aws_cloudwatch_event_target")["reaper_function_every_minute"]
    assert target["arn"] == "${aws_lambda_function.reaper_function.arn}"
    integration = resources("aws_apigatewayv2_integration")["http_api_integration"]
    expected = template().properties("HttpApiIntegration")
    assert integration["integration_uri"] == "${aws_lambda_function.api_function.arn}"
    assert (integration["integration_type"], integration["payload_format_version"]) == (
        expected["IntegrationType"], expected["PayloadFormatVersion"])
    route = resources("aws_apigatewayv2_route")["http_api_route"]
    assert route["route_key"] == template().properties("HttpApiRoute")["RouteKey"]
    stage = resources("aws_apigatewayv2_stage")["http_api_stage"]
    assert stage["name"] == template().properties("HttpApiStage")["StageName"]


# --- policies ----------------------------------------------------------------------------------


def _template_resource(value: Any) -> str:
    """One template policy resource, as a name both sides share."""
    kinds = {k: r["Type"] for k, r in template().resources.items()}
    if isinstance(value, dict) and "Fn::GetAtt" in value:
        return f"{value['Fn::GetAtt'][0]}.Arn"
    if isinstance(value, dict) and "Ref" in value:
        assert kinds[value["Ref"]] == "AWS::SNS::Topic", value  # a topic's Ref is its ARN
        return f"{value['Ref']}.Arn"
    text = value["Fn::Sub"] if isinstance(value, dict) else value
    for marker, name in _NAMED_ARNS.items():
        if marker in text:
            return name
    # An ARN of a resource's own (a mapping SAM makes for a function's SQS event: by its Ref).
    text = re.sub(r"^.*:event-source-mapping:\$\{(\w+)\}$", r"\1.Arn", text)
    return re.sub(r"\$\{(\w+)\.Arn\}", r"\1.Arn", text)


_NAMED_ARNS = {"-node-*": "node-queues", ":rule/${AWS::StackName}-reaper": "reaper-rule",
               ":parameter/": "signing-key-parameter",
               ":iam::${AWS::AccountId}:root": "account-root"}
"""What a template ARN built with Fn::Sub contains -> the name both sides give it."""


def _terraform_resource(text: str) -> str:
    generated = [t.resource for f in template().functions().values() for t in f.triggers
                 if isinstance(t, SqsTrigger | ScheduleTrigger)]
    by_snake = {snake(k): k for k in [*template().resources, *generated]}
    text = text.replace("${local.node_queues_arn}", "node-queues").replace(
        "${local.signing_key_parameter_arn}", "signing-key-parameter").replace(
        "${local.reaper_rule_arn}", "reaper-rule")
    if text == "${local.arn_prefix}:iam::${local.account_id}:root":
        return "account-root"
    return re.sub(r"\$\{aws_\w+\.(\w+)\.arn\}", lambda m: f"{by_snake[m.group(1)]}.Arn", text)


def _listed(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _template_statements(document: dict[str, Any]) -> set[tuple[frozenset[str], ...]]:
    return {(frozenset(_listed(s["Action"])),
             frozenset(_template_resource(r) for r in _listed(s["Resource"])))
            for s in document["Statement"]}


def _terraform_statements(name: str) -> set[tuple[frozenset[str], ...]]:
    document = module()["data"]["aws_iam_policy_document"][name]
    return {(frozenset(s["actions"]), frozenset(_terraform_resource(r) for r in s["resources"]))
            for s in document["statement"]}


@pytest.mark.parametrize("function", sorted(FUNCTIONS))
def test_each_functions_policy_statements_are_the_same(function: str):
    policies = template().properties(function)["Policies"]
    expected = set().union(*(_template_statements(p) for p in policies))
    assert _terraform_statements(FUNCTIONS[function]) == expected


@pytest.mark.parametrize("role", ["NodeRole", "RouterRole", "StorageRole"])
def test_node_and_router_roles_are_the_same(role: str):
    props = template().properties(role)
    (policy,) = props["Policies"]
    assert _terraform_statements(snake(role)) == _template_statements(policy["PolicyDocument"])
    trust = module()["data"]["aws_iam_policy_document"][f"{snake(role)}_trust"]
    (statement,) = trust["statement"]
    (principals,) = statement["principals"]
    (expected,) = props["AssumeRolePolicyDocument"]["Statement"]
    kind, identity = next(iter(expected["Principal"].items()))
    assert principals["type"] == kind
    assert [_terraform_resource(i) if "$" in i else i for i in principals["identifiers"]] == [
        _template_resource(identity) if not isinstance(identity, str) else identity]


def test_the_managed_policies_sam_adds_are_attached_in_terraform_too():

    translated = function_policies(template())
    spec = _locals()["functions"]
    for logical_id, name in FUNCTIONS.items():
        managed = {arn.split(":policy/", 1)[1] for arn in translated[logical_id].managed}
        assert set(spec[name]["managed"]) == managed, logical_id
