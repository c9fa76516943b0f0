#!/usr/bin/env python3
"""What dataset prefetch wins: small files read whole, in listing order, by one reader
(a DataLoader without workers, `cp -r`, a checksum pass), through a fresh unifs mount with
`prefetch: true` and with `prefetch: false`, alternating, page cache dropped before each.

    python benchmarks/prefetch_bench.py [--files 1000] [--size-kib 100] [--repeat 3]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from unifs.devstores.seaweed import SeaweedS3


def unifs(*args):
    subprocess.run([sys.executable, "-m", "unifs", *args], check=True, capture_output=True)


def epoch(root: Path, want: dict) -> float:
    subprocess.run(["sync"], check=True)
    Path("/proc/sys/vm/drop_caches").write_text("3\n")
    t = time.perf_counter()
    names = sorted(os.listdir(root))
    for n in names:
        with open(root / n, "rb") as f:
            if hashlib.sha256(f.read()).hexdigest() != want[n]:
                sys.exit(f"checksum mismatch: {n}")
    return len(names) / (time.perf_counter() - t)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=1000)
    ap.add_argument("--size-kib", type=int, default=100)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="unifs-prefetch-"))
    server = SeaweedS3(str(work / "s3")).start()
    try:
        server.create_bucket("bench")
        blobs = {f"imgs/img_{i:06d}.jpg": os.urandom(a.size_kib * 1024) for i in range(a.files)}
        server.put_many("bench", blobs)
        want = {k.split("/")[1]: hashlib.sha256(v).hexdigest() for k, v in blobs.items()}
        best = {True: 0.0, False: 0.0}
        for _ in range(a.repeat):
            for prefetch in (True, False):
                mp = work / f"mnt-{prefetch}"
                mp.mkdir(exist_ok=True)
                cfg = work / "mounts.yaml"
                cfg.write_text(yaml.safe_dump({
                    "mounts": [{"path": "/d", "url": "s3://bench/imgs", "read_only": True, "prefetch": prefetch,
                                "options": server.mount_options()}],
                    "cache": {"dir": str(work / "cache"), "mode": "ram"}}))
                unifs("mount", str(mp), "--config", str(cfg))
                try:
                    best[prefetch] = max(best[prefetch], epoch(mp / "d", want))
                finally:
                    unifs("umount", str(mp))
        print(f"{a.files} x {a.size_kib} KiB, one reader in listing order, cold, best of {a.repeat}:")
        print(f"  prefetch on   {best[True]:8.0f} files/s")
        print(f"  prefetch off  {best[False]:8.0f} files/s")
        print(f"  ratio         {best[True] / best[False]:8.2f}x")
    finally:
        server.stop()
        if not any(os.path.ismount(work / f"mnt-{p}") for p in (True, False)):
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
