#!/usr/bin/env python3
"""Write ("close-to-durable") time of a unifs mount side by side with direct puts and rclone.

One run starts a local SeaweedFS S3 server and measures, in the same run and
against the same server:

  1. one big file (default 1 GiB) written sequentially with 1 MiB write()
     calls, then close(): time from open() until the object is in the store;
  2. a checkpoint directory (default 100 files of 1-20 MiB, ~500 MiB in all,
     random sizes from a fixed seed): mkdir, then each file written with 1 MiB
     write() calls and closed, one after the other (--dir-writers N for N
     writer threads): time until every file is in the store.

through these variants (--variants):

  unifs       a writable `unifs mount MP --config CFG` (staging dir in the work
              dir); close() returns once the object is in the store, so
              close-to-durable = open() .. close() returning. A HEAD right after
              close (outside the timing) checks that the object is there.
  fsspec      direct s3fs: `fs.put_file(local, remote)` for the big file,
              `fs.put(localdir, remote, recursive=True)` for the directory, from
              local files written before the timing (default s3fs settings)
  obstore     direct obstore (the fastest client here): `obstore.put(store, key,
              Path(local), chunk_size=8 MiB, max_concurrency=8)`, i.e. unifs'
              own upload settings; the directory with 8 threads, one file each
  rclone      `rclone mount --vfs-cache-mode writes` (defaults otherwise, so
              uploads start 5 s after close: --vfs-write-back 5s). close()
              returns before the upload, so close-to-durable = open() .. the
              object visible in the store with its full size (HEAD / listing
              polled every 20 ms after the last close); close time reported too
  rclone-wb0  the same with --vfs-write-back 0s (upload right after close)
  local       reference, not a target: the same write() calls to a plain file
              on the work dir's disk, no upload (what staging can at best do)

Before every measurement the page cache is dropped (`sync; echo 3 >
/proc/sys/vm/drop_caches`, needs root); the local source files of the direct
variants are then read back into the page cache, so the direct puts do not
pay for a cold disk that a checkpoint writer (writing from memory) would not
(--cold-source skips that). The data written through the mounts comes from
one preallocated random buffer; nothing is generated inside the timing. Each
mount (unifs, rclone) is fresh per measurement (unifs' staging directory is
empty each time, which is checked; rclone gets a new cache directory).

After every measurement (outside the timing) each object is checked in the
store: HEAD size and sha256 of a direct read against the source bytes. A
mismatch ends the run with exit status 3 (with --keep-going: the run goes on
and exits 3 at the end). Objects are deleted after their check.

Targets (issue 5): unifs close-to-durable <= 1.25x direct fsspec put and
<= rclone's close-to-durable, for both workloads.

    python benchmarks/write_bench.py [--size-mib 1024] [--files 100] [--dir-mib 500] [--dir-writers 1]
                                     [--repeat K] [--variants unifs,fsspec,obstore,rclone,rclone-wb0,local]
                                     [--workloads big,dir] [--write-back 5s] [--json FILE] [--keep-going]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Optional

import yaml

from peers import Rclone, S3Target, is_mounted, proc_cpu_seconds
from read_bench import (MIN_NOISE_SPAN, NOISE, Mount, VerificationError, drop_page_cache, log, remove_workdir,
                        unifs_cmd, write_json)
from unifs.config import MountEntry
from unifs.devstores.seaweed import SeaweedS3

MIB = 1 << 20
WRITE_CHUNK = MIB           # write() size through the mounts
OBSTORE_PART = 8 * MIB      # unifs' own multipart settings (unifs/stores/obstore_s3.py)
OBSTORE_CONCURRENCY = 8
OBSTORE_DIR_THREADS = 8
BUCKET = "bench"
MOUNT_PATH = "/bench"       # read_bench.Mount.root appends this
POLL_S = 0.02               # how often rclone's durability is polled
DURABLE_TIMEOUT_S = 900.0

VARIANTS = ("unifs", "fsspec", "obstore", "rclone", "rclone-wb0", "local")
TARGET_DIRECT = 1.25        # unifs close-to-durable <= 1.25x direct fsspec put
TARGET_RCLONE = 1.0         # ... and <= rclone's


def sha256(data) -> str:
    return hashlib.sha256(data).hexdigest()


def self_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


# --------------------------------------------------------------------------- data


def dir_sizes(n: int, total: int, lo: int, hi: int, seed: int) -> list[int]:
    """n random sizes in [lo, hi] bytes summing to about `total`, skewed towards small files as
    checkpoint shards are: lo + (hi - lo) * u**k with k chosen for the wanted mean, then scaled
    (by bisection, clamped to [lo, hi]) to hit the total."""
    rng = random.Random(seed)
    total = max(n * lo, min(n * hi, total))
    mean = total / n
    k = (hi - lo) / (mean - lo) - 1 if lo < mean < hi else 1.0
    raw = [rng.random() ** max(k, 0.05) for _ in range(n)]

    def sizes(f):
        return [int(min(hi, max(lo, lo + f * (hi - lo) * x))) for x in raw]
    a, b = 0.0, 64.0
    for _ in range(200):
        m = (a + b) / 2
        if sum(sizes(m)) < total:
            a = m
        else:
            b = m
    return sizes(b)


class Data:
    """One random buffer; the big file is its first size bytes, each checkpoint file a slice
    at its own offset. Local copies (for the direct puts) are written once, before any timing."""

    def __init__(self, big_size: int, n_files: int, dir_total: int, lo: int, hi: int, seed: int,
                 src: Path):
        self.big_size = big_size
        self.file_sizes = dir_sizes(n_files, dir_total, lo, hi, seed)
        self.buf_size = max(big_size, max(self.file_sizes, default=0))
        t0 = time.time()
        self.buf = bytearray(os.urandom(self.buf_size))
        self.mv = memoryview(self.buf)
        rng = random.Random(seed + 1)
        self.offsets = [rng.randrange(0, self.buf_size - s + 1) for s in self.file_sizes]
        self.big_sha = sha256(self.mv[:big_size])
        self.names = [f"shard_{i:03d}.bin" for i in range(n_files)]
        self.file_shas = [sha256(self.file(i)) for i in range(n_files)]
        log(f"random data: {self.buf_size / MIB:.0f} MiB buffer, {n_files} files of "
            f"{min(self.file_sizes) / MIB:.1f}-{max(self.file_sizes) / MIB:.1f} MiB "
            f"({self.dir_total / MIB:.0f} MiB) [{time.time() - t0:.1f} s]")
        self.src = src
        self.src_big = src / "big.bin"
        self.src_dir = src / "ckpt"
        self.src_dir.mkdir(parents=True, exist_ok=True)
        self.src_big.write_bytes(self.mv[:big_size])
        for i, name in enumerate(self.names):
            (self.src_dir / name).write_bytes(self.file(i))
        os.sync()

    @property
    def dir_total(self) -> int:
        return sum(self.file_sizes)

    def big(self) -> memoryview:
        return self.mv[:self.big_size]

    def file(self, i: int) -> memoryview:
        return self.mv[self.offsets[i]:self.offsets[i] + self.file_sizes[i]]


# --------------------------------------------------------------------------- caches


class Cache:
    def __init__(self, cold_source: bool):
        self.cold_source = cold_source
        self.can_drop = True

    def drop(self, warm: Optional[list] = None) -> None:
        """sync, drop the page cache, then read `warm` (files or directories) back in."""
        e = drop_page_cache()
        if e is not None:
            if self.can_drop:
                log(f"WARNING: cannot drop the page cache ({e.strerror}); run as root")
            self.can_drop = False
        if self.cold_source or not warm:
            return
        buf = bytearray(4 * MIB)
        for top in warm:
            files = [top] if os.path.isfile(top) else [os.path.join(r, n) for r, _, ns in os.walk(top) for n in ns]
            for p in files:
                with open(p, "rb", buffering=0) as f:
                    while f.readinto(buf):
                        pass


# --------------------------------------------------------------------------- writers


def write_file(path: str, data: memoryview, chunk: int = WRITE_CHUNK) -> tuple[float, float, float]:
    """open, write() in `chunk` calls, close. Returns perf_counter at open, after the last
    write() returned, after close() returned."""
    t0 = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        off, n = 0, len(data)
        while off < n:
            off += os.write(fd, data[off:off + chunk])
        t1 = time.perf_counter()
    except BaseException:
        os.close(fd)
        raise
    os.close(fd)
    return t0, t1, time.perf_counter()


def write_dir(root: str, data: Data, writers: int) -> dict:
    """mkdir root/ckpt, write and close every file. Returns timings (perf_counter based)."""
    d = os.path.join(root, "ckpt")
    t0 = time.perf_counter()
    os.mkdir(d)

    def one(i):
        return write_file(os.path.join(d, data.names[i]), data.file(i))
    if writers <= 1:
        spans = [one(i) for i in range(len(data.names))]
    else:
        with ThreadPoolExecutor(writers) as pool:
            spans = list(pool.map(one, range(len(data.names))))
    t_end = time.perf_counter()
    return {"start": t0, "closed": t_end,
            "write_sum_s": sum(b - a for a, b, _ in spans),
            "close_sum_s": sum(c - b for _, b, c in spans),
            "close_max_s": max((c - b for _, b, c in spans), default=0.0)}


# --------------------------------------------------------------------------- store checks


class Store:
    """Direct obstore access for HEADs, polling, verification and cleanup (never timed,
    except rclone's durability polling, which is what that measurement is)."""

    def __init__(self, server: SeaweedS3):
        self.server = server
        self.store = server.obstore(BUCKET)

    def size(self, key: str) -> Optional[int]:
        import obstore

        try:
            return obstore.head(self.store, key)["size"]
        except FileNotFoundError:
            return None

    def sizes(self, prefix: str) -> dict[str, int]:
        import obstore

        return {o["path"]: o["size"] for chunk in obstore.list(self.store, prefix.rstrip("/") + "/")
                for o in chunk}

    def wait_size(self, key: str, size: int, timeout: float = DURABLE_TIMEOUT_S) -> float:
        deadline = time.perf_counter() + timeout
        while True:
            try:
                got = self.size(key)
            except Exception:  # noqa: BLE001 - the server may answer 5xx while completing a multipart
                got = None
            now = time.perf_counter()
            if got == size:
                return now
            if now > deadline:
                raise RuntimeError(f"{key}: not in the store with {size} bytes after {timeout:.0f} s (HEAD: {got})")
            time.sleep(POLL_S)

    def wait_all(self, prefix: str, expected: dict[str, int], timeout: float = DURABLE_TIMEOUT_S) -> float:
        deadline = time.perf_counter() + timeout
        while True:
            try:
                got = self.sizes(prefix)
            except Exception:  # noqa: BLE001
                got = {}
            now = time.perf_counter()
            if all(got.get(k) == v for k, v in expected.items()):
                return now
            if now > deadline:
                missing = [k for k, v in expected.items() if got.get(k) != v]
                raise RuntimeError(f"{prefix}: {len(missing)} object(s) not in the store after {timeout:.0f} s, "
                                   f"e.g. {missing[:3]}")
            time.sleep(POLL_S)

    def verify(self, who: str, expected: dict[str, tuple[int, str]]) -> None:
        """HEAD size and sha256 of a full direct read of every key; then exactly these keys under
        their prefix."""
        import obstore

        def one(item):
            key, (size, digest) = item
            got = self.size(key)
            if got != size:
                return f"{key}: HEAD size {got}, expected {size}"
            h = hashlib.sha256(memoryview(obstore.get(self.store, key).bytes())).hexdigest()
            if h != digest:
                return f"{key}: sha256 {h[:16]}.., expected {digest[:16]}.."
            return None
        with ThreadPoolExecutor(4) as pool:
            bad = [x for x in pool.map(one, expected.items()) if x]
        if bad:
            raise VerificationError(f"{who}: {len(bad)} object(s) wrong: {'; '.join(bad[:3])}")

    def delete_prefix(self, prefix: str) -> None:
        import obstore

        keys = list(self.sizes(prefix))
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda k: obstore.delete(self.store, k), keys))


