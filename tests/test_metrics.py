"""The Prometheus endpoint of a mount (`metrics: {listen: ...}`), scraped over HTTP."""

from __future__ import annotations

import socket
import subprocess
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from conftest import SCRATCH, sha256, unifs, wait_for
from unifs.devstores.process import free_port


def _drop_page_cache():
    subprocess.run(["sync"], check=True)
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def scrape(port: int) -> dict:
    """(name, labels as a sorted tuple) -> value, for every sample."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _table(mounter, tmp_path, listen):
    return {"mounts": [mounter.s3_entry("/c", f"s3://{SCRATCH}/metrics", read_only=True, prefetch=False)],
            "cache": {"mode": "ram", "dir": str(tmp_path / "cache"), "ram": "64MiB", "block_size": "1MiB"},
            "metrics": {"listen": listen}}


def test_metrics_count_store_reads_cache_hits_and_open_files(mounter, tmp_path):
    data = {f"metrics/f{i}.bin": bytes([i]) * (300_000 + i) for i in range(3)}
    mounter.seaweed.put_many(SCRATCH, data)
    port = free_port()
    table = _table(mounter, tmp_path, str(port))  # a port alone: 127.0.0.1
    mp = mounter.mount(table.pop("mounts"), extra=table)
    before = scrape(port)
    assert before[("unifs_cache_limit_bytes", (("tier", "ram"),))] == 64 << 20
    assert before.get(("unifs_store_read_bytes_total", (("mount", "/c"),)), 0) == 0

    total = sum(len(v) for v in data.values())
    got = {k: sha256((mp / "c" / k.split("/")[1]).read_bytes()) for k in data}
    assert got == {k: sha256(v) for k, v in data.items()}
    m = scrape(port)
    assert m[("unifs_store_read_bytes_total", (("mount", "/c"),))] == total
    assert m[("unifs_store_get_requests_total", (("mount", "/c"),))] == 3
    assert m[("unifs_cache_bytes", (("tier", "ram"),))] == total
    assert m[("unifs_cache_blocks", (("tier", "ram"),))] == 3

    _drop_page_cache()
    with open(mp / "c/f1.bin", "rb") as held:
        assert held.read() == data["metrics/f1.bin"]
        m = scrape(port)
        assert m[("unifs_open_files", ())] == 1
    m = scrape(port)
    assert m[("unifs_store_read_bytes_total", (("mount", "/c"),))] == total  # from the cache
    assert m[("unifs_cache_served_bytes_total", (("mount", "/c"),))] >= len(data["metrics/f1.bin"])
    assert m[("unifs_cache_hits_total", (("tier", "ram"),))] >= 1
    # the kernel sends the release after close() returns: the count drops with it
    assert wait_for(lambda: scrape(port)[("unifs_open_files", ())] == 0)
    unifs("umount", str(mp), check=True)
    try:
        scrape(port)
        raise AssertionError("the endpoint outlived its mount")
    except OSError:
        pass


def test_a_metrics_port_in_use_fails_the_mount_with_one_line(mounter, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cfg = mounter.write_table(_table(mounter, tmp_path, f"127.0.0.1:{port}"))
        mp = tmp_path / "mnt-busy"
        mp.mkdir()
        res = unifs("mount", str(mp), "--config", str(cfg))
    assert res.returncode == 1, res
    assert res.stderr.strip() == f"unifs: error: metrics.listen 127.0.0.1:{port}: cannot listen: address in use " \
                                 "(another process listens there)", res.stderr
    assert not any(str(mp) in line for line in open("/proc/mounts"))
