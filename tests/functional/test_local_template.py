"""template.yaml -> moto: every resource is created from the template, nothing from a second list.

Runs against moto's server mode on a free loopback port (what the local stack runs); each test
uses its own uuid stack name, so tests never see each other's resources.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from moto import mock_aws

from infra.local import cfn_yaml
from infra.local.aws import AwsEndpoint
from infra.local.errors import TemplateError
from infra.local.intrinsics import Resolver
from infra.local.moto_server import MotoServer
from infra.local.provision import Provisioner, Stack
from infra.local.template import DEFAULT_TEMPLATE, ApiTrigger, ScheduleTrigger, SqsTrigger, Template

PARAMETERS = {
    "PortalUrl": "http://localhost:8000",
    "RouterDomain": "localhost",
    "RouterScheme": "http",
    "RouterTunnelUrls": "ws://127.0.0.1:8080/.dit4c/tunnel,ws://10.0.0.1:8080/.dit4c/tunnel",
}

EXTRA_RESOURCES = """
  WidgetsTable:
    Type: AWS::DynamoDB::Table
    Properties:
      BillingMode: PAY_PER_REQUEST
      AttributeDefinitions:
        - {AttributeName: widget_id, AttributeType: S}
      KeySchema:
        - {AttributeName: widget_id, KeyType: HASH}
      TimeToLiveSpecification: {AttributeName: gone_at, Enabled: true}

  WidgetsQueue:
    Type: AWS::SQS::Queue
    Properties:
      VisibilityTimeout: 42
      RedrivePolicy:
        deadLetterTargetArn: !GetAtt EventsDLQ.Arn
        maxReceiveCount: 3