# --------------------------------------------------------------------------- rclone


def RcloneWrites(name: str, workdir: Path, target: S3Target, write_back: Optional[str]) -> Rclone:
    """`rclone mount --vfs-cache-mode writes [--vfs-write-back D]`, writable."""
    extra = ("--vfs-write-back", write_back) if write_back is not None else ()
    return Rclone(workdir, target, "writes", read_only=False, extra=extra, name=name)


# --------------------------------------------------------------------------- variants


class Ctx:
    def __init__(self, args, workdir: Path, server: SeaweedS3, store: Store, data: Data, cache: Cache):
        self.args = args
        self.workdir = workdir
        self.server = server
        self.store = store
        self.data = data
        self.cache = cache
        self.config: Optional[Path] = None
        self.write_back = 5.0  # the mount entry's write_back (unifs' default unless --write-back)
        self.oddities: list[str] = []

    def server_cpu(self) -> float:
        return proc_cpu_seconds(self.server.proc.pid if self.server.proc else None)


def expected_big(prefix: str, data: Data) -> dict:
    return {f"{prefix}/big.bin": (data.big_size, data.big_sha)}


def expected_dir(prefix: str, data: Data) -> dict:
    return {f"{prefix}/ckpt/{n}": (s, h) for n, s, h in zip(data.names, data.file_sizes, data.file_shas)}


