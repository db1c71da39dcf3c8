"""Creating a template's resources in moto (or any AWS endpoint), idempotently.

:class:`Provisioner` walks ``template.yaml``'s resources and creates each kind it knows
(DynamoDB tables with their indexes and TTL, SQS queues with redrive to the created dead-letter
queue, SNS topics and SQS subscriptions, queue policies, S3 buckets, IAM roles). A resource that
already exists is reused, so a restart of the local stack and a second call are harmless.
Dependencies are created on demand when a ``Ref``/``GetAtt`` reaches them, so template order
does not matter. A resource of a kind it does not create (an alarm, a Lambda permission) is
skipped, and only an error when something the stack needs refers to it. Physical names are
deterministic: ``<stack name>-<LogicalId>`` (buckets in lower case), like CloudFormation's
without the random suffix.

What SAM makes for the functions' events is made too, under SAM's logical ids (function +
event name): a schedule's EventBridge rule, in moto, where the control plane switches it and
the local stack's timer follows it; an SQS event's mapping is not made (the local stack's pump
reads the queue itself: a mapping in moto would have moto invoke a function of its own for
each message), so its ``Ref`` is a stand-in, or the mapping of that queue that exists already.

The result, :class:`Stack`, maps each logical id to what ``Ref`` and ``GetAtt`` give, and holds
the resolved ``Globals.Function.Environment.Variables``: the environment of the control plane.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import ClientError

from infra.local.aws import ACCOUNT_ID, AwsEndpoint
from infra.local.errors import TemplateError
from infra.local.intrinsics import Resolver
from infra.local.template import FunctionSpec, ScheduleTrigger, SqsTrigger, Template

log = logging.getLogger("dit4c.local.provision")

# CloudFormation's AWS::SQS::Queue properties that are queue attributes of the same name.
_QUEUE_ATTRIBUTES = (
    "ContentBasedDeduplication",
    "DeduplicationScope",
    "DelaySeconds",
    "FifoQueue",
    "FifoThroughputLimit",
    "KmsDataKeyReusePeriodSeconds",
    "KmsMasterKeyId",
    "MaximumMessageSize",
    "MessageRetentionPeriod",
    "ReceiveMessageWaitTimeSeconds",
    "SqsManagedSseEnabled",
    "VisibilityTimeout",
)
_JSON_QUEUE_ATTRIBUTES = ("RedrivePolicy", "RedriveAllowPolicy")

# Types that need nothing locally: functions are run by the stack itself.
_NOT_PROVISIONED = frozenset({"AWS::Serverless::Function"})


@dataclass(frozen=True)
class Physical:
    """A created resource: what ``Ref`` returns and its ``GetAtt`` attributes."""

    logical_id: str
    type: str
    ref: str
    attributes: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Stack:
    """What :meth:`Provisioner.provision` made."""

    name: str
    region: str
    resources: Mapping[str, Physical]
    environment: Mapping[str, str]
    functions: Mapping[str, FunctionSpec]
    sqs_sources: Mapping[str, str] = field(default_factory=dict)
    """Function logical id -> URL of the queue its SQS trigger reads."""
    function_environments: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    """Function logical id -> its environment on Lambda: ``environment`` and its own."""
    skipped: tuple[str, ...] = ()
    """Resources of kinds the local stack does not create, that nothing it needs refers to."""
    resolver: Resolver | None = None
    """Evaluates more of the template's values against what was made (the IAM tests resolve
    the functions' policies with it)."""

    def of_type(self, resource_type: str) -> list[Physical]:
        return [r for r in self.resources.values() if r.type == resource_type]


