"""Errors of the local stack (``infra.local``); every one names what to fix.

::

    LocalStackError
    ├── ConfigError        a setting (environment variable) is missing or bad
    ├── TemplateError      template.yaml cannot be read, or uses what the local stack cannot create
    ├── SnapshotError      the saved AWS state in the data directory cannot be read or restored
    ├── JournalError       a change to the AWS state cannot be written to the journal (disk full)
    ├── DockerUnavailable  no Docker engine answers
    └── ChildFailed        a process the stack started exited or never became ready
"""

from __future__ import annotations


class LocalStackError(Exception):
    """Root of every error the local stack raises on purpose."""


class ConfigError(LocalStackError):
    pass


class TemplateError(LocalStackError):
    pass


class SnapshotError(LocalStackError):
    pass


class JournalError(LocalStackError):
    pass


class DockerUnavailable(LocalStackError):
    pass


class ChildFailed(LocalStackError):
    pass