def run_unifs(ctx: Ctx, workload: str, prefix: str) -> dict:
    mp = ctx.workdir / "mnt-unifs"
    m = Mount(mp, ctx.config)
    ctx.cache.drop()
    with m:
        root = os.path.join(m.root, prefix)
        os.makedirs(root, exist_ok=True)  # a directory in the daemon only, until a file lands in it
        c_fuse, c_srv, c_self = m.cpu_seconds(), ctx.server_cpu(), self_cpu()
        if workload == "big":
            dt, (t0, t1, t2) = NOISE.measure(lambda: write_file(os.path.join(root, "big.bin"), ctx.data.big()))
            out = {"durable_s": t2 - t0, "write_s": t1 - t0, "close_s": t2 - t1}
            if t1 - t0 >= ctx.write_back:
                ctx.oddities.append(
                    f"unifs (big): the write() phase lasted {t1 - t0:.1f} s >= write_back {ctx.write_back:g} s, so "
                    "the daemon's write-back may have uploaded the still-open file partly and close() then "
                    "waited for that upload before uploading the whole file")
        else:
            dt, r = NOISE.measure(lambda: write_dir(root, ctx.data, ctx.args.dir_writers))
            out = {"durable_s": r["closed"] - r["start"], "write_s": r["write_sum_s"], "close_s": r["close_sum_s"],
                   "close_max_s": r["close_max_s"]}
        out["closed_s"] = out["durable_s"]
        out.update(fuse_cpu_s=m.cpu_seconds() - c_fuse, server_cpu_s=ctx.server_cpu() - c_srv,
                   self_cpu_s=self_cpu() - c_self)
        # close() returned: the objects must be in the store now, before the unmount (which
        # would wait for pending uploads and hide an early return)
        exp = expected_big(prefix, ctx.data) if workload == "big" else expected_dir(prefix, ctx.data)
        sizes = ctx.store.sizes(prefix)
        early = [k for k, (s, _) in exp.items() if sizes.get(k) != s]
        if early:
            raise VerificationError(f"unifs: close() returned but {len(early)} object(s) are not in the store "
                                    f"with their size, e.g. {early[:3]} (HEAD/list: "
                                    f"{[sizes.get(k) for k in early[:3]]})")
        # and the mount itself reports the sizes
        for k, (s, _) in list(exp.items())[:5] + list(exp.items())[-1:]:
            st = os.stat(os.path.join(m.root, k))
            if st.st_size != s:
                raise VerificationError(f"unifs: stat {k} through the mount says {st.st_size} bytes, expected {s}")
    # the staging area's lock file stays on purpose (the next daemon of the mount point takes it)
    leftovers = [str(p) for p in (ctx.workdir / "staging").rglob("*") if p.is_file() and p.name != ".lock"]
    if leftovers:
        ctx.oddities.append(f"unifs ({workload}): {len(leftovers)} file(s) left in the staging dir after "
                            f"umount, e.g. {leftovers[:2]}")
    return out


