#!/usr/bin/env python3
"""Warm small files: a unifs mount of a local SeaweedFS against the Python passthrough ceiling
(benchmarks/passthrough_bench.py over a local copy), alternating in rounds on one machine.

Each round mounts both afresh, reads 2,000 x 100 KiB once cold, then three warm passes (8 reader
threads, listing order), and prints the warm files/s of each and the ratio of their medians.
read_bench.py's single warm pass right after the cold one varies a lot between repeats; this
takes more samples of the same thing.

    python benchmarks/warm_small_bench.py [--rounds 4] [--files 2000] [--kib 100] [-o max_threads=N]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from peers import Passthrough  # noqa: E402
from unifs.devstores.seaweed import SeaweedS3  # noqa: E402


def drop_page_cache() -> None:
    subprocess.run(["sync"], check=True)
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def read_all(root: Path) -> float:
    """files/s reading every file under root whole, 8 threads."""
    names = sorted(os.listdir(root))

    def one(name):
        with open(root / name, "rb") as f:
            return len(f.read())
    started = time.perf_counter()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, names))
    return len(names) / (time.perf_counter() - started)


def unifs(*args) -> None:
    subprocess.run([sys.executable, "-m", "unifs", *args], check=True, capture_output=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--files", type=int, default=2000)
    ap.add_argument("--kib", type=int, default=100)
    ap.add_argument("-o", dest="options", action="append", default=[], help="unifs mount -o option")
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="unifs-warm-"))
    server = SeaweedS3(str(work / "s3")).start()
    try:
        server.create_bucket("warm")
        data = {f"small/f{i:05d}": os.urandom(a.kib * 1024) for i in range(a.files)}
        server.put_many("warm", data)
        (work / "local/small").mkdir(parents=True)
        for key, blob in data.items():
            (work / "local" / key).write_bytes(blob)
        ratios = []
        for r in range(a.rounds):
            mp = work / f"unifs{r}"
            mp.mkdir()
            cfg = work / "mounts.yaml"
            cfg.write_text(yaml.safe_dump({
                "mounts": [{"path": "/d", "url": "s3://warm", "read_only": True, "options": server.mount_options()}],
                "cache": {"dir": str(work / f"cache{r}")}, "write": {"staging_dir": str(work / "staging")}}))
            unifs("mount", str(mp), "--config", str(cfg), *[x for o in a.options for x in ("-o", o)])
            try:
                drop_page_cache()
                read_all(mp / "d/small")
                u = [read_all(mp / "d/small") for _ in range(3)]
            finally:
                unifs("umount", str(mp))
            pt = Passthrough(work / f"pt{r}", work / "local")
            pmp = work / f"pt-mnt{r}"
            pmp.mkdir()
            pt.start(pmp)
            try:
                drop_page_cache()
                read_all(work / "local/small")  # its source back in the page cache, as a store's would be
                read_all(pmp / "small")
                p = [read_all(pmp / "small") for _ in range(3)]
            finally:
                pt.stop()
            ratio = statistics.median(u) / statistics.median(p)
            ratios.append(ratio)
            print(f"round {r}: unifs warm {', '.join(f'{x:,.0f}' for x in u)} files/s; "
                  f"passthrough {', '.join(f'{x:,.0f}' for x in p)}; ratio of medians {ratio:.2f}", flush=True)
        print(f"unifs / passthrough, warm small files: {min(ratios):.2f}-{max(ratios):.2f} "
              f"({'PASS' if min(ratios) >= 0.9 else 'MISS'} target >= 0.9x)")
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
