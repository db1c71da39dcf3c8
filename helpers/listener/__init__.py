"""The listener helper: the pod's end of the edge routers' tunnels (docs/helpers.md).

It dials every router it is given over WebSocket (outbound only: pods sit behind NAT), presents
the instance's tunnel token, and turns each stream the router opens into one TCP connection to
the auth helper inside the pod, moving bytes both ways without parsing them.

Runs on Debian bookworm's python3 with aiohttp 3.8 (the helpers image) and on newer aiohttp.
"""