def run_rclone(ctx: Ctx, workload: str, prefix: str, name: str, write_back: Optional[str]) -> dict:
    srv = ctx.server
    peer = RcloneWrites(name, ctx.workdir / "peers", S3Target(srv.endpoint, srv.access_key, srv.secret_key, BUCKET),
                        write_back)
    ctx.cache.drop()
    try:
        peer.start(ctx.workdir / f"mnt-{name}")
        NOISE.own.add(peer.pid)
        NOISE.own_groups.add(peer.pid)
        root = os.path.join(peer.root, prefix)
        os.makedirs(root, exist_ok=True)
        c_fuse, c_srv, c_self = peer.cpu_seconds(), ctx.server_cpu(), self_cpu()
        if workload == "big":
            key = f"{prefix}/big.bin"

            def run():
                t0, t1, t2 = write_file(os.path.join(root, "big.bin"), ctx.data.big())
                return t0, t1, t2, ctx.store.wait_size(key, ctx.data.big_size)
            dt, (t0, t1, t2, t3) = NOISE.measure(run)
            out = {"durable_s": t3 - t0, "write_s": t1 - t0, "close_s": t2 - t1, "closed_s": t2 - t0}
        else:
            exp = {k: s for k, (s, _) in expected_dir(prefix, ctx.data).items()}

            def run():
                r = write_dir(root, ctx.data, ctx.args.dir_writers)
                return r, ctx.store.wait_all(f"{prefix}/ckpt", exp)
            dt, (r, t3) = NOISE.measure(run)
            out = {"durable_s": t3 - r["start"], "write_s": r["write_sum_s"], "close_s": r["close_sum_s"],
                   "closed_s": r["closed"] - r["start"], "close_max_s": r["close_max_s"]}
        out.update(fuse_cpu_s=peer.cpu_seconds() - c_fuse, server_cpu_s=ctx.server_cpu() - c_srv,
                   self_cpu_s=self_cpu() - c_self)
    finally:
        peer.stop()
    return out


def new_s3fs(ctx: Ctx):
    import s3fs

    srv = ctx.server
    fs = s3fs.S3FileSystem(endpoint_url=srv.endpoint, key=srv.access_key, secret=srv.secret_key,
                           skip_instance_cache=True)
    fs.ls(BUCKET)  # session and connection set up outside the timing
    return fs


