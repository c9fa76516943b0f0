#!/usr/bin/env python3
"""Throughput of a minimal read-only Python FUSE passthrough: fusepy vs mfusepy.

Creates a source tree (one big file, many small files), then for each variant
mounts it with a passthrough filesystem served by a subprocess of this script
and measures:

  * big file, cold (page cache dropped) and warm (kernel_cache), in MiB/s;
  * all small files read whole by 8 threads, cold and warm, in files/s.

The same numbers are taken directly on the source tree as a reference.
Dropping the page cache needs root (writes /proc/sys/vm/drop_caches).

    python benchmarks/passthrough_bench.py [--repeat K] [--big-mib N] ...

Internal server mode (one binding per interpreter, so libraries never clash):

    python passthrough_bench.py --serve MODULE SRC MOUNTPOINT OPTIONS
"""

from __future__ import annotations

import argparse
import ctypes.util
import errno
import hashlib
import importlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

MIB = 1 << 20
READ_CHUNK = MIB
SMALL_THREADS = 8
COMMON_OPTIONS = "ro,kernel_cache,attr_timeout=60,entry_timeout=60"
COLUMNS = ("big cold MiB/s", "big warm MiB/s", "small cold files/s", "small warm files/s")


# --------------------------------------------------------------------------- server


def make_operations(fuse_module):
    """Build the passthrough Operations class on top of `fuse_module.Operations`."""

    class Passthrough(fuse_module.Operations):
        use_ns = True  # mfusepy warns otherwise; times below are in ns

        def __init__(self, root: str):
            self.root = root
            self.read_calls = 0  # approximate (unlocked), diagnostic only
            self.read_bytes = 0

        def _full(self, path: str) -> str:
            return self.root + path

        def getattr(self, path, fh=None):
            st = os.lstat(self._full(path))
            return {
                "st_mode": st.st_mode,
                "st_nlink": st.st_nlink,
                "st_uid": st.st_uid,
                "st_gid": st.st_gid,
                "st_size": st.st_size,
                "st_atime": st.st_atime_ns,
                "st_mtime": st.st_mtime_ns,
                "st_ctime": st.st_ctime_ns,
            }

        def readdir(self, path, fh):
            return [".", "..", *os.listdir(self._full(path))]

        def open(self, path, flags):
            if flags & (os.O_WRONLY | os.O_RDWR):
                raise fuse_module.FuseOSError(errno.EROFS)
            return os.open(self._full(path), os.O_RDONLY)

        def read(self, path, size, offset, fh):
            data = os.pread(fh, size, offset)
            self.read_calls += 1
            self.read_bytes += len(data)
            return data

        def release(self, path, fh):
            os.close(fh)
            return 0

        def statfs(self, path):
            sv = os.statvfs(self._full(path))
            return {k: getattr(sv, k) for k in (
                "f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail",
                "f_files", "f_ffree", "f_favail", "f_flag", "f_namemax")}

        def destroy(self, path):
            avg_kib = self.read_bytes / max(self.read_calls, 1) / 1024
            print(f"[server] read calls: {self.read_calls}, avg {avg_kib:.0f} KiB/call",
                  file=sys.stderr, flush=True)

    return Passthrough


def serve(module_name: str, src: str, mountpoint: str, options: str) -> None:
    fuse_module = importlib.import_module(module_name)
    print(f"[server] {module_name} with libfuse {fuse_module._libfuse.fuse_version()}",
          file=sys.stderr, flush=True)
    kwargs = {}
    for opt in filter(None, options.split(",")):
        key, sep, value = opt.partition("=")
        kwargs[key] = value if sep else True
    ops = make_operations(fuse_module)(os.path.realpath(src))
    fuse_module.FUSE(ops, mountpoint, foreground=True, nothreads=False, **kwargs)


# --------------------------------------------------------------------------- client


@dataclass
class Variant:
    name: str
    module: str | None  # None: read the source tree directly
    libfuse: str | None = None  # FUSE_LIBRARY_PATH for the server, None: binding default
    options: str = COMMON_OPTIONS
    best: list = field(default_factory=lambda: [0.0] * len(COLUMNS))
    error: str | None = None
    notes: list = field(default_factory=list)