"""


@pytest.fixture(scope="module")
def endpoint() -> Iterator[AwsEndpoint]:
    server = MotoServer()
    yield server.start()
    server.stop()


@pytest.fixture
def stack_name() -> str:
    return f"t-{uuid.uuid4().hex[:10]}"


def provision(endpoint: AwsEndpoint, stack_name: str, template: Template | None = None) -> Stack:
    return Provisioner(endpoint, stack_name).provision(template or Template.load(), PARAMETERS)


def test_every_table_queue_topic_and_bucket_of_the_template_exists(endpoint, stack_name):
    stack = provision(endpoint, stack_name)
    document = cfn_yaml.load(DEFAULT_TEMPLATE)
    declared = {
        logical_id: resource["Type"] for logical_id, resource in document["Resources"].items()
    }
    dynamodb, sqs = endpoint.client("dynamodb"), endpoint.client("sqs")
    tables = [lid for lid, kind in declared.items() if kind == "AWS::DynamoDB::Table"]
    queues = [lid for lid, kind in declared.items() if kind == "AWS::SQS::Queue"]
    assert len(tables) >= 9 and len(queues) >= 4
    for logical_id in tables:
        name = stack.resources[logical_id].ref
        table = dynamodb.describe_table(TableName=name)["Table"]
        assert table["KeySchema"] == document["Resources"][logical_id]["Properties"]["KeySchema"]
    for logical_id in queues:
        sqs.get_queue_attributes(QueueUrl=stack.resources[logical_id].ref)
    topic = stack.resources["RevocationsTopic"].ref
    assert topic in {t["TopicArn"] for t in endpoint.client("sns").list_topics()["Topics"]}
    endpoint.client("s3").head_bucket(Bucket=stack.resources["StorageBucket"].ref)
    role = endpoint.client("iam").get_role(RoleName=stack.resources["NodeRole"].ref)["Role"]
    assert role["MaxSessionDuration"] == 3600


def test_indexes_ttl_redrive_and_subscription_follow_the_template(endpoint, stack_name):
    stack = provision(endpoint, stack_name)
    dynamodb, sqs, sns = endpoint.client("dynamodb"), endpoint.client("sqs"), endpoint.client("sns")

    instances = dynamodb.describe_table(TableName=stack.environment["DIT4C_INSTANCES_TABLE"])
    indexes = {i["IndexName"]: i for i in instances["Table"]["GlobalSecondaryIndexes"]}
    assert set(indexes) == {"by-owner", "by-node", "by-transition"}
    assert indexes["by-transition"]["Projection"] == {"ProjectionType": "KEYS_ONLY"}

    ttl = dynamodb.describe_time_to_live(TableName=stack.environment["DIT4C_SESSIONS_TABLE"])
    assert ttl["TimeToLiveDescription"]["AttributeName"] == "expires_at"

    attributes = sqs.get_queue_attributes(
        QueueUrl=stack.environment["DIT4C_EVENTS_QUEUE_URL"], AttributeNames=["All"]
    )["Attributes"]
    assert attributes["VisibilityTimeout"] == "180"
    redrive = json.loads(attributes["RedrivePolicy"])
    assert redrive == {
        "deadLetterTargetArn": stack.resources["EventsDLQ"].attributes["Arn"],
        "maxReceiveCount": 5,
    }

    # The revocation fan-out really delivers, raw, to the router's queue.
    topic = stack.environment["DIT4C_REVOCATIONS_TOPIC_ARN"]
    sns.publish(TopicArn=topic, Message='{"type": "revocation"}')
    queue = stack.resources["RouterRevocationsQueue"].ref
    received = sqs.receive_message(QueueUrl=queue, WaitTimeSeconds=2)["Messages"]
    assert [m["Body"] for m in received] == ['{"type": "revocation"}']


def test_the_control_plane_environment_resolves_every_global(endpoint, stack_name):
    stack = provision(endpoint, stack_name)
    env = stack.environment
    declared = cfn_yaml.load(DEFAULT_TEMPLATE)["Globals"]["Function"]["Environment"]["Variables"]
    assert set(env) == set(declared)
    assert all(isinstance(value, str) and value for value in env.values())
    assert env["DIT4C_PORTAL_URL"] == "http://localhost:8000"
    assert env["DIT4C_ROUTER_TUNNEL_URLS"] == PARAMETERS["RouterTunnelUrls"]
    assert env["DIT4C_MAX_RUNNING_PER_USER"] == "4"  # the parameter's default
    assert env["DIT4C_USERS_TABLE"] == f"{stack_name}-UsersTable"
    assert env["DIT4C_EVENTS_QUEUE_URL"].endswith(f"/{stack_name}-EventsQueue")
    assert env["DIT4C_EVENTS_QUEUE_ARN"] == (
        f"arn:aws:sqs:us-east-1:123456789012:{stack_name}-EventsQueue"
    )
    assert env["DIT4C_NODE_QUEUE_PREFIX"] == f"{stack_name}-node-"
    assert env["DIT4C_SIGNING_KEY_PARAMETER"] == f"/{stack_name}/signing-keys"
    assert env["DIT4C_NODE_ROLE_ARN"] == f"arn:aws:iam::123456789012:role/{stack_name}-NodeRole"
    assert env["DIT4C_STORAGE_BUCKET"] == f"{stack_name}-storagebucket".lower()


def test_functions_and_their_triggers_come_from_the_template(endpoint, stack_name):
    stack = provision(endpoint, stack_name)
    events = stack.functions["EventsFunction"]
    assert events.handler == "control_plane.app.on_event"
    (trigger,) = events.triggers
    assert isinstance(trigger, SqsTrigger) and trigger.report_item_failures
    assert stack.sqs_sources["EventsFunction"] == stack.environment["DIT4C_EVENTS_QUEUE_URL"]
    reaper = stack.functions["ReaperFunction"]
    assert (reaper.module, reaper.attribute) == ("control_plane.app", "reap")
    (schedule,) = reaper.triggers
    assert isinstance(schedule, ScheduleTrigger)
    assert (schedule.interval_seconds, schedule.resource) == (60, "ReaperFunctionEveryMinute")


def test_what_sam_makes_for_the_events_is_made_under_sams_ids(endpoint, stack_name):
    stack = provision(endpoint, stack_name)
    # The schedule's rule, in EventBridge, named as the control plane knows it.
    rule = stack.resources["ReaperFunctionEveryMinute"]
    assert rule.ref == stack.environment["DIT4C_REAPER_RULE"] == f"{stack_name}-reaper"
    described = endpoint.client("events").describe_rule(Name=rule.ref)
    assert (described["State"], described["ScheduleExpression"]) == ("ENABLED", "rate(1 minute)")
    # No mapping in moto (the local stack's pump reads the queue): a stand-in id, which the
    # reaper's own environment carries as on Lambda.
    mapping = stack.resources["EventsFunctionEvents"]
    assert mapping.type == "AWS::Lambda::EventSourceMapping"
    assert endpoint.client("lambda").list_event_source_mappings()["EventSourceMappings"] == []
    assert stack.function_environments["ReaperFunction"]["DIT4C_EVENTS_MAPPING"] == mapping.ref
    assert "DIT4C_EVENTS_MAPPING" not in stack.function_environments["ApiFunction"]
    # Provisioning again keeps the rule as the control plane left it.
    endpoint.client("events").disable_rule(Name=rule.ref)
    provision(endpoint, stack_name)
    assert endpoint.client("events").describe_rule(Name=rule.ref)["State"] == "DISABLED"


def test_a_table_and_queue_added_to_the_template_appear_without_code_changes(
    endpoint, stack_name, tmp_path: Path
):
    text = DEFAULT_TEMPLATE.read_text()
    text = text.replace("\nResources:\n", "\nResources:\n" + EXTRA_RESOURCES, 1)
    text = text.replace(
        "        DIT4C_STORAGE_BUCKET: !Ref StorageBucket\n",
        "        DIT4C_STORAGE_BUCKET: !Ref StorageBucket\n"
        "        DIT4C_WIDGETS_TABLE: !Ref WidgetsTable\n"
        "        DIT4C_WIDGETS_QUEUE_URL: !Ref WidgetsQueue\n",
    )
    copy = tmp_path / "template.yaml"
    copy.write_text(text)

    stack = provision(endpoint, stack_name, Template.load(copy))

    dynamodb, sqs = endpoint.client("dynamodb"), endpoint.client("sqs")
    table = stack.environment["DIT4C_WIDGETS_TABLE"]
    assert table == f"{stack_name}-WidgetsTable"
    dynamodb.put_item(TableName=table, Item={"widget_id": {"S": "w1"}})
    ttl = dynamodb.describe_time_to_live(TableName=table)["TimeToLiveDescription"]
    assert ttl["AttributeName"] == "gone_at"
    queue = stack.environment["DIT4C_WIDGETS_QUEUE_URL"]
    attributes = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["All"])["Attributes"]
    assert attributes["VisibilityTimeout"] == "42"
    assert json.loads(attributes["RedrivePolicy"])["deadLetterTargetArn"] == (
        stack.resources["EventsDLQ"].attributes["Arn"]
    )


def test_provisioning_again_reuses_everything_and_keeps_data(endpoint, stack_name):
    first = provision(endpoint, stack_name)
    dynamodb = endpoint.client("dynamodb")
    users = first.environment["DIT4C_USERS_TABLE"]
    dynamodb.put_item(TableName=users, Item={"username": {"S": "alice"}})
    sqs = endpoint.client("sqs")
    sqs.send_message(QueueUrl=first.environment["DIT4C_EVENTS_QUEUE_URL"], MessageBody="kept")

    second = provision(endpoint, stack_name)

    assert second.environment == first.environment
    assert second.resources == first.resources
    assert "Item" in dynamodb.get_item(TableName=users, Key={"username": {"S": "alice"}})
    body = sqs.receive_message(QueueUrl=second.environment["DIT4C_EVENTS_QUEUE_URL"])
    assert [m["Body"] for m in body["Messages"]] == ["kept"]
    topic = second.environment["DIT4C_REVOCATIONS_TOPIC_ARN"]
    subscriptions = endpoint.client("sns").list_subscriptions_by_topic(TopicArn=topic)
    assert len(subscriptions["Subscriptions"]) == 1


def test_an_index_added_to_an_existing_table_is_created(endpoint, stack_name):
    provision(endpoint, stack_name)
    text = DEFAULT_TEMPLATE.read_text().replace(
        """      KeySchema:
        - {AttributeName: username, KeyType: HASH}