def run_fsspec(ctx: Ctx, workload: str, prefix: str) -> dict:
    ctx.cache.drop([str(ctx.data.src_big if workload == "big" else ctx.data.src_dir)])
    fs = new_s3fs(ctx)
    c_srv, c_self = ctx.server_cpu(), self_cpu()
    if workload == "big":
        dt, _ = NOISE.measure(lambda: fs.put_file(str(ctx.data.src_big), f"{BUCKET}/{prefix}/big.bin"))
    else:
        dt, _ = NOISE.measure(lambda: fs.put(str(ctx.data.src_dir), f"{BUCKET}/{prefix}/ckpt", recursive=True))
    return {"durable_s": dt, "server_cpu_s": ctx.server_cpu() - c_srv, "self_cpu_s": self_cpu() - c_self}


def run_obstore(ctx: Ctx, workload: str, prefix: str) -> dict:
    import obstore

    ctx.cache.drop([str(ctx.data.src_big if workload == "big" else ctx.data.src_dir)])
    store = ctx.server.obstore(BUCKET)
    obstore.list_with_delimiter(store, prefix)  # connection set up outside the timing

    def put(key, path):
        obstore.put(store, key, Path(path), chunk_size=OBSTORE_PART, max_concurrency=OBSTORE_CONCURRENCY)
    c_srv, c_self = ctx.server_cpu(), self_cpu()
    if workload == "big":
        dt, _ = NOISE.measure(lambda: put(f"{prefix}/big.bin", ctx.data.src_big))
    else:
        def run():
            with ThreadPoolExecutor(OBSTORE_DIR_THREADS) as pool:
                list(pool.map(lambda n: put(f"{prefix}/ckpt/{n}", ctx.data.src_dir / n), ctx.data.names))
        dt, _ = NOISE.measure(run)
    return {"durable_s": dt, "server_cpu_s": ctx.server_cpu() - c_srv, "self_cpu_s": self_cpu() - c_self}


def run_local(ctx: Ctx, workload: str, prefix: str) -> dict:
    root = ctx.workdir / "localref" / prefix
    root.mkdir(parents=True, exist_ok=True)
    ctx.cache.drop()
    c_self = self_cpu()
    try:
        if workload == "big":
            dt, (t0, t1, t2) = NOISE.measure(lambda: write_file(str(root / "big.bin"), ctx.data.big()))
            out = {"durable_s": t2 - t0, "write_s": t1 - t0, "close_s": t2 - t1}
        else:
            dt, r = NOISE.measure(lambda: write_dir(str(root), ctx.data, ctx.args.dir_writers))
            out = {"durable_s": r["closed"] - r["start"], "write_s": r["write_sum_s"], "close_s": r["close_sum_s"]}
        out["closed_s"] = out["durable_s"]
        out["self_cpu_s"] = self_cpu() - c_self
    finally:
        shutil.rmtree(ctx.workdir / "localref", ignore_errors=True)
    return out


RUNNERS: dict[str, Callable] = {
    "unifs": run_unifs,
    "fsspec": run_fsspec,
    "obstore": run_obstore,
    "rclone": lambda ctx, w, p: run_rclone(ctx, w, p, "rclone", None),
    "rclone-wb0": lambda ctx, w, p: run_rclone(ctx, w, p, "rclone-wb0", "0s"),
    "local": run_local,
}


# --------------------------------------------------------------------------- results


class Results:
    def __init__(self):
        self.samples: dict[str, dict[str, list[dict]]] = {"big": {}, "dir": {}}
        self.failed: dict[str, str] = {}
        self.wrong_bytes: list[str] = []

    def add(self, workload: str, variant: str, sample: dict) -> None:
        self.samples[workload].setdefault(variant, []).append(sample)

    def best(self, workload: str, variant: str) -> Optional[dict]:
        """The run with the smallest close-to-durable time (its phases come with it)."""
        runs = self.samples[workload].get(variant)
        return min(runs, key=lambda s: s["durable_s"]) if runs else None


def fmt(v: Optional[float], unit: str) -> str:
    if v is None:
        return "-"
    return f"{v:.2f}" if unit == "s" else f"{v:.1f}"


