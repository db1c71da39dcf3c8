"""Waiting in a test for something the system does in the background (a helper restarted, a
volume removed), failing with what was awaited once a deadline passes."""

from __future__ import annotations

import time
from collections.abc import Callable


def until(check: Callable[[], object], timeout: float, what: str, every: float = 0.1) -> float:
    """Seconds until ``check()`` is true; fails naming ``what`` after ``timeout``."""
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < timeout, f"{what}: not within {timeout} s"
        time.sleep(every)
    return time.monotonic() - started
