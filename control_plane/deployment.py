"""A deployed control plane's settings, read from where the deployment keeps them.

The API function's environment is the control plane's whole configuration (``template.yaml``'s
``Globals``, or the Terraform module's ``environment``), so operator commands read it from the
function itself rather than from a second list of outputs: ``--stack NAME`` (SAM: the stack's
``ApiFunction`` resource) or ``--function NAME`` (Terraform's ``api_function_name`` output, or
any deployment). AWS credentials and region come from boto3's usual chain. Every failure is a
:class:`DeploymentError` with a one-line message naming what is wrong.
"""

from __future__ import annotations

from typing import Any

import boto3
from botocore.exceptions import ClientError

API_FUNCTION_LOGICAL_ID = "ApiFunction"


class DeploymentError(Exception):
    """The deployment cannot be found or read; the message says which and why."""


def _client(service: str, region: str | None) -> Any:
    return boto3.session.Session(region_name=region).client(service)


def function_of_stack(stack: str, region: str | None = None) -> str:
    """The physical name of the stack's API function."""
    try:
        resource = _client("cloudformation", region).describe_stack_resource(
            StackName=stack, LogicalResourceId=API_FUNCTION_LOGICAL_ID)
    except ClientError as exc:
        message = exc.response.get("Error", {}).get("Message", str(exc))
        if "does not exist" in message:
            raise DeploymentError(f"stack {stack!r} has no {API_FUNCTION_LOGICAL_ID} (is it a "
                                  f"dit4c stack, in this region?): {message}") from None
        raise DeploymentError(
            f"cannot read stack {stack!r}: {describe_client_error(exc)}") from None
    return str(resource["StackResourceDetail"]["PhysicalResourceId"])


def function_environment(function: str, region: str | None = None) -> dict[str, str]:
    """The environment the API function runs with, plus the region it runs in."""
    client = _client("lambda", region)
    try:
        configuration = client.get_function_configuration(FunctionName=function)
    except ClientError as exc:
        raise DeploymentError(
            f"cannot read function {function!r}: {describe_client_error(exc)}") from None
    variables = dict((configuration.get("Environment") or {}).get("Variables") or {})
    if not any(name.startswith("DIT4C_") for name in variables):
        raise DeploymentError(f"function {function!r} has no DIT4C_ settings: it is not the "
                              "dit4c API function")
    variables["AWS_REGION"] = client.meta.region_name
    return variables


def describe_client_error(exc: Any) -> str:
    """One line for a botocore ``ClientError``: the operation, the code, AWS's message."""
    error = exc.response.get("Error", {})
    return f"{exc.operation_name}: {error.get('Code', '?')}: {error.get('Message', '')}"