""",
        """      KeySchema:
        - {AttributeName: username, KeyType: HASH}
      GlobalSecondaryIndexes:
        - IndexName: by-username-again
          KeySchema:
            - {AttributeName: username, KeyType: HASH}
          Projection: {ProjectionType: ALL}
""",
        1,
    )
    stack = provision(endpoint, stack_name, Template.loads(text))
    table = endpoint.client("dynamodb").describe_table(
        TableName=stack.environment["DIT4C_USERS_TABLE"]
    )["Table"]
    assert [i["IndexName"] for i in table["GlobalSecondaryIndexes"]] == ["by-username-again"]


def test_the_module_works_under_mock_aws_for_other_parts_tests(stack_name):
    with mock_aws():
        stack = Provisioner(AwsEndpoint(None), stack_name).provision(Template.load(), PARAMETERS)
        table = stack.environment["DIT4C_NODES_TABLE"]
        boto3.client("dynamodb", region_name="us-east-1").describe_table(TableName=table)


# -- bad input: a clear error naming the problem ---------------------------------------------


def test_a_missing_parameter_is_named(endpoint, stack_name):
    given = {k: v for k, v in PARAMETERS.items() if k != "RouterDomain"}
    with pytest.raises(TemplateError, match="parameter RouterDomain needs a value"):
        Provisioner(endpoint, stack_name).provision(Template.load(), given)


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("RouterScheme", "ftp", "'ftp' is not one of"),
        ("MaxRunningInstancesPerUser", "0", "below 1"),
        ("MaxRunningInstancesPerUser", "many", "not a number"),
        ("Unknown", "x", "unknown parameters Unknown"),
    ],
)
def test_a_bad_parameter_is_refused(endpoint, stack_name, name, value, message):
    with pytest.raises(TemplateError, match=message):
        Provisioner(endpoint, stack_name).provision(Template.load(), {**PARAMETERS, name: value})


def test_a_reference_to_a_resource_the_stack_cannot_create_is_named(endpoint, stack_name):
    text = DEFAULT_TEMPLATE.read_text().replace(
        "\nResources:\n",
        "\nResources:\n  Mystery:\n    Type: AWS::Kinesis::Stream\n",
        1,
    ).replace(
        "        DIT4C_STORAGE_BUCKET: !Ref StorageBucket\n",
        "        DIT4C_STORAGE_BUCKET: !Ref StorageBucket\n        DIT4C_STREAM: !Ref Mystery\n",
    )
    with pytest.raises(TemplateError, match=r"Mystery is a AWS::Kinesis::Stream"):
        provision(endpoint, stack_name, Template.loads(text))


def test_a_cloud_only_resource_nothing_refers_to_is_skipped(endpoint, stack_name):
    text = DEFAULT_TEMPLATE.read_text().replace(
        "\nResources:\n",
        "\nResources:\n  Alarm:\n    Type: AWS::CloudWatch::Alarm\n"
        "    Properties: {Namespace: !Ref EventsQueue}\n",
        1,
    )
    stack = provision(endpoint, stack_name, Template.loads(text))
    assert "Alarm" in stack.skipped
    assert "Alarm" not in stack.resources
    # The HTTP API is cloud-only too; with a PortalUrl given, nothing local refers to it.
    assert "HttpApi" in stack.skipped


def test_the_portal_url_follows_the_conditions(endpoint, stack_name):
    """PortalUrl given: it; else the custom domain: neither needs the cloud-only HTTP API."""
    given = provision(endpoint, stack_name)
    assert given.environment["DIT4C_PORTAL_URL"] == PARAMETERS["PortalUrl"]
    domain = Provisioner(endpoint, stack_name).provision(Template.load(), {
        **PARAMETERS, "PortalUrl": "", "PortalDomain": "dit4c.example.org",
        "PortalCertificateArn": "arn:aws:acm:us-east-1:123456789012:certificate/x"})
    assert domain.environment["DIT4C_PORTAL_URL"] == "https://dit4c.example.org"
    assert "PortalDomainName" in domain.skipped  # its condition holds: cloud-only, skipped
    with pytest.raises(TemplateError, match=r"HttpApi is a AWS::ApiGatewayV2::Api"):
        Provisioner(endpoint, stack_name).provision(Template.load(), {**PARAMETERS,
                                                                      "PortalUrl": ""})


def test_the_api_function_is_found_through_the_http_api_route(endpoint, stack_name):
    (trigger,) = provision(endpoint, stack_name).functions["ApiFunction"].triggers
    assert trigger == ApiTrigger(path="$default", method="ANY")


@pytest.mark.parametrize(
    ("snippet", "message"),
    [
        ("X: !ImportValue other-stack-output", "Fn::ImportValue is not supported"),
        ("X: !Ref Nowhere", "no parameter or resource named Nowhere"),
        ("X: !GetAtt EventsQueue.Colour", "EventsQueue .* has no attribute Colour"),
    ],
)
def test_unsupported_or_dangling_intrinsics_are_named(endpoint, stack_name, snippet, message):
    text = DEFAULT_TEMPLATE.read_text().replace(
        "        DIT4C_STORAGE_BUCKET: !Ref StorageBucket\n",
        f"        DIT4C_STORAGE_BUCKET: !Ref StorageBucket\n        {snippet}\n",
    )
    with pytest.raises(TemplateError, match=message):
        provision(endpoint, stack_name, Template.loads(text))


def test_short_tags_load_as_their_long_form():
    document = cfn_yaml.loads(
        """
