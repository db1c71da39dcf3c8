"""The real control plane on loopback, for the tests (and the node bench) that need a portal.

:class:`ControlPlane` does what ``make run`` does for the API, and nothing more: moto's server
mode on 127.0.0.1 (:mod:`infra.local.moto_server`), ``template.yaml``'s resources made there by
the local stack's provisioner, and the API function's Chalice app (``control_plane.app``) served
on a real socket (:mod:`infra.local.portal`). So a node enrols with a one-time join token, signs
its credentials calls with its own key (a replayed ``jti`` is refused) and gets STS credentials
scoped to its queues: the real endpoints, not a stand-in. No events consumer, reaper, router
or node runs: :class:`tests.support.node.EventLog` reads the events queue instead, or
:meth:`ControlPlane.consume_events` hands what is queued to the events function
(``control_plane.app.on_event``) exactly as ``make run``'s pump does (``infra.local.functions``).

What tests need beyond HTTP goes through the control plane's own modules: join tokens
(``Nodes.create_join_token``), commands on a node's queue (``Messenger.send``), the node's
item as stored. Two settings are shortened for tests: the node credentials' lifetime (the
real minimum is 900 s) and, right after enrolment (:meth:`enrolled`), the node queue's
visibility timeout (60 s), so that refreshes and redeliveries happen within a test.
:meth:`outage` takes both servers away and brings them back on the same ports with their
state: new connections are refused, while a connection kept alive from before still reaches
the app, which then fails on AWS (500) — the two faces of an outage.

The app's services are process-wide (:func:`control_plane.services.use`) and moto keeps its
state in the process, where ``mock_aws`` resets it: one ControlPlane at a time, in modules
that do not use ``mock_aws`` (module-scoped fixtures).
"""

from __future__ import annotations

import contextlib
import dataclasses
import uuid
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import boto3
import botocore.session
from botocore.config import Config as BotoConfig

from control_plane import services
from control_plane.app import app, on_event
from control_plane.aws import Clients
from control_plane.clock import now_iso
from control_plane.config import Config
from control_plane.records import Instance
from control_plane.services import Services
from control_plane.table import Item, Table
from infra.local.aws import LOCAL_ACCESS_KEY, LOCAL_SECRET_KEY, AwsEndpoint
from infra.local.functions import SqsPump
from infra.local.moto_server import MotoServer
from infra.local.portal import PortalServer, use_process_logging
from infra.local.provision import Provisioner
from infra.local.template import ApiTrigger, Template
from protocol.messages import Message, StartInstance
from protocol.states import InstanceState

PARAMETERS = {
    "PortalUrl": "http://127.0.0.1",  # the real one (its port) is known once the API listens
    "RouterDomain": "apps.test",
    "RouterScheme": "http",
    "RouterTunnelUrls": ["ws://127.0.0.1:9/.dit4c/tunnel"],
}


