"""Prometheus metrics of one node daemon, served on a loopback port."""

from __future__ import annotations

from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from node_daemon.errors import ConfigError

LAUNCH_BUCKETS = (0.25, 0.5, 1, 2, 3, 5, 10, 20, 30, 60, 120, 300)


class NodeMetrics:
    """The daemon's metrics, in a registry of their own (several daemons may share a process
    in tests)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.pods = Gauge("dit4c_node_pods", "Instances on this node by state", ["state"],
                          registry=self.registry)
        self.launches = Counter("dit4c_node_launches", "Pod launches by result", ["result"],
                                registry=self.registry)
        self.launch_seconds = Histogram(
            "dit4c_node_launch_seconds", "From start_instance received to the tool answering",
            buckets=LAUNCH_BUCKETS, registry=self.registry)
        self.poll_errors = Counter("dit4c_node_queue_poll_errors",
                                   "Failed polls of the command queue", registry=self.registry)
        self.messages = Counter("dit4c_node_messages", "Commands handled by type and outcome",
                                ["type", "outcome"], registry=self.registry)
        self.event_send_errors = Counter("dit4c_node_event_send_errors",
                                         "Events the events queue did not accept (retried)",
                                         registry=self.registry)

    def set_pods(self, counts: dict[str, int]) -> None:
        self.pods.clear()
        for state, count in counts.items():
            self.pods.labels(state).set(count)


def serve(metrics: NodeMetrics, host: str, port: int) -> tuple[WSGIServer, str]:
    """Serve ``/metrics`` on ``host:port`` (port 0: any); return the server and ``host:port``."""
    try:
        server, _thread = start_http_server(port, addr=host, registry=metrics.registry)
    except OSError as exc:
        raise ConfigError(f"cannot serve metrics on {host}:{port} ({exc.strerror or exc}); "
                          "choose another DIT4C_NODE_METRICS_LISTEN / --metrics-listen") from None
    bound_host, bound_port = server.server_address[:2]
    if isinstance(bound_host, bytes):
        bound_host = bound_host.decode()
    return server, f"{bound_host!s}:{bound_port}"


def stop_serving(server: WSGIServer) -> None:
    """Stop the server and close its socket (blocks up to half a second: run in a thread)."""
    server.shutdown()
    server.server_close()