def report(args, data: Data, res: Results, variants: list[str], ctx: Ctx) -> dict:
    cols = [v for v in variants]
    w = max(11, max(len(c) for c in cols) + 2)
    others = [v for v in ("fsspec", "obstore", "rclone", "rclone-wb0", "local") if v in cols and v != "unifs"]
    big_label = f"{data.big_size / MIB:.0f} MiB file"
    dir_label = f"dir {len(data.names)} files {data.dir_total / MIB:.0f} MiB"
    wl = {"big": (big_label, data.big_size), "dir": (dir_label, data.dir_total)}

    done = [wk for wk in ("big", "dir") if res.samples[wk]]

    def best(wk, v, field):
        b = res.best(wk, v)
        return None if b is None else b.get(field)

    rows = []  # (title, unit, {variant: value})
    for wk in done:
        label, nbytes = wl[wk]
        rows.append((f"{label}: close-to-durable", "s", {v: best(wk, v, "durable_s") for v in cols}))
        rows.append((f"{label}: close-to-durable", "MiB/s",
                     {v: (nbytes / MIB / best(wk, v, "durable_s")) if best(wk, v, "durable_s") else None
                      for v in cols}))
        what = "write() phase" if wk == "big" else "sum of write() phases"
        rows.append((f"  {what}", "s", {v: best(wk, v, "write_s") for v in cols}))
        what = "close()" if wk == "big" else "sum of close()s"
        rows.append((f"  {what}", "s", {v: best(wk, v, "close_s") for v in cols}))
        rows.append(("  open .. last close returned", "s", {v: best(wk, v, "closed_s") for v in cols}))
        rows.append(("  FUSE server CPU", "s", {v: best(wk, v, "fuse_cpu_s") for v in cols}))
        rows.append(("  SeaweedFS CPU", "s", {v: best(wk, v, "server_cpu_s") for v in cols}))
        rows.append(("  writer/client process CPU", "s", {v: best(wk, v, "self_cpu_s") for v in cols}))

    header = f"{'measurement':<44}{'unit':>6}" + "".join(f"{c:>{w}}" for c in cols)
    lines = [header, "-" * len(header)]
    for title, unit, vals in rows:
        if all(vals.get(c) is None for c in cols):
            continue
        lines.append(f"{title:<44}{unit:>6}" + "".join(f"{fmt(vals.get(c), unit):>{w}}" for c in cols))

    ratio_lines = []
    ratios: dict[str, dict[str, Optional[float]]] = {}
    if "unifs" in cols and others:
        header = f"{'unifs time / other time (< 1: unifs faster)':<50}" + "".join(f"{o:>{w}}" for o in others)
        ratio_lines = [header, "-" * len(header)]
        for wk in done:
            u = best(wk, "unifs", "durable_s")
            ratios[wk] = {o: (u / best(wk, o, "durable_s")) if u and best(wk, o, "durable_s") else None
                          for o in others}
            ratio_lines.append(f"{wl[wk][0] + ': close-to-durable':<50}" +
                               "".join(f"{(f'{r:.2f}x' if r else '-'):>{w}}" for r in ratios[wk].values()))

    targets = []
    for wk in done:
        label = wl[wk][0]
        r = ratios.get(wk, {})
        if "fsspec" in r:
            v = r["fsspec"]
            targets.append((f"{label}: unifs <= {TARGET_DIRECT}x direct fsspec put",
                            v is not None and v <= TARGET_DIRECT, v))
        if "rclone" in r:
            v = r["rclone"]
            targets.append((f"{label}: unifs <= rclone (writes, default)", v is not None and v <= TARGET_RCLONE, v))

    print()
    print(f"write benchmark: SeaweedFS on 127.0.0.1, best of {args.repeat} (smallest close-to-durable; "
          f"its phases shown)")
    print(f"big file: {data.big_size / MIB:.0f} MiB, {WRITE_CHUNK // 1024} KiB write() calls; checkpoint dir: "
          f"{len(data.names)} files of {min(data.file_sizes) / MIB:.1f}-{max(data.file_sizes) / MIB:.1f} MiB, "
          f"{data.dir_total / MIB:.0f} MiB, {args.dir_writers} writer thread(s)")
    print()
    print("\n".join(lines))
    if ratio_lines:
        print()
        print("\n".join(ratio_lines))
    print()
    print("targets:")
    for text, ok, v in targets:
        print(f"  {'PASS' if ok else 'MISS'}  {text:<56} {f'{v:.2f}x' if v is not None else 'no data'}")
    print()
    notes = {
        "unifs": "unifs: close() returns once the object is in the store (checked by a HEAD right after)",
        "fsspec": "fsspec: s3fs put_file / put(recursive=True) of local files (page-cached), default settings",
        "obstore": f"obstore: put(Path, chunk_size={OBSTORE_PART // MIB} MiB, max_concurrency={OBSTORE_CONCURRENCY}) "
                   f"(unifs' settings); dir: {OBSTORE_DIR_THREADS} threads",
        "rclone": "rclone: mount --vfs-cache-mode writes (default --vfs-write-back 5s); close-to-durable = "
                  "until the store has the object(s) with full size (polled every "
                  f"{POLL_S * 1000:.0f} ms)",
        "rclone-wb0": "rclone-wb0: the same with --vfs-write-back 0s",
        "local": "local: the same write() calls to a plain file on the work dir's disk, no upload (reference)",
    }
    for v in cols:
        print(notes[v])
    shares = []
    for wk in done:
        for v in cols:
            b = res.best(wk, v)
            if b and b.get("noise") is not None and b["noise"] >= 0.05:
                shares.append(f"{wk}.{v} {b['noise']:.0%}")
    print(f"other processes' CPU while timing (share of all cores, runs >= {MIN_NOISE_SPAN:.0f} s): " +
          (", ".join(shares) if shares else "< 5% everywhere"))
    for v, why in res.failed.items():
        print(f"{v}: FAILED: {why}")
    for o in ctx.oddities:
        print(f"NOTE: {o}")
    if not ctx.cache.can_drop:
        print("WARNING: the page cache could not be dropped")
    return {"rows": [{"measurement": t, "unit": u, **{c: vals.get(c) for c in cols}} for t, u, vals in rows],
            "ratios_unifs_time_over": ratios,
            "targets": [{"target": t, "pass": ok, "ratio": v} for t, ok, v in targets]}


