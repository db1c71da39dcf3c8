"""Tunnel wire format between the edge router and a pod's listener helper.

Owned by the edge router work (issue 5); see docs/edge-router.md once written.
"""
