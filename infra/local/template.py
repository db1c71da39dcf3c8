"""The parts of ``template.yaml`` the local stack reads: parameters, resources, functions.

The template is the one source of truth for tables, queues and functions; nothing here lists
them again. :class:`Template` is pure (no AWS calls): it validates parameter values and
describes the functions and their triggers; :mod:`infra.local.provision` creates the resources.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from infra.local import cfn_yaml
from infra.local.errors import TemplateError

DEFAULT_TEMPLATE: Final = Path(__file__).resolve().parents[2] / "template.yaml"

_RATE = re.compile(r"^rate\(\s*(\d+)\s+(minute|minutes|hour|hours|day|days)\s*\)$")
_UNIT_SECONDS: Final = {"minute": 60, "hour": 3600, "day": 86400}


@dataclass(frozen=True)
class SqsTrigger:
    """An SQS event source: the function gets batches from this queue (raw ``Queue`` value).
    ``resource``: the logical id of the event source mapping SAM makes for it."""

    queue: Any
    batch_size: int
    report_item_failures: bool
    resource: str = ""


@dataclass(frozen=True)
class ScheduleTrigger:
    """A ``rate(...)`` schedule, as seconds between runs. ``resource``: the logical id of the
    EventBridge rule SAM makes for it; ``rule_name``: its ``Name`` (raw; None: SAM names it)."""

    name: str
    interval_seconds: int
    resource: str = ""
    expression: str = ""
    rule_name: Any = None


@dataclass(frozen=True)
class ApiTrigger:
    """HTTP requests: a SAM ``Api``/``HttpApi`` event, or an HTTP API route whose Lambda proxy
    integration names the function (``path`` is then the route key, e.g. ``$default``)."""

    path: str
    method: str


Trigger = SqsTrigger | ScheduleTrigger | ApiTrigger


@dataclass(frozen=True)
class FunctionSpec:
    """An ``AWS::Serverless::Function``: its handler (``module.attribute``) and triggers."""

    logical_id: str
    handler: str
    timeout_seconds: int
    memory_mb: int
    triggers: tuple[Trigger, ...] = field(default=())
    environment: Mapping[str, Any] = field(default_factory=dict)
    """The function's own ``Environment.Variables`` (unresolved), beside the Globals'."""

    @property
    def module(self) -> str:
        return self.handler.rpartition(".")[0]

    @property
    def attribute(self) -> str:
        return self.handler.rpartition(".")[2]


class Template:
    """A parsed SAM/CloudFormation template (short tags already turned into long form)."""

    def __init__(self, document: Mapping[str, Any], source: str = "template") -> None:
        self.document = document
        self.source = source
        resources = document.get("Resources")
        if not isinstance(resources, dict) or not resources:
            raise TemplateError(f"{source}: no Resources")
        for logical_id, resource in resources.items():
            if not isinstance(resource, dict) or not isinstance(resource.get("Type"), str):
                raise TemplateError(f"{source}: resource {logical_id} has no Type")
        self.resources: dict[str, dict[str, Any]] = resources

    @classmethod
    def load(cls, path: Path = DEFAULT_TEMPLATE) -> Template:
        return cls(cfn_yaml.load(path), str(path))

    @classmethod
    def loads(cls, text: str, source: str = "template") -> Template:
        return cls(cfn_yaml.loads(text), source)

    def resource_type(self, logical_id: str) -> str:
        return str(self.resources[logical_id]["Type"])

    def properties(self, logical_id: str) -> dict[str, Any]:
        properties = self.resources[logical_id].get("Properties") or {}
        if not isinstance(properties, dict):
            raise TemplateError(f"{self.source}: {logical_id}.Properties must be a mapping")
        return properties

    def parameter_values(
        self, given: Mapping[str, str | Sequence[str]]
    ) -> dict[str, str | list[str]]:
        """Given values over defaults, checked against Type/AllowedValues/MinValue.

        A parameter with neither a given value nor a default is an error naming it.
        """
        declared: dict[str, Any] = self.document.get("Parameters") or {}
        unknown = sorted(set(given) - set(declared))
        if unknown:
            raise TemplateError(f"{self.source}: unknown parameters {', '.join(unknown)}")
        values: dict[str, str | list[str]] = {}
        for name, spec in declared.items():
            raw: Any = given.get(name, spec.get("Default"))
            if raw is None:
                raise TemplateError(f"{self.source}: parameter {name} needs a value")
            values[name] = _parameter_value(name, spec, raw)
        return values

    def function_environment(self) -> dict[str, Any]:
        """``Globals.Function.Environment.Variables``, unresolved."""
        variables = (
            self.document.get("Globals", {})
            .get("Function", {})
            .get("Environment", {})
            .get("Variables", {})
        )
        if not isinstance(variables, dict):
            raise TemplateError(f"{self.source}: Globals.Function.Environment.Variables")
        return variables

    def functions(self) -> dict[str, FunctionSpec]:
        """Every ``AWS::Serverless::Function``, with the Globals applied."""
        defaults = self.document.get("Globals", {}).get("Function", {})
        specs = {}
        for logical_id, resource in self.resources.items():
            if resource["Type"] != "AWS::Serverless::Function":
                continue
            properties = {**defaults, **self.properties(logical_id)}
            handler = properties.get("Handler")
            if not isinstance(handler, str) or "." not in handler:
                raise TemplateError(f"{self.source}: {logical_id} needs Handler module.attribute")
            triggers = tuple(
                _trigger(f"{logical_id}.Events.{name}", logical_id, name, event)
                for name, event in (properties.get("Events") or {}).items()
            ) + tuple(self._http_api_routes().get(logical_id, ()))
            own = (self.properties(logical_id).get("Environment") or {}).get("Variables") or {}
            if not isinstance(own, dict):
                raise TemplateError(f"{self.source}: {logical_id}.Environment.Variables")
            specs[logical_id] = FunctionSpec(
                logical_id=logical_id,
                handler=handler,
                timeout_seconds=int(properties.get("Timeout", 3)),
                memory_mb=int(properties.get("MemorySize", 128)),
                triggers=triggers,
                environment=own,
            )
        return specs


    def _http_api_routes(self) -> dict[str, list[ApiTrigger]]:
        """Function logical id -> the HTTP API routes whose integration invokes it."""
        targets = {}
        for logical_id, resource in self.resources.items():
            if resource["Type"] == "AWS::ApiGatewayV2::Integration":
                function = _function_of(self.properties(logical_id).get("IntegrationUri"))
                if function is not None:
                    targets[logical_id] = function
        routes: dict[str, list[ApiTrigger]] = {}
        for logical_id, resource in self.resources.items():
            if resource["Type"] != "AWS::ApiGatewayV2::Route":
                continue
            properties = self.properties(logical_id)
            target = properties.get("Target")
            target_text = target.get("Fn::Sub") if isinstance(target, dict) else target
            for integration, function in targets.items():
                if isinstance(target_text, str) and "${" + integration + "}" in target_text:
                    key = str(properties.get("RouteKey", "$default"))
                    method, _, path = key.partition(" ") if " " in key else ("ANY", "", key)
                    routes.setdefault(function, []).append(ApiTrigger(path=path, method=method))
        return routes


def _function_of(uri: Any) -> str | None:
    """The function a Lambda proxy integration's ``IntegrationUri`` names (``!GetAtt F.Arn``)."""
    if isinstance(uri, dict) and "Fn::GetAtt" in uri:
        target = uri["Fn::GetAtt"]
        parts = target.split(".", 1) if isinstance(target, str) else list(target)
        if len(parts) == 2 and parts[1] == "Arn":
            return str(parts[0])
    return None


