"""Least privilege in the in-process tests: every AWS call the control plane makes while one of
its functions runs is held to that function's own policies, before moto answers.

The functional tests run the control plane in this process over moto (``mock_aws``), where all
three functions share one :class:`~control_plane.services.Services`. Two pieces tell which
function a call belongs to and whether its role may make it:

- :func:`attribute_calls` registers Chalice middleware on an app, so each handler runs as the
  function of ``template.yaml`` whose trigger invokes it: HTTP routes as the API function, SQS
  batches as the events function, schedules as the reaper (:data:`ACTING`).
- :class:`ClientGate` is a :data:`control_plane.aws.BeforeCall`: given to the control plane's
  :class:`~control_plane.aws.Clients`, it works out what IAM would authorise for each call
  (:func:`tests.support.iam_gate.required`) and decides it under the acting function's policies
  (SAM's translation, resolved against the test's stack) with the evaluation of
  :class:`~tests.support.iam_gate.IamGate` (:func:`~tests.support.iam_gate.allows`). A call the
  policies do not allow gets ``AccessDeniedException``, as on AWS, and is recorded in
  :data:`DENIALS`; the functional tests' conftest fails the test that made it, naming the
  function, the action and the resource, whatever the code under test did with the error.

Calls made outside any handler (a test setting up accounts or reading a record through the
services) are the test's own, as an operator's would be, and pass unchecked.
"""

from __future__ import annotations

import copy
import functools
import json
import threading
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import ClientError
from chalice.app import Chalice
from moto.iam.access_control import IAMPolicy

from infra.local.aws import ACCOUNT_ID
from infra.local.provision import Stack
from infra.local.template import ApiTrigger, ScheduleTrigger, SqsTrigger, Template
from tests.support.iam_gate import (
    Decision,
    FunctionPolicies,
    UnknownRequest,
    allows,
    function_policies,
    required,
    resolved_documents,
    role_name,
)

ACTING: ContextVar[str | None] = ContextVar("dit4c_acting_function", default=None)
"""The logical id of the function whose handler is running (None: the test itself)."""

_EVENT_TYPES: Mapping[type, str] = {ApiTrigger: "http", SqsTrigger: "sqs",
                                    ScheduleTrigger: "scheduled"}
"""Which of Chalice's middleware event types each kind of template trigger invokes."""


def attribute_calls(app: Chalice, template: Template) -> None:
    """Make each handler of ``app`` run as the function whose trigger invokes it (see the
    module docstring). Register before the app's first SQS or scheduled event: Chalice fixes
    an event handler's middleware when it first runs."""
    for spec in template.functions().values():
        for kind in {_EVENT_TYPES[type(trigger)] for trigger in spec.triggers}:
            app.register_middleware(_acting_as(spec.logical_id), kind)


def _acting_as(function: str) -> Callable[[Any, Callable[[Any], Any]], Any]:
    def middleware(event: Any, get_response: Callable[[Any], Any]) -> Any:
        token = ACTING.set(function)
        try:
            return get_response(event)
        finally:
            ACTING.reset(token)

    return middleware


@dataclass
class Denial:
    function: str
    action: str
    resource: str

    def __str__(self) -> str:
        return f"{self.function} may not call {self.action} on {self.resource}"


DENIALS: list[Denial] = []
"""Every call refused in this process, for the test run's hook to report (and clear)."""
_DENIALS_LOCK = threading.Lock()


@functools.cache
def template_policies() -> Mapping[str, FunctionPolicies]:
    """``template.yaml``'s functions' policies, translated once per process (~1 s)."""
    return function_policies(Template.load())


@dataclass
class ClientGate:
    """See the module docstring: ``Clients(config, before_call=ClientGate.for_stack(stack))``."""

    policies: Mapping[str, list[IAMPolicy]]
    """Function logical id -> its policies, resolved."""
    caller_arns: Mapping[str, str]
    decisions: list[Decision] = field(default_factory=list)

    @classmethod
    def for_stack(cls, stack: Stack, policies: Mapping[str, FunctionPolicies] | None = None
                  ) -> ClientGate:
        """The template's policies (or ``policies``, e.g. a narrower copy) for ``stack``."""
        translated = policies if policies is not None else template_policies()
        return cls(
            policies={name: [IAMPolicy(json.dumps(document)) for document in
                             resolved_documents(stack, p).values()]
                      for name, p in translated.items()},
            caller_arns={name: f"arn:aws:sts::{ACCOUNT_ID}:assumed-role/"
                               f"{role_name(stack, name)}/{name}" for name in translated})

    def __call__(self, service: str, operation: str, params: Mapping[str, Any]) -> None:
        function = ACTING.get()
        if function is None:
            return
        try:
            needed = required(service, operation, params)
        except UnknownRequest as exc:
            needed = [(f"{service}:{operation}", f"(the IAM gate does not know {exc})")]
        for action, resource in needed:
            allowed = not resource.startswith("(") and allows(
                self.policies[function], action, resource, self.caller_arns[function])
            self.decisions.append(Decision(function, action, resource, allowed))
            if not allowed:
                denial = Denial(function, action, resource)
                with _DENIALS_LOCK:
                    DENIALS.append(denial)
                raise ClientError({"Error": {"Code": "AccessDeniedException",
                                             "Message": f"{denial} (template.yaml)"}}, operation)


def take_denials() -> list[Denial]:
    """The calls refused since the last take."""
    with _DENIALS_LOCK:
        taken = list(DENIALS)
        DENIALS.clear()
    return taken


def fail_on(denials: list[Denial]) -> None:
    """What fails a test in which calls were refused: an AssertionError naming each."""
    if denials:
        raise AssertionError("template.yaml does not allow what the code does:\n"
                             + "\n".join(sorted({str(d) for d in denials})))


def without(policies: Mapping[str, FunctionPolicies], function: str, *actions: str
            ) -> dict[str, FunctionPolicies]:
    """A copy of ``policies`` in which ``function`` lacks ``actions`` (a permission removed,
    to see a call it was needed for refused)."""
    narrower = copy.deepcopy(dict(policies))
    for document in narrower[function].inline.values():
        statements = []
        for statement in document["Statement"]:
            listed = statement["Action"]
            kept = [a for a in ([listed] if isinstance(listed, str) else listed)
                    if a not in actions]
            if kept:
                statements.append({**statement, "Action": kept})
        document["Statement"] = statements
    return narrower
