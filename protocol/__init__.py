"""Contracts shared by two or more parts of dit4c.

A change to a contract is a change here, in one place:

- :mod:`protocol.ids` — the one id rule and how an instance id becomes a host.
- :mod:`protocol.states` — instance lifecycle states and the legal transitions.
- :mod:`protocol.messages` — the JSON messages carried by SQS (and the revocation fan-out).
- :mod:`protocol.tokens` — JWT claims for every token the control plane or a node signs, and
  their verification against a JWKS.
- :mod:`protocol.tunnel` — the wire format of the edge router's multiplexed tunnels.
- :mod:`protocol.registry` — image references, the image server's token scopes and claims.

Everything here is pure Python over the Lambda requirements (PyJWT, cryptography): the control
plane imports it inside Lambda.
"""

PROTOCOL_VERSION = 1
