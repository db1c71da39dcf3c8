"""Errors raised by the node daemon.

    NodeDaemonError
    ├── ConfigError    a missing or bad setting, or an unusable data directory
    ├── PortalError    the control plane refused a call or could not be reached
    ├── QueueError     an SQS call failed
    ├── HelpersError   the helpers image is missing, cannot be pulled, or fails its digest
    └── PodError       the Docker engine refused pod work
        └── LaunchError  a pod could not be brought up; ``reason`` is shown to the user
"""

from __future__ import annotations


class NodeDaemonError(Exception):
    """Root of every error the node daemon raises."""


class ConfigError(NodeDaemonError):
    """A setting is missing or invalid; the message names it."""


class PortalError(NodeDaemonError):
    """A call to the control plane failed.

    ``status`` is the HTTP status (None when the portal could not be reached); ``permanent`` is
    True for a refusal that retrying cannot fix (4xx other than 429).
    """

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status

    @property
    def permanent(self) -> bool:
        return self.status is not None and 400 <= self.status < 500 and self.status != 429


class QueueError(NodeDaemonError):
    """An SQS call failed (network, credentials, or the queue itself)."""


class HelpersError(NodeDaemonError):
    """The helpers image is missing, cannot be pulled, or is not the pinned digest; the
    message says what to do (it is also what the portal shows for the node)."""


class PodError(NodeDaemonError):
    """The Docker engine refused or failed pod work."""


class LaunchError(PodError):
    """A pod could not be brought up; the message is the user-facing reason."""
