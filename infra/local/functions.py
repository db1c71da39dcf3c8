"""Running the template's non-HTTP functions the way Lambda would: SQS triggers and schedules.

- :class:`SqsPump`: long-polls the trigger's queue and calls the handler with an SQS event of
  up to ``BatchSize`` records. Messages are deleted after the handler returns, except those it
  names in ``batchItemFailures`` (``ReportBatchItemFailures``); if it raises, none are deleted,
  so they come back after the visibility timeout and, after ``maxReceiveCount`` tries, go to the
  dead-letter queue: SQS's own redrive, as on AWS.
- :class:`ScheduleTimer`: calls the handler with an EventBridge scheduled event every
  ``rate(...)`` interval, while its rule (in moto's EventBridge) is enabled.
- :class:`RuleState`: whether a rule is enabled. The control plane switches the reaper's rule
  and the events trigger off while nothing runs (``control_plane/standby.py``); locally there
  is no trigger to switch, so the pump follows the reaper's rule instead.

Handlers come from the template (``Handler: module.attribute``) and are imported only once the
environment is set, as in a Lambda cold start. A handler error is logged with its traceback and
the pump or timer keeps going, as Lambda would retry.
"""

from __future__ import annotations

import importlib
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError
from chalice.app import Chalice
from chalice.local import LambdaContext

from infra.local.aws import ACCOUNT_ID
from infra.local.errors import TemplateError
from infra.local.template import FunctionSpec

log = logging.getLogger("dit4c.local.functions")

Handler = Callable[[dict[str, Any], Any], Any]
Observer = Callable[[str], None]
"""Sees each message body before the handler does (the stack watches for node heartbeats)."""

POLL_WAIT_SECONDS = 1
"""Short long-polls, so that stopping the pump takes about a second."""

STOP_WAIT_SECONDS = 2.0


def _load(spec: FunctionSpec) -> Any:
    try:
        module = importlib.import_module(spec.module)
    except ImportError as exc:
        raise TemplateError(f"{spec.logical_id}: cannot import {spec.module}: {exc}") from exc
    try:
        return getattr(module, spec.attribute)
    except AttributeError:
        raise TemplateError(
            f"{spec.logical_id}: {spec.module} has no {spec.attribute} (template.yaml names "
            f"Handler {spec.handler})"
        ) from None


def load_handler(spec: FunctionSpec) -> Handler:
    handler = _load(spec)
    if not callable(handler):
        raise TemplateError(f"{spec.logical_id}: {spec.handler} is not callable")
    return handler  # type: ignore[no-any-return]


def load_app(spec: FunctionSpec) -> Chalice:
    """The Chalice app an API function's handler names."""
    app = _load(spec)
    if not isinstance(app, Chalice):
        raise TemplateError(f"{spec.logical_id}: {spec.handler} is not a Chalice app")
    return app


def _context(spec: FunctionSpec) -> LambdaContext:
    return LambdaContext(
        function_name=spec.logical_id, memory_size=spec.memory_mb,
        max_runtime_ms=spec.timeout_seconds * 1000,
    )


class RuleState:
    """``state()``: is the EventBridge rule ``name`` enabled? Read at most once a second; a rule
    that cannot be read counts as enabled (the pump and timer keep working as before)."""

    def __init__(self, events: Any, name: str) -> None:
        self._events = events
        self.name = name
        self._lock = threading.Lock()
        self._read_at = float("-inf")
        self._enabled = True

    def __call__(self) -> bool:
        with self._lock:
            if time.monotonic() - self._read_at >= 1.0:
                try:
                    self._enabled = self._events.describe_rule(Name=self.name)["State"] \
                        != "DISABLED"
                except (ClientError, BotoCoreError) as exc:
                    log.warning("cannot read rule %s (%s); taking it as enabled", self.name, exc)
                    self._enabled = True
                self._read_at = time.monotonic()
            return self._enabled