def _parameter_value(name: str, spec: Mapping[str, Any], raw: Any) -> str | list[str]:
    kind = spec.get("Type", "String")
    if kind == "CommaDelimitedList":
        items = raw.split(",") if isinstance(raw, str) else [str(item) for item in raw]
        return [item.strip() for item in items]
    if not isinstance(raw, str | int | float) or isinstance(raw, bool):
        raise TemplateError(f"parameter {name}: expected a single value, got {raw!r}")
    value = str(raw)
    if kind == "Number":
        try:
            number = float(value)
        except ValueError:
            raise TemplateError(f"parameter {name}: {value!r} is not a number") from None
        if "MinValue" in spec and number < float(spec["MinValue"]):
            raise TemplateError(f"parameter {name}: {value} is below {spec['MinValue']}")
        if "MaxValue" in spec and number > float(spec["MaxValue"]):
            raise TemplateError(f"parameter {name}: {value} is above {spec['MaxValue']}")
    allowed = spec.get("AllowedValues")
    if allowed is not None and value not in [str(a) for a in allowed]:
        raise TemplateError(f"parameter {name}: {value!r} is not one of {allowed}")
    return value


def _trigger(where: str, function: str, name: str, event: Any) -> Trigger:
    """One SAM event; ``function + name`` is the logical id SAM gives what it makes for it."""
    if not isinstance(event, dict):
        raise TemplateError(f"{where}: expected a mapping")
    kind = event.get("Type")
    properties = event.get("Properties") or {}
    if kind == "SQS":
        return SqsTrigger(
            queue=properties.get("Queue"),
            batch_size=int(properties.get("BatchSize", 10)),
            report_item_failures="ReportBatchItemFailures"
            in (properties.get("FunctionResponseTypes") or []),
            resource=function + name,
        )
    if kind == "Schedule":
        expression = str(properties.get("Schedule", ""))
        match = _RATE.match(expression)
        if match is None:
            raise TemplateError(
                f"{where}: schedule {expression!r} is not supported locally (use rate(N unit))"
            )
        unit = match.group(2).rstrip("s")
        return ScheduleTrigger(
            name=name, interval_seconds=int(match.group(1)) * _UNIT_SECONDS[unit],
            resource=function + name, expression=expression, rule_name=properties.get("Name"),
        )
    if kind == "Api":
        return ApiTrigger(
            path=str(properties.get("Path", "/")), method=str(properties.get("Method", "ANY"))
        )
    raise TemplateError(f"{where}: event type {kind!r} is not supported locally")
