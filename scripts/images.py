"""Names of the images that this repository builds locally (never pulled from a registry).

One place for the names, imported by the image builder (:mod:`scripts.build_images`), the test
suite and anything else that runs them. What each image holds is described in
docs/development.md.
"""

from typing import Final

TEST_TOOL: Final = "dit4c/test-tool:busybox"
"""A tiny "user tool": busybox httpd serving /www on port 8080 (EXPOSE 8080, label dit4c.port)."""

TEST_TOOL_PORT: Final = 8080

JUPYTERLAB: Final = "dit4c/jupyterlab:4.6"
"""A real tool: JupyterLab 4.6 with ipykernel, installed offline from wheels on the helper base's
Python (scripts/jupyterlab/requirements.txt). No token: the pod's auth helper guards it."""

JUPYTERLAB_PORT: Final = 8888

HELPER_BASE: Final = "dit4c/helper-base:bookworm"
"""Debian bookworm minbase + python3, aiohttp, jwt, cryptography, yaml, ca-certificates."""

HELPERS: Final = "dit4c/helpers:dev"
"""HELPER_BASE + this repository's protocol/ and helpers/ under /opt/dit4c (PYTHONPATH)."""

HELPERS_USER: Final = "dit4c"
"""The unprivileged user the helpers image runs as (uid/gid HELPERS_UID)."""

HELPERS_UID: Final = 10001

ROUTER: Final = "dit4c/router:dev"
"""HELPER_BASE + a virtualenv of pyproject.toml's ``router`` group + protocol/ and edge_router/;
runs ``python -m edge_router`` as HELPERS_USER (edge_router/Dockerfile, docs/edge-router.md)."""
NODE: Final = "dit4c/node:dev"
"""HELPER_BASE + a virtualenv of the node package (``make dist``'s wheel and the ``node`` group);
``dit4c-node run`` as root, given the engine's socket (node_daemon/Dockerfile,
docs/node-daemon.md)."""

PORT_LABEL: Final = "dit4c.port"
"""Image label naming the TCP port a tool serves HTTP on."""

RECIPE_LABEL: Final = "dit4c.recipe"
"""Image label holding the hash of the recipe an image was built from (rebuild when it differs)."""

ALL: Final = (TEST_TOOL, HELPER_BASE, HELPERS, JUPYTERLAB, ROUTER, NODE)
