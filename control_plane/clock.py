"""Times as the tables store them: RFC 3339 UTC strings with milliseconds, which sort as text."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta


def iso(when: datetime) -> str:
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def now_iso(offset_seconds: float = 0) -> str:
    return iso(datetime.now(UTC) + timedelta(seconds=offset_seconds))