class Provisioner:
    """Creates every resource of a template in one AWS endpoint; see the module docstring."""

    def __init__(self, endpoint: AwsEndpoint, stack_name: str) -> None:
        self._endpoint = endpoint
        self._stack_name = stack_name
        self._clients: dict[str, Any] = {}

    def provision(self, template: Template, parameters: Mapping[str, str | Sequence[str]]) -> Stack:
        run = _Run(self, template, template.parameter_values(parameters))
        skipped = []
        for logical_id in template.resources:
            resource_type = template.resource_type(logical_id)
            if resource_type in _NOT_PROVISIONED or not run.wanted(logical_id):
                continue
            if not run.can_create(resource_type):
                # Cloud-only (an alarm, a permission ...): fine unless something refers to it.
                log.info("not created locally: %s (%s)", logical_id, resource_type)
                skipped.append(logical_id)
                continue
            run.physical(logical_id, where=logical_id)
        functions = template.functions()
        sqs_sources = {}
        for spec in functions.values():
            for trigger in spec.triggers:
                if isinstance(trigger, SqsTrigger):
                    arn = run.resolver.resolve_string(trigger.queue, f"{spec.logical_id}.Queue")
                    sqs_sources[spec.logical_id] = run.queue_url_for_arn(arn)
                    run.created[trigger.resource] = run.mapping(trigger.resource, arn)
                elif isinstance(trigger, ScheduleTrigger):
                    run.created[trigger.resource] = run.rule(trigger)
        environment = {
            name: run.resolver.resolve_string(value, f"Globals.Function.Environment.{name}")
            for name, value in template.function_environment().items()
        }
        function_environments = {
            spec.logical_id: {**environment, **{
                name: run.resolver.resolve_string(value, f"{spec.logical_id}.Environment.{name}")
                for name, value in spec.environment.items()}}
            for spec in functions.values()
        }
        return Stack(
            name=self._stack_name,
            region=self._endpoint.region,
            resources=dict(run.created),
            environment=environment,
            functions=functions,
            sqs_sources=sqs_sources,
            function_environments=function_environments,
            skipped=tuple(skipped),
            resolver=run.resolver,
        )

    def client(self, service: str) -> Any:
        if service not in self._clients:
            self._clients[service] = self._endpoint.client(service)
        return self._clients[service]

    @property
    def stack_name(self) -> str:
        return self._stack_name

    @property
    def region(self) -> str:
        return self._endpoint.region