# --------------------------------------------------------------------------- main


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-mib", type=int, default=1024, help="size of the big file in MiB (default 1024)")
    ap.add_argument("--files", type=int, default=100, help="files in the checkpoint directory (default 100)")
    ap.add_argument("--dir-mib", type=int, default=500, help="total size of the checkpoint directory (default 500)")
    ap.add_argument("--min-file-mib", type=float, default=1.0, help="smallest checkpoint file (default 1)")
    ap.add_argument("--max-file-mib", type=float, default=20.0, help="largest checkpoint file (default 20)")
    ap.add_argument("--dir-writers", type=int, default=1,
                    help="threads writing the checkpoint files through a mount (default 1: one after the other)")
    ap.add_argument("--variants", default=",".join(VARIANTS),
                    help=f"comma-separated, in this order of columns: {','.join(VARIANTS)} (default all)")
    ap.add_argument("--workloads", default="big,dir", help="big, dir or both (default big,dir)")
    ap.add_argument("--write-back", default=None,
                    help="set the unifs mount entry's write_back (default: leave it out, i.e. unifs' default)")
    ap.add_argument("--repeat", type=int, default=1, help="best of K runs of every measurement (default 1)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the checkpoint file sizes")
    ap.add_argument("--cold-source", action="store_true",
                    help="do not read the direct puts' local source files back into the page cache after a drop")
    ap.add_argument("--keep-going", action="store_true",
                    help="a variant that fails (error or wrong bytes) is reported and left out of the rest of "
                         "the run instead of ending it")
    ap.add_argument("--json", metavar="FILE", help="write the results as JSON")
    ap.add_argument("--workdir", help="server data, staging, sources and mount points (default: a new temp dir)")
    ap.add_argument("--keep-workdir", action="store_true", help="do not delete the work directory")
    args = ap.parse_args(argv)
    if args.repeat < 1 or args.size_mib < 1 or args.files < 1 or args.dir_writers < 1:
        ap.error("--repeat, --size-mib, --files and --dir-writers must be >= 1")
    if not 0 < args.min_file_mib <= args.max_file_mib:
        ap.error("need 0 < --min-file-mib <= --max-file-mib")
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or not variants:
        ap.error(f"unknown variant(s) {unknown}; known: {', '.join(VARIANTS)}")
    variants = [v for v in VARIANTS if v in variants]
    workloads = [w for w in ("big", "dir") if w in {x.strip() for x in args.workloads.split(",")}]
    if not workloads:
        ap.error("--workloads: big, dir or big,dir")
    res = Results()
    for v in list(variants):
        if v.startswith("rclone") and Rclone.missing():
            log(f"{v} skipped: {Rclone.missing()}")
            res.failed[v] = f"skipped: {Rclone.missing()}"
            variants.remove(v)

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    own_workdir = args.workdir is None
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="unifs-wbench-")).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    server = SeaweedS3(str(workdir / "seaweed"))
    rc = 0
    started = time.time()
    mountpoints = [workdir / "mnt-unifs"] + [workdir / f"mnt-{v}" for v in variants if v.startswith("rclone")]
    try:
        log(f"starting SeaweedFS in {workdir}")
        server.start()
        server.create_bucket(BUCKET)
        NOISE.own.add(server.proc.pid)
        NOISE.own_groups.add(server.proc.pid)
        log(f"S3 endpoint {server.endpoint}")
        data = Data(args.size_mib * MIB, args.files, args.dir_mib * MIB, int(args.min_file_mib * MIB),
                    int(args.max_file_mib * MIB), args.seed, workdir / "src")
        entry = {"path": MOUNT_PATH, "url": f"s3://{BUCKET}", "options": server.mount_options()}
        if args.write_back is not None:
            entry["write_back"] = args.write_back
        cfg = workdir / "mounts.yaml"
        cfg.write_text(yaml.safe_dump({"mounts": [entry], "write": {"staging_dir": str(workdir / "staging")}},
                                      sort_keys=False))
        os.chmod(cfg, 0o600)
        store = Store(server)
        ctx = Ctx(args, workdir, server, store, data, Cache(args.cold_source))
        ctx.config = cfg
        ctx.write_back = MountEntry(path=MOUNT_PATH, url=f"s3://{BUCKET}", **(
            {"write_back": args.write_back} if args.write_back is not None else {})).write_back

        for k in range(args.repeat):
            log(f"--- run {k + 1} of {args.repeat}")
            for workload in workloads:
                for v in list(variants):
                    if v in res.failed:
                        continue
                    prefix = f"{v}/r{k}{workload}"
                    try:
                        sample = RUNNERS[v](ctx, workload, prefix)
                        sample["noise"] = NOISE.last_share
                        if v != "local":
                            exp = expected_big(prefix, data) if workload == "big" else expected_dir(prefix, data)
                            t0 = time.time()
                            store.verify(v, exp)
                            extra = set(store.sizes(prefix)) - set(exp)
                            if extra:
                                raise VerificationError(f"{v}: unexpected object(s) in the store: {sorted(extra)[:3]}")
                            sample["verify_s"] = time.time() - t0
                    except VerificationError as e:
                        log(f"{v} ({workload}): WRONG: {e}")
                        res.wrong_bytes.append(f"{v} ({workload}): {e}")
                        res.failed[v] = f"wrong bytes or sizes: {e}"
                        if not args.keep_going:
                            raise
                        continue
                    except Exception as e:  # noqa: BLE001 - a failing variant is reported
                        if not args.keep_going:
                            raise
                        log(f"{v} ({workload}): FAILED: {e}\n{traceback.format_exc()}")
                        res.failed[v] = f"{type(e).__name__}: {e}"
                        continue
                    finally:
                        if v != "local":
                            try:
                                store.delete_prefix(prefix)
                            except Exception as e:  # noqa: BLE001
                                log(f"cleanup of {prefix} failed: {e}")
                    res.add(workload, v, sample)
                    phases = "  ".join(f"{key[:-2]} {val:.2f}" for key, val in sample.items()
                                       if key.endswith("_s") and key not in ("durable_s",) and val == val)
                    log(f"{workload:<3} {v:<10} close-to-durable {sample['durable_s']:7.2f} s   ({phases})")

        out = report(args, data, res, variants, ctx)
        if res.wrong_bytes:
            rc = 3
        elif res.failed and any(not why.startswith("skipped") for why in res.failed.values()):
            rc = 1
        elapsed = time.time() - started
        print(f"\ntotal time {elapsed:.0f} s")
        if args.json:
            config = {"size_mib": args.size_mib, "files": args.files, "dir_mib": args.dir_mib,
                      "file_sizes": data.file_sizes, "dir_total_bytes": data.dir_total,
                      "dir_writers": args.dir_writers, "variants": variants,
                      "workloads": workloads, "repeat": args.repeat,
                      "write_chunk": WRITE_CHUNK, "write_back": args.write_back or "unifs default",
                      "obstore_part": OBSTORE_PART, "obstore_concurrency": OBSTORE_CONCURRENCY,
                      "cold_source": args.cold_source, "seed": args.seed}
            write_json(args.json, config, {"page_cache_dropped": ctx.cache.can_drop, "samples": res.samples,
                                           "failed": res.failed, "wrong_bytes": res.wrong_bytes,
                                           "oddities": ctx.oddities}, elapsed, out)
    except VerificationError as e:
        print(f"\nFAILED: wrong bytes or sizes: {e}", file=sys.stderr, flush=True)
        rc = 3
    finally:
        for mp in mountpoints:
            if is_mounted(mp):
                log(f"cleanup: {mp} still mounted, unmounting")
                if mp.name == "mnt-unifs":
                    subprocess.run(unifs_cmd() + ["umount", str(mp)], capture_output=True, timeout=300)
                if is_mounted(mp):
                    subprocess.run(["fusermount", "-uz", str(mp)], capture_output=True)
        server.stop()
        remove_workdir(workdir, mountpoints, own_workdir and not args.keep_workdir)
    return rc


if __name__ == "__main__":
    sys.exit(main())
