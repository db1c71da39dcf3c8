"""Reading CloudFormation/SAM YAML: the short intrinsic tags (``!Ref``, ``!GetAtt``, ``!Sub`` ...).

PyYAML's safe loader refuses unknown tags; here every ``!Name`` becomes the long form
``{"Fn::Name": value}`` (``!Ref`` becomes ``{"Ref": value}``, ``!GetAtt A.B`` becomes
``{"Fn::GetAtt": ["A", "B"]}``), which is what CloudFormation itself does before evaluating.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from infra.local.errors import TemplateError


class _CfnLoader(yaml.SafeLoader):
    """A safe loader that also knows the intrinsic function tags."""


def _construct_intrinsic(loader: _CfnLoader, tag_suffix: str, node: yaml.Node) -> dict[str, Any]:
    value: Any
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    elif isinstance(node, yaml.MappingNode):
        value = loader.construct_mapping(node, deep=True)
    else:  # pragma: no cover - yaml has no other node kinds
        raise TemplateError(f"unsupported node for !{tag_suffix}")
    if tag_suffix == "Ref":
        return {"Ref": value}
    if tag_suffix == "Condition":
        return {"Condition": value}
    if tag_suffix == "GetAtt" and isinstance(value, str):
        logical_id, _, attribute = value.partition(".")
        value = [logical_id, attribute]
    return {f"Fn::{tag_suffix}": value}


_CfnLoader.add_multi_constructor("!", _construct_intrinsic)


def loads(text: str) -> dict[str, Any]:
    """Parse a template's text; a top level that is not a mapping is a ``TemplateError``."""
    try:
        document = yaml.load(text, Loader=_CfnLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise TemplateError(f"template is not valid YAML: {exc}") from exc
    if not isinstance(document, dict):
        raise TemplateError("template must be a YAML mapping at the top level")
    return document


def load(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise TemplateError(f"cannot read template {path}: {exc}") from exc
    try:
        return loads(text)
    except TemplateError as exc:
        raise TemplateError(f"{path}: {exc}") from exc
