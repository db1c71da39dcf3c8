"""Test harnesses shared by the tiers and the benchmarks (never imported by a runtime package).

- :mod:`tests.support.control_plane` — the real control plane (Chalice app) on loopback over
  moto's server mode, for everything that needs a portal: node enrolment and credentials,
  commands on a node's queue.
- :mod:`tests.support.events` — events as a node signs them, in the SQS event Lambda hands
  the consumer.
- :mod:`tests.support.identity_provider` — an OpenID Connect (and GitHub-shaped) provider on
  loopback that signs real ID tokens, or forges them.
- :mod:`tests.support.node` — the node daemon as a process, its events read back, a test node's
  settings, a sample start command.
- :mod:`tests.support.router` — an edge router, listener links, tunnel tokens and an upstream
  wired together on loopback; :mod:`tests.support.router_stack` — its pytest fixtures.
- :mod:`tests.support.auth_harness` — the real OAuth2 server behind a minimal portal (fake
  login, test-controlled access) and a cookie-jar ``Browser``;
  :mod:`tests.support.auth_scenarios` — the browser and attack scenarios both tiers run
  against auth helpers.
- :mod:`tests.support.echo_tool` — an echo tool that writes like tornado (Nagle on, several
  small writes per answer), for the latency bench and the tests of its cause.
- :mod:`tests.support.jupyter_kernel` — a kernel started and driven over its WebSocket as
  JupyterLab's page does it.
- :mod:`tests.support.polling` — ``until``: waiting for what the system does in the background.
- :mod:`tests.support.deploy` — the Lambda artifact run as Lambda runs it (each function in its
  own interpreter of the runtime's version, :mod:`tests.support.lambda_runtime`), and the events
  API Gateway, SQS and EventBridge hand it; :mod:`tests.support.iam_gate` — each function's role
  as SAM translates the template, and moto's server authorising every call as IAM would.
"""