def drop_caches() -> None:
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def write_random(path: str, size: int) -> None:
    with open(path, "wb") as f:
        for off in range(0, size, MIB):
            f.write(os.urandom(min(MIB, size - off)))


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(READ_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def make_source(root: str, big_mib: int, n_small: int, small_kib: int) -> list[str]:
    write_random(os.path.join(root, "big.bin"), big_mib * MIB)
    os.mkdir(os.path.join(root, "small"))
    small = [f"small/{i:06d}.bin" for i in range(n_small)]
    for rel in small:
        write_random(os.path.join(root, rel), small_kib * 1024)
    return small


def read_big(path: str) -> float:
    """Read the file sequentially with 1 MiB reads; return MiB/s."""
    buf = bytearray(READ_CHUNK)
    total = 0
    start = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            total += n
    return total / MIB / (time.perf_counter() - start)


def _read_whole(path: str) -> int:
    with open(path, "rb", buffering=0) as f:
        return len(f.readall())


def read_small(root: str, rels: list[str], expected_size: int) -> float:
    """Read all files whole with a thread pool; return files/s."""
    paths = [os.path.join(root, rel) for rel in rels]
    start = time.perf_counter()
    with ThreadPoolExecutor(SMALL_THREADS) as pool:
        sizes = list(pool.map(_read_whole, paths))
    elapsed = time.perf_counter() - start
    if any(s != expected_size for s in sizes):
        raise RuntimeError("short read on a small file")
    return len(paths) / elapsed


def measure(root: str, small: list[str], small_size: int) -> list[float]:
    big = os.path.join(root, "big.bin")
    drop_caches()
    big_cold = read_big(big)
    big_warm = read_big(big)
    drop_caches()
    small_cold = read_small(root, small, small_size)
    small_warm = read_small(root, small, small_size)
    return [big_cold, big_warm, small_cold, small_warm]


def is_mounted(mountpoint: str) -> bool:
    with open("/proc/mounts") as f:
        return any(line.split()[1] == mountpoint for line in f)


def unmount(mountpoint: str) -> None:
    for flags in ("-u", "-uz"):
        if not is_mounted(mountpoint):
            return
        subprocess.run(["fusermount", flags, mountpoint], stderr=subprocess.DEVNULL, check=False)
        time.sleep(0.2)


class Mount:
    """Context manager: serve SRC at MOUNTPOINT in a subprocess, always clean up."""

    def __init__(self, variant: Variant, src: str, mountpoint: str, log_path: str):
        self.variant, self.src, self.mountpoint, self.log_path = variant, src, mountpoint, log_path
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> Mount:
        env = dict(os.environ)
        env.pop("FUSE_LIBRARY_PATH", None)
        if self.variant.libfuse:
            env["FUSE_LIBRARY_PATH"] = self.variant.libfuse
        cmd = [sys.executable, os.path.abspath(__file__), "--serve", self.variant.module,
               self.src, self.mountpoint, self.variant.options]
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        try:
            deadline = time.monotonic() + 15
            while not is_mounted(self.mountpoint):
                if self.proc.poll() is not None:
                    raise RuntimeError(f"server exited with {self.proc.returncode}: {self.log()}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"mount did not appear within 15 s: {self.log()}")
                time.sleep(0.05)
            os.listdir(self.mountpoint)  # blocks until the FUSE INIT handshake is done
        except BaseException:
            self.__exit__()
            raise
        return self

    def log(self) -> str:
        with open(self.log_path) as f:
            return f.read().strip()

    def __exit__(self, *exc) -> None:
        unmount(self.mountpoint)
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.proc.wait(timeout=10)  # a foreground server exits after unmount
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def run_variant(variant: Variant, src: str, work: str, small: list[str], small_size: int,
                checksums: dict[str, str]) -> list[float]:
    if variant.module is None:
        values = measure(src, small, small_size)
    else:
        mountpoint = os.path.join(work, f"mnt-{variant.name}")
        os.makedirs(mountpoint, exist_ok=True)
        mount = Mount(variant, src, mountpoint, os.path.join(work, f"{variant.name}.log"))
        with mount:
            values = measure(mountpoint, small, small_size)
            for rel, digest in checksums.items():
                if sha256_file(os.path.join(mountpoint, rel)) != digest:
                    raise RuntimeError(f"checksum mismatch for {rel}")
        variant.notes = [line for line in mount.log().splitlines() if line.startswith("[server]")]
    variant.best = [max(b, v) for b, v in zip(variant.best, values)]
    return values


def print_table(variants: list[Variant]) -> None:
    width = max(len(v.name) for v in variants) + 16
    print(f"\n{'variant':<{width}}" + "".join(f"{c:>20}" for c in COLUMNS))
    for v in variants:
        cells = ("n/a" for _ in COLUMNS) if v.error else (f"{x:,.0f}" for x in v.best)
        print(f"{v.name:<{width}}" + "".join(f"{c:>20}" for c in cells))
    by_name = {v.name: v for v in variants}
    base = by_name.get("fusepy")
    for v in variants:
        if v.module != "mfusepy" or v.error or base is None or base.error:
            continue
        ratios = (f"{x / b:.2f}" if b else "n/a" for x, b in zip(v.best, base.best))
        print(f"{v.name + ' / fusepy':<{width}}" + "".join(f"{r:>20}" for r in ratios))
    print()
    for v in variants:
        if v.error:
            print(f"{v.name}: FAILED: {v.error}")
        for note in v.notes:
            print(f"{v.name}: {note}")


def bench(args: argparse.Namespace) -> int:
    if os.geteuid() != 0:
        sys.exit("needs root (drop_caches)")
    libfuse3 = ctypes.util.find_library("fuse3")
    variants = [
        Variant("local", None),
        Variant("fusepy", "fuse", options=f"{COMMON_OPTIONS},max_read=131072"),
        Variant("mfusepy-fuse2", "mfusepy", options=f"{COMMON_OPTIONS},max_read=131072"),
    ]
    if libfuse3 and not args.no_fuse3:
        variants.append(Variant("mfusepy-fuse3", "mfusepy", libfuse=libfuse3))

    work = tempfile.mkdtemp(prefix="unifs-bench-")
    try:
        src = os.path.join(work, "src")
        os.mkdir(src)
        t0 = time.perf_counter()
        small = make_source(src, args.big_mib, args.small_count, args.small_kib)
        sampled = ["big.bin", *small[:: max(1, len(small) // 4)][:4]]
        checksums = {rel: sha256_file(os.path.join(src, rel)) for rel in sampled}
        print(f"source: {args.big_mib} MiB + {args.small_count} x {args.small_kib} KiB "
              f"in {time.perf_counter() - t0:.1f} s; {len(checksums)} checksums sampled", flush=True)

        for rep in range(args.repeat):
            # Rotate the FUSE variants so none is always first after the local run.
            k = rep % (len(variants) - 1)
            for v in variants[:1] + variants[1 + k:] + variants[1:1 + k]:
                if v.error:
                    continue
                t0 = time.perf_counter()
                try:
                    values = run_variant(v, src, work, small, args.small_kib * 1024, checksums)
                    status = (f"{time.perf_counter() - t0:.1f} s  "
                              + " / ".join(f"{x:,.0f}" for x in values))
                except Exception as e:  # one broken variant must not stop the others
                    v.error = str(e)
                    status = f"FAILED: {v.error}"
                print(f"repeat {rep + 1}/{args.repeat} {v.name}: {status}", flush=True)
        print_table(variants)
    finally:
        for entry in os.listdir(work):
            if entry.startswith("mnt-"):
                unmount(os.path.join(work, entry))
        shutil.rmtree(work, ignore_errors=True)
    return 1 if any(v.error for v in variants[:3]) else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--big-mib", type=int, default=512, help="big file size (MiB)")
    parser.add_argument("--small-count", type=int, default=2000, help="number of small files")
    parser.add_argument("--small-kib", type=int, default=100, help="small file size (KiB)")
    parser.add_argument("--repeat", type=int, default=1, help="take the best of K runs")
    parser.add_argument("--no-fuse3", action="store_true", help="skip mfusepy with libfuse3")
    parser.add_argument("--serve", nargs=4, metavar=("MODULE", "SRC", "MP", "OPTIONS"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(*args.serve)
        return 0
    # Turn SIGTERM into an exception so the cleanup in bench() still runs.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    return bench(args)


if __name__ == "__main__":
    sys.exit(main())
