"""Prometheus metrics of one daemon (`metrics: {listen: HOST:PORT}` in the mount table).

The same numbers as `unifs cache stats`, read from the file system at each scrape (no
counters of its own to keep in step), on an HTTP endpoint of prometheus-client's own server.
Off unless configured: a port open to the network is the user's choice, and the default
address, when only a port is given, is 127.0.0.1.
"""

from __future__ import annotations

import errno
import re
from typing import Callable

from prometheus_client import start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import CollectorRegistry

from unifs.errors import UserError

_TIER_COUNTERS = (("hits", "cache_hits", "block lookups served by the tier"),
                  ("misses", "cache_misses", "block lookups the tier could not serve"),
                  ("evictions", "cache_evictions", "blocks evicted to stay within the bound"),
                  ("corrupt", "cache_corrupt_blocks", "damaged blocks found, dropped and fetched again"))
_TIER_GAUGES = (("bytes", "cache_bytes", "bytes the tier holds"),
                ("limit", "cache_limit_bytes", "the tier's bound in force (a full disk lowers it)"),
                ("blocks", "cache_blocks", "blocks the tier holds"))


class _Collector:
    def __init__(self, stats: Callable[[], dict]):
        self.stats = stats

    def collect(self):
        s = self.stats()
        cache = s.get("cache") or {}
        tiers = [t for t in ("ram", "disk") if t in cache]
        for key, name, doc in _TIER_GAUGES:
            g = GaugeMetricFamily(f"unifs_{name}", doc, labels=["tier"])
            for t in tiers:
                g.add_metric([t], cache[t][key])
            yield g
        for key, name, doc in _TIER_COUNTERS:
            c = CounterMetricFamily(f"unifs_{name}", doc, labels=["tier"])
            for t in tiers:
                c.add_metric([t], cache[t][key])
            yield c
        gets = CounterMetricFamily("unifs_store_get_requests", "ranged GETs sent to the store", labels=["mount"])
        fetched = CounterMetricFamily("unifs_store_read_bytes", "bytes read from the store", labels=["mount"])
        for mount, io in sorted(s.get("store_reads", {}).items()):
            gets.add_metric([mount], io["gets"])
            fetched.add_metric([mount], io["bytes"])
        yield gets
        yield fetched
        served = CounterMetricFamily("unifs_cache_served_bytes", "bytes readers got from the block cache",
                                     labels=["mount"])
        for mount, c in sorted((cache.get("mounts") or {}).items()):
            served.add_metric([mount], c["bytes_from_cache"])
        yield served
        ra = s["readahead"]
        yield GaugeMetricFamily("unifs_readahead_bytes", "read-ahead and prefetch bytes held now", value=ra["used"])
        yield GaugeMetricFamily("unifs_readahead_limit_bytes", "the read-ahead budget (read.budget)",
                                value=ra["limit"])
        yield CounterMetricFamily("unifs_prefetch_files", "small files fetched ahead of their reader",
                                  value=s["prefetch"]["files"])
        yield CounterMetricFamily("unifs_prefetch_bytes", "bytes of files fetched ahead of their reader",
                                  value=s["prefetch"]["bytes"])
        yield GaugeMetricFamily("unifs_open_files", "files open through the mount", value=s["open_handles"])
        yield GaugeMetricFamily("unifs_staged_files", "files written locally and not yet known to be in the "
                                "store: open for writing, uploading or pending (see 'unifs status')",
                                value=s["staged_files"])


def parse_listen(value: str) -> tuple[str, int]:
    """'HOST:PORT', '[IPv6]:PORT' or 'PORT' (127.0.0.1) -> (host, port)."""
    text = str(value).strip()
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "127.0.0.1", text
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected HOST:PORT or PORT with a port from 1 to 65535, got {value!r}")
    if not host:
        raise ValueError(f"expected HOST:PORT, got {value!r} (no host; 0.0.0.0 listens on every address)")
    if not re.fullmatch(r"[A-Za-z0-9.:%_-]+", host):
        raise ValueError(f"expected HOST:PORT (an address or host name, no scheme or path), got {value!r}")
    return host, int(port)


def url(listen: str) -> str:
    host, port = parse_listen(listen)
    return f"http://{'[' + host + ']' if ':' in host else host}:{port}/metrics"


def serve(listen: str, stats: Callable[[], dict]):
    """Start the endpoint on its own thread; returns the server (its shutdown() stops it)."""
    host, port = parse_listen(listen)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(stats))
    try:
        server, _ = start_http_server(port, addr=host, registry=registry)
    except OSError as e:
        why = "address in use (another process listens there)" if e.errno == errno.EADDRINUSE else \
            (e.strerror or str(e))
        raise UserError(f"metrics.listen {listen}: cannot listen: {why}") from None
    return server