Resources:
  A:
    Type: T
    Properties:
      Ref: !Ref B
      Att: !GetAtt B.Arn
      Sub: !Sub "${AWS::StackName}-x"
      SubVars: !Sub ["${a}", {a: !Ref B}]
      Join: !Join [",", [x, !Ref B]]
"""
    )
    properties = document["Resources"]["A"]["Properties"]
    assert properties == {
        "Ref": {"Ref": "B"},
        "Att": {"Fn::GetAtt": ["B", "Arn"]},
        "Sub": {"Fn::Sub": "${AWS::StackName}-x"},
        "SubVars": {"Fn::Sub": ["${a}", {"a": {"Ref": "B"}}]},
        "Join": {"Fn::Join": [",", ["x", {"Ref": "B"}]]},
    }


@pytest.mark.parametrize("text", ["[1, 2", "- just\n- a list\n", "Resources: {}\n"])
def test_a_broken_template_is_a_template_error(text):
    with pytest.raises(TemplateError):
        Template.loads(text)


# -- intrinsic functions on their own ------------------------------------------------------------


def _resolver() -> Resolver:
    def lookup(logical_id: str, attribute: str | None, where: str) -> str:
        if logical_id != "Queue":
            raise TemplateError(f"{where}: no {logical_id}")
        return {None: "https://q/url", "Arn": "arn:q"}[attribute]

    return Resolver(
        {"Urls": ["ws://a", "ws://b"], "Name": "n"}, {"AWS::Region": "us-east-1"}, lookup
    )


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ({"Fn::Sub": "${!Literal}-${Name}"}, "${Literal}-n"),
        ({"Fn::Sub": "${Queue.Arn}/${AWS::Region}"}, "arn:q/us-east-1"),
        ({"Fn::Sub": ["${x}-${Name}", {"x": {"Ref": "Queue"}}]}, "https://q/url-n"),
        ({"Fn::Select": [1, {"Ref": "Urls"}]}, "ws://b"),
        ({"Fn::Split": [",", "a,b"]}, ["a", "b"]),
        ({"Fn::Join": ["", ["x", {"Fn::GetAtt": "Queue.Arn"}]]}, "xarn:q"),
        ({"Keep": 1, "Drop": {"Ref": "AWS::NoValue"}}, {"Keep": 1}),
        ([{"Ref": "AWS::NoValue"}, "kept"], ["kept"]),
    ],
)
def test_intrinsics_evaluate_as_cloudformation_does(value, expected):
    assert _resolver().resolve(value, "here") == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"Fn::Sub": "${Urls}"}, "is a list; join it first"),
        ({"Fn::Select": [5, {"Ref": "Urls"}]}, "index 5 out of range"),
        ({"Fn::If": ["c", 1, 2]}, "no condition named c"),
        ({"Fn::FindInMap": ["m", "k", "v"]}, "Fn::FindInMap is not supported"),
        ({"Ref": 3}, "Ref needs a name"),
    ],
)
def test_bad_intrinsics_are_named(value, message):
    with pytest.raises(TemplateError, match=message):
        _resolver().resolve(value, "here")