class _Run:
    """One provisioning pass: created resources so far and the resolver over them."""

    def __init__(
        self, owner: Provisioner, template: Template, parameters: dict[str, str | list[str]]
    ) -> None:
        self.owner = owner
        self.template = template
        self.created: dict[str, Physical] = {}
        self._in_progress: set[str] = set()
        pseudo = {
            "AWS::StackName": owner.stack_name,
            "AWS::StackId": f"arn:aws:cloudformation:{owner.region}:{ACCOUNT_ID}:stack/"
            f"{owner.stack_name}/local",
            "AWS::Region": owner.region,
            "AWS::AccountId": ACCOUNT_ID,
            "AWS::Partition": "aws",
            "AWS::URLSuffix": "amazonaws.com",
        }
        self.resolver = Resolver(parameters, pseudo, self._lookup,
                                 template.document.get("Conditions"))
        self._creators: dict[str, Callable[[str, dict[str, Any]], Physical]] = {
            "AWS::DynamoDB::Table": self._table,
            "AWS::SQS::Queue": self._queue,
            "AWS::SQS::QueuePolicy": self._queue_policy,
            "AWS::SNS::Topic": self._topic,
            "AWS::SNS::Subscription": self._subscription,
            "AWS::S3::Bucket": self._bucket,
            "AWS::IAM::Role": self._role,
        }

    def can_create(self, resource_type: str) -> bool:
        return resource_type in self._creators

    def wanted(self, logical_id: str) -> bool:
        """False for a resource whose ``Condition`` is false (CloudFormation skips it too)."""
        condition = self.template.resources[logical_id].get("Condition")
        return condition is None or self.resolver.condition(str(condition), logical_id)

    # -- lookups -------------------------------------------------------------------------------

    def _lookup(self, logical_id: str, attribute: str | None, where: str) -> str:
        physical = self.physical(logical_id, where)
        if attribute is None:
            return physical.ref
        if attribute not in physical.attributes:
            raise TemplateError(
                f"{where}: {logical_id} ({physical.type}) has no attribute {attribute} locally"
            )
        return physical.attributes[attribute]

    def physical(self, logical_id: str, where: str) -> Physical:
        if logical_id in self.created:
            return self.created[logical_id]
        if logical_id not in self.template.resources:
            raise TemplateError(f"{where}: no parameter or resource named {logical_id}")
        resource_type = self.template.resource_type(logical_id)
        creator = self._creators.get(resource_type)
        if creator is None:
            raise TemplateError(
                f"{where}: {logical_id} is a {resource_type}, which the local stack does not "
                "create (infra/local/provision.py)"
            )
        if logical_id in self._in_progress:
            raise TemplateError(f"{where}: circular reference through {logical_id}")
        self._in_progress.add(logical_id)
        try:
            properties = self.resolver.resolve(
                self.template.properties(logical_id), f"{logical_id}.Properties"
            )
            physical = creator(logical_id, properties)
        finally:
            self._in_progress.discard(logical_id)
        self.created[logical_id] = physical
        log.debug("%s %s -> %s", resource_type, logical_id, physical.ref)
        return physical

    def queue_url_for_arn(self, arn: str) -> str:
        for physical in self.created.values():
            if physical.type == "AWS::SQS::Queue" and physical.attributes["Arn"] == arn:
                return physical.ref
        raise TemplateError(f"no queue of this template has the ARN {arn}")

    # -- what SAM makes for the functions' events -----------------------------------------------

    def rule(self, trigger: ScheduleTrigger) -> Physical:
        """The schedule's rule, made on in moto's EventBridge; one there already keeps its
        state (the control plane switches it)."""
        events = self.owner.client("events")
        name = (self.resolver.resolve_string(trigger.rule_name, f"{trigger.resource}.Name")
                if trigger.rule_name else f"{self.owner.stack_name}-{trigger.resource}")
        try:
            state = events.describe_rule(Name=name)["State"]
        except events.exceptions.ResourceNotFoundException:
            state = "ENABLED"
        arn = events.put_rule(Name=name, ScheduleExpression=trigger.expression,
                              State=state)["RuleArn"]
        return Physical(trigger.resource, "AWS::Events::Rule", name, {"Arn": arn})

    def mapping(self, logical_id: str, queue_arn: str) -> Physical:
        """An SQS event's mapping: the one of that queue made beforehand, else a stand-in id
        (see the module docstring)."""
        made = self.owner.client("lambda").list_event_source_mappings(
            EventSourceArn=queue_arn)["EventSourceMappings"]
        ref = made[0]["UUID"] if made else str(
            uuid.uuid5(uuid.NAMESPACE_URL, f"{queue_arn}#{logical_id}"))
        return Physical(logical_id, "AWS::Lambda::EventSourceMapping", ref)

    def _name(self, logical_id: str, properties: Mapping[str, Any], key: str) -> str:
        given = properties.get(key)
        return str(given) if given else f"{self.owner.stack_name}-{logical_id}"

    def _arn(self, service: str, resource: str, region: bool = True) -> str:
        where = self.owner.region if region else ""
        return f"arn:aws:{service}:{where}:{ACCOUNT_ID}:{resource}"

    # -- creators ------------------------------------------------------------------------------

    def _table(self, logical_id: str, properties: dict[str, Any]) -> Physical:
        dynamodb = self.owner.client("dynamodb")
        name = self._name(logical_id, properties, "TableName")
        try:
            description = dynamodb.describe_table(TableName=name)["Table"]
        except dynamodb.exceptions.ResourceNotFoundException:
            request: dict[str, Any] = {
                "TableName": name,
                "AttributeDefinitions": properties["AttributeDefinitions"],
                "KeySchema": properties["KeySchema"],
                "BillingMode": properties.get("BillingMode", "PROVISIONED"),
            }
            for key in ("GlobalSecondaryIndexes", "LocalSecondaryIndexes"):
                if properties.get(key):
                    request[key] = properties[key]
            if "ProvisionedThroughput" in properties:
                request["ProvisionedThroughput"] = properties["ProvisionedThroughput"]
            if "StreamSpecification" in properties:
                request["StreamSpecification"] = {
                    "StreamEnabled": True,
                    **properties["StreamSpecification"],
                }
            description = dynamodb.create_table(**request)["TableDescription"]
        self._ensure_indexes(dynamodb, name, properties, description)
        ttl = properties.get("TimeToLiveSpecification")
        if ttl and ttl.get("Enabled"):
            status = dynamodb.describe_time_to_live(TableName=name)["TimeToLiveDescription"]
            if status.get("TimeToLiveStatus") not in ("ENABLED", "ENABLING"):
                dynamodb.update_time_to_live(
                    TableName=name,
                    TimeToLiveSpecification={
                        "AttributeName": ttl["AttributeName"],
                        "Enabled": True,
                    },
                )
        attributes = {"Arn": description["TableArn"]}
        if description.get("LatestStreamArn"):
            attributes["StreamArn"] = description["LatestStreamArn"]
        return Physical(logical_id, "AWS::DynamoDB::Table", name, attributes)

    def _ensure_indexes(
        self, dynamodb: Any, name: str, properties: dict[str, Any], description: dict[str, Any]
    ) -> None:
        """Add a global secondary index the template gained since the table was made."""
        existing = {index["IndexName"] for index in description.get("GlobalSecondaryIndexes", [])}
        for index in properties.get("GlobalSecondaryIndexes") or []:
            if index["IndexName"] in existing:
                continue
            log.info("table %s: adding index %s from the template", name, index["IndexName"])
            create = {k: v for k, v in index.items() if k != "ContributorInsightsSpecification"}
            dynamodb.update_table(
                TableName=name,
                AttributeDefinitions=properties["AttributeDefinitions"],
                GlobalSecondaryIndexUpdates=[{"Create": create}],
            )

    def _queue(self, logical_id: str, properties: dict[str, Any]) -> Physical:
        sqs = self.owner.client("sqs")
        name = self._name(logical_id, properties, "QueueName")
        if properties.get("FifoQueue") and not name.endswith(".fifo"):
            name += ".fifo"
        attributes = {
            key: _attribute_string(properties[key])
            for key in _QUEUE_ATTRIBUTES
            if key in properties
        }
        for key in _JSON_QUEUE_ATTRIBUTES:
            if key in properties:
                attributes[key] = json.dumps(properties[key], separators=(",", ":"))
        try:
            url = sqs.get_queue_url(QueueName=name)["QueueUrl"]
            # Reused: bring its attributes in line with the template (FifoQueue is fixed).
            changeable = {k: v for k, v in attributes.items() if k != "FifoQueue"}
            if changeable:
                sqs.set_queue_attributes(QueueUrl=url, Attributes=changeable)
        except sqs.exceptions.QueueDoesNotExist:
            url = sqs.create_queue(QueueName=name, Attributes=attributes)["QueueUrl"]
        if properties.get("Tags"):
            sqs.tag_queue(
                QueueUrl=url, Tags={t["Key"]: str(t["Value"]) for t in properties["Tags"]}
            )
        arn = self._arn("sqs", name)
        return Physical(
            logical_id, "AWS::SQS::Queue", url, {"Arn": arn, "QueueName": name, "QueueUrl": url}
        )

    def _queue_policy(self, logical_id: str, properties: dict[str, Any]) -> Physical:
        sqs = self.owner.client("sqs")
        policy = json.dumps(properties["PolicyDocument"], separators=(",", ":"))
        for url in properties.get("Queues") or []:
            sqs.set_queue_attributes(QueueUrl=url, Attributes={"Policy": policy})
        return Physical(
            logical_id, "AWS::SQS::QueuePolicy", f"{self.owner.stack_name}-{logical_id}"
        )

    def _topic(self, logical_id: str, properties: dict[str, Any]) -> Physical:
        sns = self.owner.client("sns")
        name = self._name(logical_id, properties, "TopicName")
        request: dict[str, Any] = {"Name": name}
        if properties.get("FifoTopic"):
            request["Attributes"] = {"FifoTopic": "true"}
        arn = sns.create_topic(**request)["TopicArn"]  # idempotent by name
        return Physical(logical_id, "AWS::SNS::Topic", arn, {"TopicArn": arn, "TopicName": name})

    def _subscription(self, logical_id: str, properties: dict[str, Any]) -> Physical:
        sns = self.owner.client("sns")
        topic, protocol, endpoint = (
            properties["TopicArn"],
            properties["Protocol"],
            properties["Endpoint"],
        )
        paginator = sns.get_paginator("list_subscriptions_by_topic")
        for page in paginator.paginate(TopicArn=topic):
            for subscription in page["Subscriptions"]:
                if subscription["Protocol"] == protocol and subscription["Endpoint"] == endpoint:
                    arn = subscription["SubscriptionArn"]
                    return Physical(logical_id, "AWS::SNS::Subscription", arn)
        attributes = {}
        if "RawMessageDelivery" in properties:
            attributes["RawMessageDelivery"] = _attribute_string(properties["RawMessageDelivery"])
        for key in ("FilterPolicy", "RedrivePolicy", "DeliveryPolicy"):
            if key in properties:
                attributes[key] = json.dumps(properties[key], separators=(",", ":"))
        if "FilterPolicyScope" in properties:
            attributes["FilterPolicyScope"] = str(properties["FilterPolicyScope"])
        arn = sns.subscribe(
            TopicArn=topic,
            Protocol=protocol,
            Endpoint=endpoint,
            Attributes=attributes,
            ReturnSubscriptionArn=True,
        )["SubscriptionArn"]
        return Physical(logical_id, "AWS::SNS::Subscription", arn)

    def _bucket(self, logical_id: str, properties: dict[str, Any]) -> Physical:
        s3 = self.owner.client("s3")
        name = self._name(logical_id, properties, "BucketName").lower()
        try:
            s3.head_bucket(Bucket=name)
        except ClientError as exc:
            if exc.response["Error"]["Code"] not in ("404", "NoSuchBucket", "NotFound"):
                raise
            request: dict[str, Any] = {"Bucket": name}
            if self.owner.region != "us-east-1":
                request["CreateBucketConfiguration"] = {"LocationConstraint": self.owner.region}
            s3.create_bucket(**request)
        if "PublicAccessBlockConfiguration" in properties:
            s3.put_public_access_block(
                Bucket=name,
                PublicAccessBlockConfiguration=properties["PublicAccessBlockConfiguration"],
            )
        if "BucketEncryption" in properties:
            # CloudFormation's rule key differs from the API's.
            rules = [
                {"ApplyServerSideEncryptionByDefault": rule["ServerSideEncryptionByDefault"]}
                for rule in properties["BucketEncryption"]["ServerSideEncryptionConfiguration"]
            ]
            s3.put_bucket_encryption(
                Bucket=name, ServerSideEncryptionConfiguration={"Rules": rules}
            )
        region = self.owner.region
        return Physical(
            logical_id,
            "AWS::S3::Bucket",
            name,
            {
                "Arn": f"arn:aws:s3:::{name}",
                "DomainName": f"{name}.s3.amazonaws.com",
                "RegionalDomainName": f"{name}.s3.{region}.amazonaws.com",
            },
        )

    def _role(self, logical_id: str, properties: dict[str, Any]) -> Physical:
        iam = self.owner.client("iam")
        name = self._name(logical_id, properties, "RoleName")
        try:
            role = iam.get_role(RoleName=name)["Role"]
        except iam.exceptions.NoSuchEntityException:
            request: dict[str, Any] = {
                "RoleName": name,
                "AssumeRolePolicyDocument": json.dumps(properties["AssumeRolePolicyDocument"]),
                "Path": properties.get("Path", "/"),
            }
            if "MaxSessionDuration" in properties:
                request["MaxSessionDuration"] = int(properties["MaxSessionDuration"])
            role = iam.create_role(**request)["Role"]
        for policy in properties.get("Policies") or []:
            iam.put_role_policy(
                RoleName=name,
                PolicyName=policy["PolicyName"],
                PolicyDocument=json.dumps(policy["PolicyDocument"]),
            )
        return Physical(
            logical_id, "AWS::IAM::Role", name, {"Arn": role["Arn"], "RoleId": role["RoleId"]}
        )


def _attribute_string(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
