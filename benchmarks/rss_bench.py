#!/usr/bin/env python3
"""Daemon memory under a training-like read load: peak RSS (VmHWM) of the unifs daemon
against its RAM tier bound, while 8 threads read a 1 GiB object and 2,000 x 100 KiB files
cold and then again (target: peak RSS <= RAM tier + 150 MiB).

    python benchmarks/rss_bench.py [--ram 256MiB] [--big-mib 1024] [--small 2000]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

from unifs.devstores.seaweed import SeaweedS3
from unifs.units import parse_size


def unifs(*args) -> str:
    return subprocess.run([sys.executable, "-m", "unifs", *args], check=True, capture_output=True,
                          text=True).stdout


def vm(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ram", default="256MiB")
    ap.add_argument("--big-mib", type=int, default=1024)
    ap.add_argument("--small", type=int, default=2000)
    ap.add_argument("--budget", default=None, help="read-ahead budget (read.budget)")
    ap.add_argument("--threads", type=int, default=None, help="read-ahead fetch threads (read.threads)")
    ap.add_argument("--window", default=None, help="read-ahead window per reader (read.max_window)")
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="unifs-rss-"))
    server = SeaweedS3(str(work / "s3")).start()
    mp = work / "mnt"
    mp.mkdir()
    try:
        server.create_bucket("rss")
        server.put_many("rss", {f"small/f{i:05d}": os.urandom(100 * 1024) for i in range(a.small)})
        chunk = os.urandom(1 << 20)
        server.put_many("rss", {"big.bin": chunk * a.big_mib}, threads=1)
        cfg = work / "mounts.yaml"
        cfg.write_text(yaml.safe_dump({
            "mounts": [{"path": "/d", "url": "s3://rss", "read_only": True, "options": server.mount_options()}],
            "cache": {"dir": str(work / "cache"), "ram": a.ram, "disk": "4GiB"},
            "read": {k: v for k, v in (("budget", a.budget), ("threads", a.threads), ("max_window", a.window))
                     if v}}))
        unifs("mount", str(mp), "--config", str(cfg))
        pid = next(s["pid"] for s in json.loads(unifs("status", "--json")) if s["mountpoint"] == str(mp))
        base = vm(pid, "VmRSS")
        small = sorted((mp / "d/small").iterdir())

        def read(p):
            with open(p, "rb") as f:
                while f.read(1 << 20):
                    pass
        for epoch in (1, 2):
            subprocess.run(["sync"], check=True)
            Path("/proc/sys/vm/drop_caches").write_text("3\n")
            with ThreadPoolExecutor(8) as pool:
                list(pool.map(read, [mp / "d/big.bin"] + small))
            print(f"epoch {epoch}: daemon RSS now {vm(pid, 'VmRSS') / 2**20:.0f} MiB, "
                  f"peak {vm(pid, 'VmHWM') / 2**20:.0f} MiB")
        limit = parse_size(a.ram)
        peak = vm(pid, "VmHWM")
        print(f"RSS after mount {base / 2**20:.0f} MiB; peak {peak / 2**20:.0f} MiB; RAM tier {limit / 2**20:.0f} MiB; "
              f"peak - RAM tier = {(peak - limit) / 2**20:.0f} MiB "
              f"({'PASS' if peak <= limit + (150 << 20) else 'MISS'} target <= 150 MiB)")
    finally:
        subprocess.run([sys.executable, "-m", "unifs", "umount", "--force", str(mp)], capture_output=True)
        server.stop()
        if not os.path.ismount(mp):  # the server's data and the cache: a few GiB
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
