"""Counters the proxy bumps as plain integers, exposed to Prometheus at scrape time.

The hot path only adds to ints (no locks, no label lookups); :class:`StatsCollector` turns them
into metric families when ``/metrics`` is read.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Stats:
    """What the router counts; every field is a plain number updated in place."""

    def __init__(self) -> None:
        self.bytes_in = 0
        """Bytes received from public clients (heads and bodies)."""
        self.bytes_out = 0
        """Bytes sent to public clients."""
        self.tunnels_opened = 0
        self.tunnels_refused = 0
        self.streams_opened = 0
        self.connections = 0
        self._latency: dict[str, tuple[list[int], list[float]]] = {}

    def observe(self, status: int, seconds: float) -> None:
        key = str(status)
        entry = self._latency.get(key)
        if entry is None:
            entry = self._latency[key] = ([0] * (len(BUCKETS) + 1), [0.0])
        entry[0][bisect.bisect_left(BUCKETS, seconds)] += 1
        entry[1][0] += seconds

    def latency(self) -> Iterator[tuple[str, list[int], float]]:
        for status, (counts, total) in sorted(self._latency.items()):
            yield status, counts, total[0]


class StatsCollector(Collector):
    """Prometheus view of :class:`Stats` plus live gauges read through callables."""

    def __init__(self, stats: Stats, gauges: dict[str, tuple[str, Callable[[], float]]]) -> None:
        self._stats = stats
        self._gauges = gauges

    def collect(self) -> Iterator[Metric]:
        s = self._stats
        for name, (doc, read) in self._gauges.items():
            yield GaugeMetricFamily(f"dit4c_router_{name}", doc, value=read())
        for name, doc, value in (
            ("bytes_received", "Bytes received from public clients", s.bytes_in),
            ("bytes_sent", "Bytes sent to public clients", s.bytes_out),
            ("tunnels_opened", "Tunnels accepted", s.tunnels_opened),
            ("tunnels_refused", "Tunnel attempts refused", s.tunnels_refused),
            ("streams_opened", "Streams opened over tunnels", s.streams_opened),
            ("connections_accepted", "Public client connections accepted", s.connections),
        ):
            yield CounterMetricFamily(f"dit4c_router_{name}", doc, value=value)
        histogram = HistogramMetricFamily(
            "dit4c_router_request_duration_seconds",
            "Time from a request's head to the end of its response, by status",
            labels=["status"])
        for status, counts, total in s.latency():
            cumulative, running = [], 0
            for bound, count in zip((*map(str, BUCKETS), "+Inf"), counts, strict=True):
                running += count
                cumulative.append((bound, running))
            histogram.add_metric([status], cumulative, total)
        yield histogram
