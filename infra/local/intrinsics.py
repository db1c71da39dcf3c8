"""Evaluating CloudFormation intrinsic functions against what the local stack created.

Supported: ``Ref`` (parameters, pseudo parameters, resources), ``Fn::GetAtt``, ``Fn::Sub`` (both
forms), ``Fn::Join``, ``Fn::Select``, ``Fn::Split``, and ``Fn::If`` over the template's
``Conditions`` (``Fn::Equals``, ``Fn::Not``, ``Fn::And``, ``Fn::Or``, ``Condition``). Only the
branch ``Fn::If`` takes is evaluated, so a branch that names a cloud-only resource (the API's own
URL) costs nothing locally. Anything else is a ``TemplateError`` naming the function and where it
was used, so a template change the local stack cannot follow fails at start-up instead of
producing a half-configured stack.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any, Final

from infra.local.errors import TemplateError

NO_VALUE: Final = object()
"""What ``Ref: AWS::NoValue`` evaluates to: the key holding it is dropped."""

_SUB_VARIABLE = re.compile(r"\$\{([^}]*)\}")

ResourceLookup = Callable[[str, str | None, str], str]
"""``lookup(logical_id, attribute or None for Ref, where) -> value``; creates on demand."""


class Resolver:
    """Evaluates intrinsic functions in a (parsed) template value."""

    def __init__(
        self,
        parameters: Mapping[str, str | list[str]],
        pseudo: Mapping[str, str],
        resources: ResourceLookup,
        conditions: Mapping[str, Any] | None = None,
    ) -> None:
        self._parameters = parameters
        self._pseudo = pseudo
        self._resources = resources
        self._conditions = dict(conditions or {})
        self._decided: dict[str, bool] = {}

    def condition(self, name: str, where: str) -> bool:
        """The value of the template's condition ``name`` (evaluated once)."""
        if name not in self._decided:
            if name not in self._conditions:
                raise TemplateError(f"{where}: no condition named {name}")
            self._decided[name] = self._truth(self._conditions[name], f"Conditions.{name}")
        return self._decided[name]

    def _truth(self, value: Any, where: str) -> bool:
        if isinstance(value, dict) and len(value) == 1:
            (key, argument), = value.items()
            if key == "Condition":
                return self.condition(str(argument), where)
            if key == "Fn::Equals" and isinstance(argument, list) and len(argument) == 2:
                left, right = (self.resolve(a, where) for a in argument)
                return bool(left == right)
            if key == "Fn::Not" and isinstance(argument, list) and len(argument) == 1:
                return not self._truth(argument[0], where)
            if key == "Fn::And" and isinstance(argument, list):
                return all(self._truth(a, where) for a in argument)
            if key == "Fn::Or" and isinstance(argument, list):
                return any(self._truth(a, where) for a in argument)
        raise TemplateError(f"{where}: not a condition the local stack can evaluate: {value!r}")

    def resolve(self, value: Any, where: str) -> Any:
        if isinstance(value, list):
            items = [self.resolve(item, f"{where}[{i}]") for i, item in enumerate(value)]
            return [item for item in items if item is not NO_VALUE]
        if not isinstance(value, dict):
            return value
        if len(value) == 1:
            (key, argument), = value.items()
            if key == "Ref":
                return self._ref(argument, where)
            if key == "Fn::If":
                return self._if(argument, f"{where} (Fn::If)")
            if key.startswith("Fn::"):
                return self._function(key, argument, where)
        resolved = {k: self.resolve(v, f"{where}.{k}") for k, v in value.items()}
        return {k: v for k, v in resolved.items() if v is not NO_VALUE}

    def resolve_string(self, value: Any, where: str) -> str:
        """Resolve to a string (numbers and booleans as CloudFormation prints them)."""
        resolved = self.resolve(value, where)
        if isinstance(resolved, bool):
            return "true" if resolved else "false"
        if isinstance(resolved, int | float | str):
            return str(resolved)
        raise TemplateError(f"{where}: expected a string, got {type(resolved).__name__}")

    def _ref(self, name: Any, where: str) -> Any:
        if not isinstance(name, str):
            raise TemplateError(f"{where}: Ref needs a name, got {name!r}")
        if name == "AWS::NoValue":
            return NO_VALUE
        if name in self._pseudo:
            return self._pseudo[name]
        if name in self._parameters:
            return self._parameters[name]
        return self._resources(name, None, where)

    def _if(self, argument: Any, where: str) -> Any:
        if not (isinstance(argument, list) and len(argument) == 3):
            raise TemplateError(f"{where}: expected [condition, then, else]")
        taken = argument[1] if self.condition(str(argument[0]), where) else argument[2]
        return self.resolve(taken, where)

    def _function(self, key: str, argument: Any, where: str) -> Any:
        here = f"{where} ({key})"
        if key == "Fn::GetAtt":
            if isinstance(argument, str):
                argument = argument.split(".", 1)
            if not (isinstance(argument, list) and len(argument) == 2):
                raise TemplateError(f"{here}: expected [LogicalId, Attribute]")
            return self._resources(str(argument[0]), str(argument[1]), where)
        if key == "Fn::Sub":
            return self._sub(argument, here)
        if key == "Fn::Join":
            if not (isinstance(argument, list) and len(argument) == 2):
                raise TemplateError(f"{here}: expected [delimiter, [values]]")
            delimiter = self.resolve_string(argument[0], here)
            values = self.resolve(argument[1], here)
            if not isinstance(values, list):
                raise TemplateError(f"{here}: the values must be a list")
            return delimiter.join(str(v) for v in values)
        if key == "Fn::Select":
            if not (isinstance(argument, list) and len(argument) == 2):
                raise TemplateError(f"{here}: expected [index, [values]]")
            index = int(self.resolve_string(argument[0], here))
            values = self.resolve(argument[1], here)
            if not isinstance(values, list) or not 0 <= index < len(values):
                raise TemplateError(f"{here}: index {index} out of range")
            return values[index]
        if key == "Fn::Split":
            if not (isinstance(argument, list) and len(argument) == 2):
                raise TemplateError(f"{here}: expected [delimiter, string]")
            delimiter = self.resolve_string(argument[0], here)
            return self.resolve_string(argument[1], here).split(delimiter)
        raise TemplateError(f"{where}: {key} is not supported by the local stack")

    def _sub(self, argument: Any, where: str) -> str:
        variables: dict[str, Any] = {}
        if isinstance(argument, list):
            if len(argument) != 2 or not isinstance(argument[1], dict):
                raise TemplateError(f"{where}: expected a string or [string, {{variables}}]")
            argument, raw_variables = argument
            variables = {k: self.resolve_string(v, where) for k, v in raw_variables.items()}
        if not isinstance(argument, str):
            raise TemplateError(f"{where}: expected a string")

        def replace(match: re.Match[str]) -> str:
            name = match.group(1).strip()
            if name.startswith("!"):
                return "${" + name[1:] + "}"
            if name in variables:
                return str(variables[name])
            if "." in name and name not in self._pseudo:
                logical_id, attribute = name.split(".", 1)
                return self._resources(logical_id, attribute, where)
            value = self._ref(name, where)
            if isinstance(value, list):
                raise TemplateError(f"{where}: ${{{name}}} is a list; join it first")
            return str(value)

        return _SUB_VARIABLE.sub(replace, argument)
