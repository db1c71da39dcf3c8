"""Control plane: the Chalice app (portal + scheduler API) and its domain modules.

``app.py`` maps HTTP to calls; the logic lives beside it: ``accounts`` (users, sessions,
throttling), ``keys`` (signing keys in SSM), ``catalog``, ``shares``, ``nodes`` (clusters, join
tokens, enrolment, credentials), ``instances`` (records and the state machine), ``scheduler``
(placement), ``lifecycle`` (what users do), ``events`` (the SQS consumer), ``reaper``,
``services`` (wiring), ``web`` (HTTP helpers), ``openapi``, ``bootstrap`` (local defaults).
"""

__version__ = "0.1.0"