class SqsPump:
    """One SQS trigger: see the module docstring. ``start()`` runs it in a thread; while
    ``enabled()`` says no, it does not poll."""

    def __init__(
        self,
        spec: FunctionSpec,
        handler: Handler,
        sqs: Any,
        *,
        queue_url: str,
        queue_arn: str,
        batch_size: int,
        region: str,
        observer: Observer | None = None,
        stopping: threading.Event | None = None,
        enabled: Callable[[], bool] | None = None,
    ) -> None:
        self._spec = spec
        self._handler = handler
        self._enabled = enabled or (lambda: True)
        self._sqs = sqs
        self._queue_url = queue_url
        self._queue_arn = queue_arn
        self._batch_size = min(batch_size, 10)  # ReceiveMessage's limit
        self._region = region
        self._observer = observer
        self._stopping = stopping or threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"sqs-{spec.logical_id}",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, drain_seconds: float = 1.5) -> None:
        """Stop polling, then hand over what is still waiting (for up to ``drain_seconds``):
        queued messages are not part of the snapshot, so the last events of stopping children
        would otherwise be lost."""
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(timeout=POLL_WAIT_SECONDS + 2)
        deadline = time.monotonic() + drain_seconds
        try:
            while time.monotonic() < deadline and self.run_once(0):
                pass
        except (ClientError, BotoCoreError) as exc:
            log.error("%s: cannot drain %s: %s", self._spec.logical_id, self._queue_url, exc)

    def _run(self) -> None:
        while not self._stopping.is_set():
            if not self._enabled():
                self._stopping.wait(POLL_WAIT_SECONDS)
                continue
            try:
                self.run_once(POLL_WAIT_SECONDS)
            except (ClientError, BotoCoreError) as exc:
                log.error("%s: cannot read %s: %s", self._spec.logical_id, self._queue_url, exc)
                self._stopping.wait(1)

    def run_once(self, wait_seconds: int = 0) -> int:
        """Receive one batch and hand it to the handler; returns how many messages it had."""
        response = self._sqs.receive_message(
            QueueUrl=self._queue_url, MaxNumberOfMessages=self._batch_size,
            WaitTimeSeconds=wait_seconds, AttributeNames=["All"],
            MessageAttributeNames=["All"],
        )
        messages = response.get("Messages", [])
        if not messages:
            return 0
        if self._observer is not None:
            for message in messages:
                self._observer(message["Body"])
        event = {"Records": [self._record(m) for m in messages]}
        try:
            result = self._handler(event, _context(self._spec))
        except Exception:
            log.exception("%s (%s) failed on %d messages; SQS will redeliver them",
                          self._spec.logical_id, self._spec.handler, len(messages))
            return len(messages)
        failed = _failed_ids(result)
        done = [m for m in messages if m["MessageId"] not in failed]
        if failed:
            log.warning("%s reported %d of %d messages as failed; SQS will redeliver them",
                        self._spec.logical_id, len(failed), len(messages))
        if done:
            self._sqs.delete_message_batch(
                QueueUrl=self._queue_url,
                Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]}
                         for i, m in enumerate(done)],
            )
        return len(messages)

    def _record(self, message: dict[str, Any]) -> dict[str, Any]:
        return {
            "messageId": message["MessageId"],
            "receiptHandle": message["ReceiptHandle"],
            "body": message["Body"],
            "attributes": message.get("Attributes", {}),
            "messageAttributes": {
                name: {
                    "stringValue": value.get("StringValue"),
                    "binaryValue": value.get("BinaryValue"),
                    "dataType": value["DataType"],
                }
                for name, value in message.get("MessageAttributes", {}).items()
            },
            "md5OfBody": message.get("MD5OfBody"),
            "eventSource": "aws:sqs",
            "eventSourceARN": self._queue_arn,
            "awsRegion": self._region,
        }


def _failed_ids(result: Any) -> set[str]:
    if not isinstance(result, dict):
        return set()
    failures = result.get("batchItemFailures") or []
    return {str(f.get("itemIdentifier")) for f in failures if isinstance(f, dict)}


class ScheduleTimer:
    """One ``rate(...)`` schedule: see the module docstring. ``start()`` runs it in a thread;
    while ``enabled()`` says no, the runs are skipped."""

    def __init__(
        self, spec: FunctionSpec, handler: Handler, rule_name: str, interval: float, region: str,
        *, stopping: threading.Event | None = None, enabled: Callable[[], bool] | None = None,
    ) -> None:
        self._spec = spec
        self._handler = handler
        self._enabled = enabled or (lambda: True)
        self._rule_arn = f"arn:aws:events:{region}:{ACCOUNT_ID}:rule/{rule_name}"
        self._interval = interval
        self._region = region
        self._stopping = stopping or threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"schedule-{spec.logical_id}",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, wait: float = STOP_WAIT_SECONDS) -> None:
        """Stop the timer; a run in progress gets ``wait`` seconds, then is left to finish on
        its own (a daemon thread): stopping the stack must not wait for a slow reap."""
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(timeout=wait)
            if self._thread.is_alive():
                log.warning("%s still running after %.0f s; not waiting for it",
                            self._spec.logical_id, wait)

    def _run(self) -> None:
        while not self._stopping.wait(self._interval):
            if self._enabled():
                self.fire()

    def fire(self) -> None:
        """Call the handler once with a scheduled event; errors are logged, not raised."""
        event = {
            "version": "0",
            "id": str(uuid.uuid4()),
            "detail-type": "Scheduled Event",
            "source": "aws.events",
            "account": ACCOUNT_ID,
            "time": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "region": self._region,
            "resources": [self._rule_arn],
            "detail": {},
        }
        try:
            result = self._handler(event, _context(self._spec))
        except Exception:
            log.exception("%s (%s) failed", self._spec.logical_id, self._spec.handler)
        else:
            log.debug("%s: %s", self._spec.logical_id, json.dumps(result, default=str)[:200])
