"""Node daemon: an outbound-only agent that runs dit4c pods on the local Docker engine.

Modules, from the outside in:

- :mod:`node_daemon.__main__` — the ``join`` and ``run`` commands (thin).
- :mod:`node_daemon.config` — the saved identity (``node.json`` + key) and the run settings.
- :mod:`node_daemon.portal` — the control plane's two node endpoints (enrol, credentials).
- :mod:`node_daemon.credentials` — short-lived STS credentials, refreshed before they expire.
- :mod:`node_daemon.queues` — the node's command queue and the events queue over SQS.
- :mod:`node_daemon.records` — durable per-instance records: what each instance should be.
- :mod:`node_daemon.network` — the pods network (inter-container traffic disabled).
- :mod:`node_daemon.pods` — pods over the Docker API.
- :mod:`node_daemon.agent` — commands and reconciliation: records -> pods -> reported states.
- :mod:`node_daemon.daemon` — the long-running loops: polling, heartbeats, reconcile, shutdown.
- :mod:`node_daemon.metrics` — Prometheus metrics on a loopback port.
"""

__version__ = "0.1.0"