class ControlPlane:
    """The API on ``url`` over moto at ``aws``, until :meth:`close`; see the module docstring.

    ``credential_seconds``: the lifetime of the STS credentials nodes get (default: the
    control plane's). ``visibility_timeout``: what :meth:`enrolled` sets on a node's queue.
    ``settings``: control-plane environment settings added to the template's (login
    providers, the router's domain and port, ...).
    """

    def __init__(self, *, credential_seconds: int | None = None,
                 visibility_timeout: int | None = None,
                 settings: dict[str, str] | None = None, pods_gateway: str | None = None,
                 storage_seconds: int | None = None,
                 wrap: Callable[[Any], Any] | None = None) -> None:
        """``settings``: more of the control plane's environment. ``pods_gateway``: moto serves
        there too (same state, same port), and the storage endpoint pods get is
        ``host.docker.internal`` on it. ``storage_seconds``: the storage credentials' lifetime.
        ``wrap``: a WSGI middleware in front of moto (an S3 gate)."""
        self.visibility_timeout = visibility_timeout
        self._wrap = wrap
        self._moto = MotoServer(wrap=wrap)
        self.aws: AwsEndpoint = self._moto.start()
        self._pods_motos: list[MotoServer] = []
        self._portal: PortalServer | None = None
        try:
            stack = Provisioner(self.aws, f"t{uuid.uuid4().hex[:8]}").provision(
                Template.load(), PARAMETERS)
            (self._api,) = [spec for spec in stack.functions.values()
                            if any(isinstance(t, ApiTrigger) for t in spec.triggers)]
            self._events_spec = stack.functions["EventsFunction"]
            use_process_logging(app)
            self._serve(0)
            config = Config.from_env({**self.aws.environment(), **stack.environment,
                                      "DIT4C_PORTAL_URL": self.url, **(settings or {})})
            if pods_gateway is not None:
                port = self.serve_aws_on(pods_gateway)
                config = dataclasses.replace(
                    config, pod_aws_endpoint_url=f"http://host.docker.internal:{port}")
            if storage_seconds is not None:
                config = dataclasses.replace(config, storage_credentials_seconds=storage_seconds)
            botocore_session = botocore.session.get_session()
            if credential_seconds is not None:
                config = dataclasses.replace(config, node_credentials_seconds=credential_seconds)
            if credential_seconds is not None or storage_seconds is not None:
                # Below STS's 900 s minimum, which botocore checks before sending; moto takes
                # any lifetime.
                botocore_session.set_default_client_config(
                    BotoConfig(parameter_validation=False))
            self.config = config
            session = boto3.session.Session(aws_access_key_id=LOCAL_ACCESS_KEY,
                                            aws_secret_access_key=LOCAL_SECRET_KEY,
                                            region_name=self.aws.region,
                                            botocore_session=botocore_session)
            self.services = Services.build(config, Clients(config, session))
            services.use(self.services)
            self.cluster_id: str = self.services.nodes.create_cluster("test").cluster_id
        except BaseException:
            self.close()
            raise
        self.sqs: Any = self.aws.client("sqs")
        self.events_queue_url = config.events_queue_url
        self.router_queue_url: str = stack.resources["RouterRevocationsQueue"].ref

    def _serve(self, port: int) -> None:
        self._portal = PortalServer(app, [("127.0.0.1", port)],
                                    timeout=self._api.timeout_seconds,
                                    memory_mb=self._api.memory_mb,
                                    function_name=self._api.logical_id)
        self._portal.start()
        host, port = self._portal.addresses[0]
        self.url = f"http://{host}:{port}"

    def serve_aws_on(self, host: str) -> int:
        """moto (the same state) on ``host`` too, on the same port: pods whose
        ``host.docker.internal`` is that address reach S3 as ``DIT4C_POD_AWS_ENDPOINT_URL``
        says (another node's pods network). Returns the port."""
        port = urlsplit(self.aws.url or "").port or 0
        server = MotoServer(host, port, wrap=self._wrap)
        server.start()
        self._pods_motos.append(server)
        return port

    # -- what an administrator and the scheduler do ---------------------------------------

    def new_join_token(self) -> str:
        return self.services.nodes.create_join_token(self.cluster_id).token

    def node(self, node_id: str) -> Item:
        """The node's item as the control plane stored it."""
        item = Table(self.aws.client("dynamodb"), self.config.tables.nodes).get(
            {"node_id": node_id})
        assert item is not None, f"no node {node_id}"
        return item

    def queue_url(self, node_id: str) -> str:
        return str(self.node(node_id)["queue_url"])

    def enrolled(self, node_id: str) -> None:
        """Apply ``visibility_timeout`` to the queue the enrolment of ``node_id`` made."""
        if self.visibility_timeout is not None:
            self.sqs.set_queue_attributes(
                QueueUrl=self.queue_url(node_id),
                Attributes={"VisibilityTimeout": str(self.visibility_timeout)})

    def send(self, node_id: str, message: Message) -> None:
        """Put ``message`` on the node's queue. A start is first recorded as placed on the
        node, as the scheduler does: a node removes the pods of instances its portal does not
        have placed on it (:meth:`node_daemon.agent.Agent.check_placed`)."""
        if isinstance(message, StartInstance):
            self.place(node_id, message)
        self.services.messenger.send(self.queue_url(node_id), message)

    def consume_events(self) -> int:
        """Hand whatever is on the events queue to the events function, as the local stack's
        pump does (an SQS event of up to 10 records, message attributes included); returns
        how many messages it took."""
        pump = SqsPump(self._events_spec, on_event, self.sqs,
                       queue_url=self.config.events_queue_url,
                       queue_arn=self.config.events_queue_arn, batch_size=10,
                       region=self.aws.region)
        taken = 0
        while got := pump.run_once(0):
            taken += got
        return taken
    def place(self, node_id: str, start: StartInstance) -> None:
        """The instance record a scheduler leaves behind for ``start`` on ``node_id``."""
        record = Instance(
            instance_id=start.instance_id, owner="test", name=start.instance_id,
            image_id="test", image=start.image, port=start.port, cpu=start.cpu,
            memory_mb=start.memory_mb, cluster_id=self.cluster_id, hostname=start.hostname,
            url=start.url, state=InstanceState.SCHEDULED, node_id=node_id,
            node_queue_url=self.queue_url(node_id), created_at=now_iso(),
            updated_at=now_iso())
        self.services.instances.table.put(record.to_item())

    # -- outages and shutdown --------------------------------------------------------------

    @contextlib.contextmanager
    def outage(self) -> Iterator[None]:
        """Inside: the portal and every AWS endpoint refuse new connections; after: back as
        they were, on the same ports."""
        assert self._portal is not None and self.aws.url is not None
        portal_port = self._portal.addresses[0][1]
        aws_port = int(self.aws.url.rsplit(":", 1)[1])
        self._portal.stop()
        self._moto.stop()
        try:
            yield
        finally:
            self._moto = MotoServer("127.0.0.1", aws_port, wrap=self._wrap)
            self._moto.start()
            self._serve(portal_port)

    def close(self) -> None:
        services.use(None)
        if self._portal is not None:
            self._portal.stop()
        for server in self._pods_motos:
            server.stop()
        self._moto.stop()


@contextlib.contextmanager
def control_plane(**options: Any) -> Iterator[ControlPlane]:
    """A :class:`ControlPlane` (``options`` as its constructor's), closed on leaving."""
    plane = ControlPlane(**options)
    try:
        yield plane
    finally:
        plane.close()
