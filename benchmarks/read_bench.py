#!/usr/bin/env python3
"""Read throughput of a unifs mount side by side with the store's direct clients.

`--store s3` (the default) starts a local SeaweedFS S3 server and compares the
mount with direct fsspec (s3fs) and obstore. `--store gcs` uses fake-gcs-server
(direct client gcsfs), `--store azure` Azurite (direct client adlfs), both
emulators holding the data in memory; `--store file` serves a local directory
(`url: file:///...`; direct clients fsspec's LocalFileSystem and plain open()).
The obstore column applies to S3 only; for file it holds plain open(), for gcs
and azure it stays empty ('-').

One run uploads one big object and many small ones (random bytes, sha256
remembered), mounts the bucket with `unifs mount MP --config CFG` exactly as a
user would, and measures:

  a. sequential read of the big object, one reader, 1 MiB read() calls (MiB/s),
     cold; versus fsspec `fs.open(block_size=8 MiB)` + 1 MiB reads and obstore
     `get_range` over 8 MiB ranges with a few threads (file: open() + 1 MiB reads);
  b. all small files read whole by 8 threads, in listing order (files/s), cold;
     versus fsspec `cat_file` and obstore `get` with 8 threads (file: open().read());
  c. `ls -l` of the small-file directory (scandir + stat of every entry), cold
     on a fresh mount and warm (second run); the same for a separate prefix of
     many tiny objects (--list-count, default 20,000 for s3);
  d. warm re-read of the big file and the small files through the same mount.

With --store s3 the same measurements run through peer mounts too, side by
side in the same run (benchmarks/peers.py; --peers, default all installed):
`rclone mount` with --vfs-cache-mode full and off, s3fs-fuse without and with
use_cache, and a Python passthrough FUSE (passthrough_bench.py) over a local
directory holding the same files, the Python FUSE ceiling. A second table
gives unifs / peer ratios. A peer that is not installed is skipped (and said
so); a peer that fails is reported and left out of the rest of the run.

"Cold" means: a fresh `unifs mount` (empty metadata cache, fresh kernel
attribute/dentry cache; for a peer a fresh mount with a fresh, empty cache
directory) and the page cache dropped just before the measurement
(`sync; echo 3 > /proc/sys/vm/drop_caches`, needs root). Each direct client is
a new instance, measured after the same page-cache drop. After the drop the
server's data files (SeaweedFS' volumes; for file, the directory itself) are
read back into the page cache (unless --cold-server) so that every client sees
the same warm local server, and the numbers compare client paths rather than
the disk (for the passthrough: its local directory). The gcs and azure
emulators keep their data in memory anyway.

Every byte read through the mount is checked against the sha256 taken at
upload; a mismatch aborts the run with exit status 3. The direct clients and
the peer mounts are checked too (a peer with wrong bytes also ends in status 3).

    python benchmarks/read_bench.py [--store s3|gcs|azure|file] [--client auto|fsspec|obstore]
                                    [--peers rclone-full,rclone-off,s3fs,s3fs-cache,passthrough|none]
                                    [--list-count N] [--repeat K] [--json FILE]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Optional

import yaml

from peers import PEERS, S3Target, is_mounted, make_peers, proc_cpu_seconds, split_installed
from unifs.devstores.seaweed import SeaweedS3

STORES = ("s3", "gcs", "azure", "file")

MIB = 1 << 20
KIB = 1 << 10
READ_CHUNK = MIB          # read() size of the sequential readers
FSSPEC_BLOCK = 8 * MIB    # s3fs block_size of the typical user
OBSTORE_RANGE = 8 * MIB   # obstore get_range size for the big object
OBSTORE_BIG_THREADS = 4
SMALL_THREADS = 8
BUCKET = "bench"
BIG_KEY = "big/big.bin"
SMALL_PREFIX = "small"
LIST_PREFIX = "list"      # the many-entry listing (default 20,000 tiny objects)
LIST_OBJ_BYTES = 256
MOUNT_PATH = "/bench"

TARGET_SEQ = 0.7
TARGET_SMALL = 0.7
TARGET_LS_S = 2.0


class VerificationError(Exception):
    pass


def sha256(data) -> str:
    return hashlib.sha256(data).hexdigest()


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def write_json(path: str, config: dict, fields: dict, elapsed: float, out: dict) -> None:
    """One results document (read_bench, write_bench): config, machine, the caller's fields,
    timing and noise, then the report's own sections."""
    doc = {"config": config,
           "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                       "python": platform.python_version()},
           **fields, "elapsed_s": elapsed, "timed_s": NOISE.timed_s,
           "other_processes_cpu_s_while_timed": NOISE.foreign_s, **out}
    Path(path).write_text(json.dumps(doc, indent=2))
    log(f"wrote {path}")


def remove_workdir(workdir: Path, mountpoints: list, remove: bool) -> None:
    """Delete the work directory (when `remove`) unless a mount point in it is still mounted."""
    still = [mp for mp in mountpoints if is_mounted(mp)]
    for mp in still:
        log(f"WARNING: {mp} is still mounted")
    if remove and not still:
        shutil.rmtree(workdir, ignore_errors=True)


# --------------------------------------------------------------------------- noise


def _cpu_by_pid() -> dict[int, tuple[float, int]]:
    """CPU seconds (user+sys, all threads) and process group of every process."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                fields = f.read().rsplit(") ", 1)[1].split()
            out[int(name)] = ((int(fields[11]) + int(fields[12])) / tick, int(fields[2]))
        except (OSError, IndexError, ValueError):
            pass
    return out


class Noise:
    """CPU used while timing by every other process (kernel threads included) than this
    benchmark, its unifs daemon and its server.

    On a 2-core machine another busy process moves the numbers a lot; this says when it happened.
    """

    def __init__(self):
        self.own: set[int] = {os.getpid()}
        self.own_groups: set[int] = set()  # process groups of the server (emulators may fork)
        self.foreign_s = 0.0
        self.timed_s = 0.0
        self.last_share: Optional[float] = None

    def measure(self, fn):
        before = _cpu_by_pid()
        t0 = time.perf_counter()
        out = fn()
        dt = time.perf_counter() - t0
        after = _cpu_by_pid()
        foreign = sum(v - before.get(pid, (0.0, 0))[0] for pid, (v, grp) in after.items()
                      if pid not in self.own and grp not in self.own_groups)
        self.foreign_s += foreign
        self.timed_s += dt
        # /proc counts CPU in clock ticks (10 ms): a share of a short measurement means nothing
        self.last_share = foreign / (dt * (os.cpu_count() or 1)) if dt >= MIN_NOISE_SPAN else None
        return dt, out


MIN_NOISE_SPAN = 1.0
NOISE = Noise()


# --------------------------------------------------------------------------- caches


def drop_page_cache() -> Optional[OSError]:
    """sync, then drop the page cache; the error if this user may not."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
    except OSError as e:
        return e
    return None


class CacheControl:
    def __init__(self, server_data: Optional[Path], warm_server: bool):
        self.server_data = server_data  # None: the server keeps its data in memory
        self.rewarm = warm_server
        self.warm_server = warm_server and server_data is not None
        self.can_drop = True

    def cold(self, dirs: Optional[list] = None) -> None:
        """Drop the page cache, then (by default) read the server's data files back in.

        dirs: what the measured client's server reads instead of the store server's data
        (the passthrough's local directory)."""
        e = drop_page_cache()
        if e is not None:
            if self.can_drop:
                log(f"WARNING: cannot drop the page cache ({e.strerror}); 'cold' numbers are not cold "
                    "(run as root)")
            self.can_drop = False
        if dirs is None:
            dirs = [self.server_data] if self.server_data is not None else []
        if not self.rewarm:
            return
        buf = bytearray(4 * MIB)
        for top in dirs:
            for root, _, files in os.walk(top):
                for name in files:
                    try:
                        with open(os.path.join(root, name), "rb", buffering=0) as f:
                            while f.readinto(buf):
                                pass
                    except OSError:
                        pass


# --------------------------------------------------------------------------- mount


def unifs_cmd() -> list[str]:
    """The `unifs` command of this interpreter (not whatever `unifs` comes first on PATH, e.g. a
    pyenv shim running another Python), so the daemon runs the same code and packages."""
    exe = Path(sys.executable).parent / "unifs"
    return [str(exe)] if os.access(exe, os.X_OK) else [sys.executable, "-m", "unifs"]


class Mount:
    """`unifs mount MP --config CFG` ... `unifs umount MP`, as a user would type them."""

    def __init__(self, mountpoint: Path, config: Path):
        self.mp = mountpoint
        self.config = config
        self.mounted = False
        self.pid: Optional[int] = None
        self.log_file: Optional[str] = None

    def __enter__(self) -> "Mount":
        self.mp.mkdir(parents=True, exist_ok=True)
        res = subprocess.run(unifs_cmd() + ["mount", str(self.mp), "--config", str(self.config)],
                             capture_output=True, text=True, timeout=300)
        if res.returncode != 0:
            raise RuntimeError(f"unifs mount failed ({res.returncode}): {res.stderr.strip()}")
        self.mounted = True
        st = subprocess.run(unifs_cmd() + ["status", "--json"], capture_output=True, text=True, timeout=60)
        for row in json.loads(st.stdout or "[]"):
            if row.get("mountpoint") == os.path.realpath(self.mp):
                self.pid, self.log_file = row.get("pid"), row.get("log_file")
                if self.pid:
                    NOISE.own.add(self.pid)
        return self

    @property
    def root(self) -> str:
        """The directory holding the bucket's keys."""
        return os.path.join(str(self.mp), MOUNT_PATH.strip("/"))

    def cpu_seconds(self) -> float:
        """User + system CPU time of the daemon so far (all threads)."""
        return proc_cpu_seconds(self.pid)

    def warm_dirs(self) -> None:
        return None  # reads the store server, like the direct clients

    def __exit__(self, *exc) -> None:
        self.unmount()

    def unmount(self) -> None:
        if not self.mounted:
            return
        res = subprocess.run(unifs_cmd() + ["umount", str(self.mp)], capture_output=True, text=True,
                             timeout=120)
        if res.returncode != 0:
            log(f"unifs umount failed: {res.stderr.strip()}; retrying with --lazy")
            subprocess.run(unifs_cmd() + ["umount", "--lazy", str(self.mp)], capture_output=True,
                           text=True, timeout=120)
        self.mounted = False


# --------------------------------------------------------------------------- readers


def touched_buffer(size: int) -> bytearray:
    """A destination for a big read, made before the timing starts.

    bytearray(n) zero-fills, so making a 1 GiB buffer costs a page fault per 4 KiB (about
    0.3-0.5 CPU-s per GiB here, more on first touch of this VM's memory). Made inside the
    timing, that competed with the daemon and the server for the 2 cores and cut unifs' cold
    1 GiB rate from 500-640 to 220-380 MiB/s (side by side). It is the reader's cost, not the
    file system's, so every client now fills a buffer made beforehand."""
    return bytearray(size)


def read_seq_file(path: str, buf: bytearray) -> bytearray:
    """One reader, 1 MiB read() calls, straight into `buf` (hashing happens outside the timing)."""
    size = len(buf)
    mv = memoryview(buf)
    off = 0
    with open(path, "rb", buffering=0) as f:
        while off < size:
            n = f.readinto(mv[off:off + READ_CHUNK])
            if not n:
                break
            off += n
        if off == size and f.read(1):
            raise VerificationError(f"{path}: longer than {size} bytes")
    if off != size:
        raise VerificationError(f"{path}: read {off} bytes, expected {size}")
    return buf


def read_seq_fsspec(fs, path: str, buf: bytearray) -> bytearray:
    size = len(buf)
    off = 0
    with fs.open(path, "rb", block_size=FSSPEC_BLOCK) as f:
        while True:
            chunk = f.read(READ_CHUNK)
            if not chunk:
                break
            buf[off:off + len(chunk)] = chunk
            off += len(chunk)
    if off != size:
        raise VerificationError(f"fsspec {path}: read {off} bytes, expected {size}")
    return buf


def read_ranges_obstore(store, key: str, buf: bytearray) -> bytearray:
    import obstore

    size = len(buf)
    mv = memoryview(buf)

    def one(start):
        end = min(size, start + OBSTORE_RANGE)
        data = obstore.get_range(store, key, start=start, end=end)
        if len(data) != end - start:
            raise VerificationError(f"obstore {key}[{start}:{end}]: got {len(data)} bytes")
        mv[start:end] = memoryview(data)

    with ThreadPoolExecutor(OBSTORE_BIG_THREADS) as pool:
        list(pool.map(one, range(0, size, OBSTORE_RANGE)))
    return buf


def read_all(names: list, read_one: Callable, threads: int = SMALL_THREADS) -> list:
    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(read_one, names))


def read_whole(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def ls_l(d: str) -> tuple[list, int]:
    """What `ls -l` does: scandir, then stat every entry. Returns the names and their total size."""
    names, total = [], 0
    with os.scandir(d) as it:
        for entry in it:
            total += entry.stat().st_size
            names.append(entry.name)
    return names, total


# --------------------------------------------------------------------------- helpers


def timed(fn):
    return NOISE.measure(fn)


def check_big(who: str, buf, expected: str) -> None:
    got = sha256(buf)
    if got != expected:
        raise VerificationError(f"{who}: sha256 of the big object is {got}, expected {expected}")


def check_small(who: str, names: list, blobs: list, expected: dict) -> None:
    if sorted(names) != sorted(expected):
        missing = sorted(set(expected) - set(names))[:3]
        extra = sorted(set(names) - set(expected))[:3]
        raise VerificationError(f"{who}: listing differs from the upload (missing {missing}, extra {extra})")
    bad = [n for n, b in zip(names, blobs) if sha256(b) != expected[n]]
    if bad:
        raise VerificationError(f"{who}: {len(bad)} small file(s) have wrong bytes, e.g. {bad[:3]}")


# --------------------------------------------------------------------------- stores


class Backend:
    """One store kind: its server (if any), the mount entry, the direct clients."""

    name = ""
    fsspec_label = "fsspec"
    third = "obstore"        # key of the third column in the table / JSON
    third_label = "obstore"  # its header
    has_third = False
    note = ""                # printed under the table

    def __init__(self, workdir: Path):
        self.workdir = workdir

    # lifecycle
    def start(self) -> None: ...
    def stop(self) -> None: ...

    def server_pid(self) -> Optional[int]:
        return None

    def data_dir(self) -> Optional[Path]:
        """Files to read back into the page cache after a drop (None: nothing on disk)."""
        return None

    # mount entry
    def url(self) -> str: ...
    def mount_options(self) -> dict:
        return {}

    # data
    def upload_small(self, small: dict[str, bytes]) -> None: ...
    def upload_big(self, big: bytes) -> None: ...

    # direct fsspec client (a new instance each time, set up outside the timing)
    fs_root = BUCKET

    def new_fs(self): ...

    def fs_path(self, key: str) -> str:
        return f"{self.fs_root}/{key}"

    def fs_rel(self, name: str) -> str:
        return name[len(self.fs_root) + 1:]

    # third direct client: obstore (s3) or plain open() (file)
    def new_third(self): ...
    def third_big(self, h, buf: bytearray) -> bytearray: ...
    def third_small(self, h) -> tuple[list, list]: ...
    def third_ls(self, h, prefix: str) -> tuple[list, int]: ...  # entry names, total bytes


class ServerBackend(Backend):
    """A store served by a local server process (`self.server`, a devstores LocalServer)."""

    scheme = ""
    endpoint_label = ""

    def start_note(self) -> str:
        return ""

    def start(self) -> None:
        log(f"starting {self.server.name} in {self.workdir}{self.start_note()}")
        self.server.start()
        self.server.create_bucket(BUCKET)
        log(f"{self.endpoint_label} {self.server.endpoint}")

    def stop(self) -> None:
        self.server.stop()

    def server_pid(self):
        return self.server.proc.pid if self.server.proc else None

    def url(self):
        return f"{self.scheme}://{BUCKET}"

    def mount_options(self):
        return self.server.mount_options()

    def upload_small(self, small):
        self.server.put_many(BUCKET, small)

    def new_fs(self):
        fs = self.server.fs()  # the emulator's own fsspec client (gcsfs, adlfs)
        fs.info(self.fs_path(BIG_KEY))  # session set up outside the timing, like the mount's
        return fs


class S3Backend(ServerBackend):
    name = "s3"
    scheme = "s3"
    endpoint_label = "S3 endpoint"
    fsspec_label = "s3fs"
    has_third = True

    def __init__(self, workdir: Path):
        super().__init__(workdir)
        self.server = SeaweedS3(str(workdir / "seaweed"))

    def data_dir(self):
        return self.workdir / "seaweed" / "data"

    def upload_big(self, big):
        import obstore

        obstore.put(self.server.obstore(BUCKET), BIG_KEY, big)

    def new_fs(self):
        import s3fs

        fs = s3fs.S3FileSystem(endpoint_url=self.server.endpoint, key=self.server.access_key,
                               secret=self.server.secret_key, skip_instance_cache=True)
        fs.info(self.fs_path(BIG_KEY))  # session and connection set up outside the timing, like the mount's
        return fs

    def new_third(self):
        import obstore

        store = self.server.obstore(BUCKET)
        obstore.head(store, BIG_KEY)
        return store

    def third_big(self, store, buf):
        return read_ranges_obstore(store, BIG_KEY, buf)

    def third_small(self, store):
        import obstore

        names = [o["path"] for o in obstore.list_with_delimiter(store, SMALL_PREFIX)["objects"]]
        return names, read_all(names, lambda k: bytes(obstore.get(store, k).bytes()))

    def third_ls(self, store, prefix):
        import obstore

        objs = obstore.list_with_delimiter(store, prefix)["objects"]
        return [o["path"].rsplit("/", 1)[-1] for o in objs], sum(o["size"] for o in objs)


class GCSBackend(ServerBackend):
    name = "gcs"
    scheme = "gs"
    endpoint_label = "GCS endpoint"
    fsspec_label = "gcsfs"
    note = "obstore column: not applicable (the mount's data path for gs:// is gcsfs)"

    def __init__(self, workdir: Path):
        super().__init__(workdir)
        from unifs.devstores.fakegcs import FakeGCS  # sets GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false

        self.server = FakeGCS(str(workdir / "fakegcs"))

    def upload_big(self, big):
        self.server._request("POST", f"{self.server.endpoint}/upload/storage/v1/b/{BUCKET}/o?"
                             f"uploadType=media&name={BIG_KEY.replace('/', '%2F')}", big,
                             content_type="application/octet-stream", timeout=600)


class AzureBackend(ServerBackend):
    name = "azure"
    scheme = "abfs"
    endpoint_label = "Azure blob endpoint"
    fsspec_label = "adlfs"
    note = "obstore column: not applicable (the mount's data path for abfs:// is adlfs)"

    def __init__(self, workdir: Path, memory_limit_mb: int):
        super().__init__(workdir)
        from unifs.devstores.azurite import Azurite

        self.server = Azurite(str(workdir / "azurite"), memory_limit_mb=memory_limit_mb)

    def start_note(self):
        return f" (extent memory limit {self.server.memory_limit_mb} MB)"

    def upload_big(self, big):
        cc = self.server.service_client().get_container_client(BUCKET)
        cc.upload_blob(BIG_KEY, big, overwrite=True, max_concurrency=4)


class FileBackend(Backend):
    name = "file"
    fsspec_label = "LocalFileSystem"
    third = "open"
    third_label = "open()"
    has_third = True
    note = "open() column: plain open() on the directory (os.listdir / os.scandir, 1 MiB readinto)"

    def __init__(self, workdir: Path):
        super().__init__(workdir)
        self.root = workdir / "store"
        self.fs_root = str(self.root)

    def start(self):
        self.root.mkdir(parents=True, exist_ok=True)
        log(f"local store directory {self.root}")

    def data_dir(self):
        return self.root

    def url(self):
        return f"file://{self.root}"

    def _write(self, key: str, data: bytes) -> None:
        p = self.root / key
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)

    def upload_small(self, small):
        for key, data in small.items():
            self._write(key, data)
        os.sync()

    def upload_big(self, big):
        self._write(BIG_KEY, big)
        os.sync()

    def new_fs(self):
        from fsspec.implementations.local import LocalFileSystem

        fs = LocalFileSystem(skip_instance_cache=True)
        fs.info(self.fs_path(BIG_KEY))
        return fs

    def new_third(self):
        return self.root

    def third_big(self, root, buf):
        return read_seq_file(str(root / BIG_KEY), buf)

    def third_small(self, root):
        d = root / SMALL_PREFIX
        names = os.listdir(d)
        return [f"{SMALL_PREFIX}/{x}" for x in names], read_all(names, lambda x: read_whole(os.path.join(d, x)))

    def third_ls(self, root, prefix):
        return ls_l(str(root / prefix))


def make_backend(args, workdir: Path) -> Backend:
    if args.store == "gcs":
        return GCSBackend(workdir)
    if args.store == "azure":
        # Azurite keeps blobs in memory and refuses writes beyond its extent limit
        data_mb = args.big_mib + args.small_count * args.small_kib // 1024
        return AzureBackend(workdir, memory_limit_mb=max(512, data_mb * 2 + 256))
    if args.store == "file":
        return FileBackend(workdir)
    return S3Backend(workdir)


class Results:
    """Best of K per measurement: max for rates, min for seconds."""

    def __init__(self):
        self.samples: dict[str, list[float]] = {}
        self.noise: dict[str, list[float]] = {}
        self.daemon_cpu: dict[str, list[float]] = {}

    def add(self, name: str, value: float) -> None:
        """A sample of the measurement just timed (its foreign-CPU share is taken from NOISE)."""
        self.samples.setdefault(name, []).append(value)
        self.noise.setdefault(name, []).append(NOISE.last_share)

    def cpu(self, name: str, seconds: float) -> None:
        self.daemon_cpu.setdefault(name, []).append(seconds)

    def best(self, name: str) -> Optional[float]:
        vals = self.samples.get(name)
        if not vals:
            return None
        return min(vals) if name.split(".")[0].endswith("_s") else max(vals)

    def best_noise(self, name: str) -> Optional[float]:
        vals = self.samples.get(name)
        if not vals:
            return None
        return self.noise[name][vals.index(self.best(name))]


# --------------------------------------------------------------------------- phases
#
# A mount client is anything that mounts the bucket: unifs, or a peer from peers.py. Its open()
# returns a fresh mount (a context manager) with .root (the directory holding the keys),
# .cpu_seconds() (its FUSE server's CPU so far) and .warm_dirs() (what to read back into the page
# cache after a drop; None: the store server's data). The measure_* functions see only that.


class MountClient:
    def __init__(self, name: str, open_mount: Callable):
        self.name = name
        self.open = open_mount
        self.error: Optional[str] = None
        self.wrong_bytes = False


def measure_big(c: MountClient, cache, res: Results, big_sha: str, big_size: int) -> None:
    """Cold read of the big file on a fresh mount, then a warm re-read through the same mount."""
    with c.open() as m:
        path = os.path.join(m.root, BIG_KEY)
        for row in ("big_cold", "big_warm"):
            if row == "big_cold":
                cache.cold(m.warm_dirs())
            dest = touched_buffer(big_size)
            c0 = m.cpu_seconds()
            dt, buf = timed(lambda dest=dest: read_seq_file(path, dest))
            del dest
            res.cpu(f"{row}.{c.name}", m.cpu_seconds() - c0)
            check_big(f"{c.name} ({row})", buf, big_sha)
            del buf
            res.add(f"{row}.{c.name}", big_size / MIB / dt)
            log(f"{'a' if row == 'big_cold' else 'd'}. {row:<11} {c.name:<11} {big_size / MIB / dt:9.1f} MiB/s")


def measure_small(c: MountClient, cache, res: Results, small: dict) -> None:
    """All small files, 8 threads, listing order: cold on a fresh mount, then warm on the same."""
    n = len(small)
    with c.open() as m:
        d = os.path.join(m.root, SMALL_PREFIX)

        def run():
            names = os.listdir(d)  # listing order
            return names, read_all(names, lambda name: read_whole(os.path.join(d, name)))
        for row in ("small_cold", "small_warm"):
            if row == "small_cold":
                cache.cold(m.warm_dirs())
            c0 = m.cpu_seconds()
            dt, (names, blobs) = timed(run)
            res.cpu(f"{row}.{c.name}", m.cpu_seconds() - c0)
            check_small(f"{c.name} ({row})", [f"{SMALL_PREFIX}/{x}" for x in names], blobs, small)
            del blobs
            res.add(f"{row}.{c.name}", n / dt)
            log(f"{'b' if row == 'small_cold' else 'd'}. {row:<11} {c.name:<11} {n / dt:9.1f} files/s")


def check_listing(who: str, names: list, total: int, expected: set, expected_total: int) -> None:
    if len(names) != len(expected) or set(names) != expected or total != expected_total:
        missing = sorted(expected - set(names))[:3]
        extra = sorted(set(names) - expected)[:3]
        raise VerificationError(f"{who}: listed {len(names)} entries / {total} bytes, expected "
                                f"{len(expected)} / {expected_total} (missing {missing}, extra {extra})")


def measure_ls(c: MountClient, cache, res: Results, row: str, prefix: str, expected: set,
               expected_total: int) -> None:
    """`ls -l` of one directory: cold on a fresh mount, then again on the same mount."""
    with c.open() as m:
        d = os.path.join(m.root, prefix)
        cache.cold(m.warm_dirs())
        c0 = m.cpu_seconds()
        for label in (f"{row}_cold_s", f"{row}_warm_s"):
            dt, (names, total) = timed(lambda: ls_l(d))
            check_listing(f"{c.name} ls -l {prefix}", names, total, expected, expected_total)
            res.add(f"{label}.{c.name}", dt)
            log(f"c. {label:<11} {c.name:<11} {dt:9.3f} s")
        res.cpu(f"{row}.{c.name}", m.cpu_seconds() - c0)


def attempt(c: MountClient, fn: Callable, *args) -> None:
    """Run one measurement of a mount client. unifs errors end the run; a peer that fails is
    reported and left out of the rest of the run."""
    if c.error:
        return
    try:
        fn(c, *args)
    except VerificationError as e:
        if c.name == "unifs":
            raise
        c.error, c.wrong_bytes = f"wrong bytes: {e}", True
    except (OSError, RuntimeError, subprocess.SubprocessError) as e:
        if c.name == "unifs":
            raise
        c.error = f"{type(e).__name__}: {e}"
    if c.error:
        log(f"{c.name}: FAILED, left out from now on: {c.error}")


def direct_big(backend: Backend, cache, res: Results, big_sha: str, big_size: int) -> None:
    # direct fsspec, a new instance, same cold state; the "warm" row repeats the read
    cache.cold()
    fs = backend.new_fs()
    for row in ("big_cold", "big_warm"):
        dest = touched_buffer(big_size)
        dt, buf = timed(lambda dest=dest: read_seq_fsspec(fs, backend.fs_path(BIG_KEY), dest))
        del dest
        check_big(f"fsspec ({row})", buf, big_sha)
        del buf
        res.add(f"{row}.fsspec", big_size / MIB / dt)
        if row == "big_cold":
            log(f"a. big_cold    fsspec      {big_size / MIB / dt:9.1f} MiB/s")
    if not backend.has_third:
        return
    # direct obstore (s3) / plain open() (file)
    third = backend.third
    cache.cold()
    h = backend.new_third()
    for row in ("big_cold", "big_warm"):
        dest = touched_buffer(big_size)
        dt, buf = timed(lambda dest=dest: backend.third_big(h, dest))
        del dest
        check_big(f"{third} ({row})", buf, big_sha)
        del buf
        res.add(f"{row}.{third}", big_size / MIB / dt)
        if row == "big_cold":
            log(f"a. big_cold    {third:<11} {big_size / MIB / dt:9.1f} MiB/s")


def direct_small(backend: Backend, cache, res: Results, small: dict) -> None:
    n = len(small)
    cache.cold()
    fs = backend.new_fs()

    def run_fs():
        names = fs.ls(backend.fs_path(SMALL_PREFIX), detail=False)
        return names, read_all(names, fs.cat_file)
    for row in ("small_cold", "small_warm"):
        fs.invalidate_cache()
        dt, (names, blobs) = timed(run_fs)
        check_small(f"fsspec ({row})", [backend.fs_rel(x) for x in names], blobs, small)
        del blobs
        res.add(f"{row}.fsspec", n / dt)
        if row == "small_cold":
            log(f"b. small_cold  fsspec      {n / dt:9.1f} files/s")
    if not backend.has_third:
        return
    third = backend.third
    cache.cold()
    h = backend.new_third()
    for row in ("small_cold", "small_warm"):
        dt, (names, blobs) = timed(lambda: backend.third_small(h))
        check_small(f"{third} ({row})", names, blobs, small)
        del blobs
        res.add(f"{row}.{third}", n / dt)
        if row == "small_cold":
            log(f"b. small_cold  {third:<11} {n / dt:9.1f} files/s")


def direct_ls(backend: Backend, cache, res: Results, row: str, prefix: str, expected: set,
              expected_total: int) -> None:
    """The direct clients' equivalent of `ls -l`: one detailed listing of the prefix."""
    cache.cold()
    fs = backend.new_fs()
    dt, entries = timed(lambda: fs.ls(backend.fs_path(prefix), detail=True))
    check_listing(f"fsspec ls {prefix}", [e["name"].rsplit("/", 1)[-1] for e in entries],
                  sum(e["size"] for e in entries), expected, expected_total)
    res.add(f"{row}_cold_s.fsspec", dt)
    log(f"c. {row + '_cold_s':<11} fsspec      {dt:9.3f} s")
    if not backend.has_third:
        return
    h = backend.new_third()
    dt, (names, total) = timed(lambda: backend.third_ls(h, prefix))
    check_listing(f"{backend.third} list {prefix}", names, total, expected, expected_total)
    res.add(f"{row}_cold_s.{backend.third}", dt)
    log(f"c. {row + '_cold_s':<11} {backend.third:<11} {dt:9.3f} s")


# --------------------------------------------------------------------------- report


def rows(args) -> list[tuple[str, str, str]]:
    out = [
        ("big_cold", "a. sequential 1 reader, cold", "MiB/s"),
        ("small_cold", "b. small files 8 threads, cold", "files/s"),
        ("ls_cold_s", f"c. ls -l {args.small_count:,} cold (fresh mount)", "s"),
        ("ls_warm_s", f"c. ls -l {args.small_count:,} warm (2nd run)", "s"),
    ]
    if args.list_count:
        out += [("list_cold_s", f"c. ls -l {args.list_count:,} cold (fresh mount)", "s"),
                ("list_warm_s", f"c. ls -l {args.list_count:,} warm (2nd run)", "s")]
    out += [
        ("big_warm", "d. sequential re-read, warm", "MiB/s"),
        ("small_warm", "d. small files re-read, warm", "files/s"),
    ]
    return out


def ratio(name: str, unifs: Optional[float], other: Optional[float]) -> Optional[float]:
    if not unifs or not other:
        return None
    return other / unifs if name.endswith("_s") else unifs / other


def fmt(v, unit):
    if v is None:
        return "-"
    return f"{v:.3f}" if unit == "s" else f"{v:.1f}"


def fr(v):
    return "-" if v is None else f"{v:.2f}x"


def report(args, backend: Backend, res: Results, info: dict, peers: list) -> dict:
    """peers: the peer mount clients that were selected and could run (possibly failed later)."""
    t3, l3 = backend.third, backend.third_label
    clients = ("unifs", "fsspec", t3)
    header = f"{'measurement':<34}{'unit':>8}{'unifs':>10}{'fsspec':>10}{l3:>10}" \
             f"{'vs fsspec':>11}{'vs ' + l3:>11}"
    lines = [header, "-" * len(header)]
    table = {}
    for key, title, unit in rows(args):
        u, f, o = (res.best(f"{key}.{c}") for c in clients)
        rf, ro = ratio(key, u, f), ratio(key, u, o)
        table[key] = {"title": title, "unit": unit, "unifs": u, "fsspec": f, t3: o,
                      "ratio_fsspec": rf, f"ratio_{t3}": ro,
                      "other_cpu_share": {c: res.best_noise(f"{key}.{c}") for c in clients},
                      "samples": {c: res.samples.get(f"{key}.{c}", []) for c in clients},
                      "peers": {p.name: {"value": res.best(f"{key}.{p.name}"),
                                         "ratio": ratio(key, u, res.best(f"{key}.{p.name}")),
                                         "samples": res.samples.get(f"{key}.{p.name}", [])} for p in peers}}
        lines.append(f"{title:<34}{unit:>8}{fmt(u, unit):>10}{fmt(f, unit):>10}{fmt(o, unit):>10}"
                     f"{fr(rf):>11}{fr(ro):>11}")
    seq = table["big_cold"]["ratio_fsspec"]
    sml = table["small_cold"]["ratio_fsspec"]
    lsc = table["ls_cold_s"]["unifs"]
    targets = [
        ("cold sequential >= 0.7x direct fsspec", seq is not None and seq >= TARGET_SEQ, fr(seq)),
        ("small files, 8 threads >= 0.7x direct fsspec", sml is not None and sml >= TARGET_SMALL, fr(sml)),
        (f"ls -l of {args.small_count} entries < 2 s cold", lsc is not None and lsc < TARGET_LS_S,
         "-" if lsc is None else f"{lsc:.3f} s"),
    ]
    print()
    print(f"unifs read benchmark: store={backend.name} ({backend.url()}), "
          f"client={args.client or 'auto (default)'}, big {args.big_mib} MiB, "
          f"{args.small_count} x {args.small_kib} KiB, listing {args.list_count} x {LIST_OBJ_BYTES} B, "
          f"best of {args.repeat}, {os.cpu_count()} CPUs")
    if backend.name != "s3":
        print(f"fsspec column: {backend.fsspec_label}")
    if backend.note:
        print(backend.note)
    for w in info.get("warnings", []):
        print(f"NOTE: {w}")
    print("ratio = unifs speed / direct speed (> 1: unifs faster); for seconds, direct time / unifs time")
    if backend.name == "s3":
        print("fsspec/obstore in rows c: one detailed listing of the prefix (fs.ls detail / list_with_delimiter)")
        print("fsspec/obstore in rows d: the same read repeated with the same client (no client cache)")
    else:
        print(f"direct clients in rows c: one detailed listing of the prefix (fs.ls detail"
              f"{' / scandir + stat' if backend.has_third else ''})")
        print("direct clients in rows d: the same read repeated with the same client (no client cache)")
    print()
    print("\n".join(lines))
    print()
    print("targets:")
    for text, ok, val in targets:
        print(f"  {'PASS' if ok else 'MISS'}  {text:<48} {val}")

    if peers or info.get("peers_skipped"):
        print()
        print_peer_tables(args, res, peers, info)

    cpu: dict[str, dict[str, float]] = {}
    for name, vals in res.daemon_cpu.items():
        row, client = name.split(".", 1)
        cpu.setdefault(client, {})[row] = min(vals)
    if cpu:
        print()
        print("FUSE server CPU seconds (user+sys, best run; ls = cold + warm):")
        for client, by_row in cpu.items():
            print(f"  {client:<12} " + ", ".join(f"{k} {v:.2f}" for k, v in by_row.items()))
    shares = [(name, res.best_noise(name)) for name in res.samples]
    noisy = [f"{n} {sh:.0%}" for n, sh in shares if sh is not None and sh >= 0.05]
    print(f"other processes' CPU while timing (share of all cores, rows timed >= {MIN_NOISE_SPAN:.0f} s): " +
          (", ".join(noisy) if noisy else "< 5% everywhere"))
    if not info.get("page_cache_dropped", True):
        print("WARNING: the page cache could not be dropped; 'cold' rows are not cold")
    return {"table": table, "targets": [{"target": t, "pass": ok, "value": v} for t, ok, v in targets],
            "daemon_cpu_s": cpu,
            "peers": {p.name: {"error": p.error} for p in peers},
            "peers_skipped": info.get("peers_skipped", {})}


def print_peer_tables(args, res: Results, peers: list, info: dict) -> None:
    names = [p.name for p in peers]
    w = max([12] + [len(n) + 2 for n in names])
    print("peer mounts (same server, same data, same run; each cold row on a fresh mount):")
    if names:
        header = f"{'measurement':<34}{'unit':>8}{'unifs':>{w}}" + "".join(f"{n:>{w}}" for n in names)
        print(header)
        print("-" * len(header))
        for key, title, unit in rows(args):
            vals = [res.best(f"{key}.{n}") for n in ["unifs"] + names]
            print(f"{title:<34}{unit:>8}" + "".join(f"{fmt(v, unit):>{w}}" for v in vals))
        print()
        header = f"{'unifs / peer (> 1: unifs faster)':<42}" + "".join(f"{n:>{w}}" for n in names)
        print(header)
        print("-" * len(header))
        for key, title, unit in rows(args):
            u = res.best(f"{key}.unifs")
            print(f"{title:<42}" + "".join(f"{fr(ratio(key, u, res.best(f'{key}.{n}'))):>{w}}" for n in names))
        print()
        if any(n.startswith("rclone") for n in names):
            print("rclone: `rclone mount --vfs-cache-mode full|off --read-only`, other flags default "
                  "(a fresh, empty --cache-dir per mount)")
        if any(n.startswith("s3fs") for n in names):
            print("s3fs: `s3fs -o url=..,use_path_request_style,ro`, other options default; s3fs-cache adds "
                  "`use_cache=DIR` (fresh, empty per mount)")
        if "passthrough" in names:
            print("passthrough: mfusepy passthrough (passthrough_bench.py: kernel_cache, 60 s attr/entry "
                  "timeouts) over a local copy of the files, read back into the page cache after each drop")
        print("warm rows: a second pass through the same mount (kernel page cache and whatever the mount caches)")
    for p in peers:
        if p.error:
            print(f"{p.name}: FAILED during the run (its numbers are partial or missing): {p.error}")
    for name, why in info.get("peers_skipped", {}).items():
        print(f"{name}: skipped ({why})")


# --------------------------------------------------------------------------- main


def parse_peers(ap, args) -> list:
    if args.peers is None:
        return list(PEERS) if args.store == "s3" else []
    names = [] if args.peers.strip().lower() in ("", "none") else [x.strip() for x in args.peers.split(",")]
    unknown = [n for n in names if n not in PEERS]
    if unknown:
        ap.error(f"unknown peer(s) {', '.join(unknown)}; known: {', '.join(PEERS)}, or none")
    if names and args.store != "s3":
        ap.error("peer mounts apply to --store s3 only")
    return list(dict.fromkeys(names))


def write_tree(root: Path, items: dict) -> None:
    for key, data in items.items():
        p = root / key
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--store", choices=STORES, default="s3",
                    help="s3: SeaweedFS (default); gcs: fake-gcs-server; azure: Azurite; file: a local directory")
    ap.add_argument("--big-mib", type=int, default=1024, help="size of the big object in MiB")
    ap.add_argument("--small-count", type=int, default=2000, help="number of small objects")
    ap.add_argument("--small-kib", type=int, default=100, help="size of each small object in KiB")
    ap.add_argument("--list-count", type=int, default=None,
                    help=f"objects of {LIST_OBJ_BYTES} B under a separate prefix for the big `ls -l` rows "
                         "(default: 20000 for s3, 0 = none for the other stores)")
    ap.add_argument("--peers", default=None,
                    help=f"comma-separated peer mounts to compare (s3 only): {','.join(PEERS)}, or none "
                         "(default: all that are installed)")
    ap.add_argument("--client", choices=["auto", "fsspec", "obstore"], default=None,
                    help="set the mount entry's client: key (default: leave it out, i.e. auto; "
                         "obstore is for s3 only)")
    ap.add_argument("--repeat", type=int, default=3, help="best of K runs of every measurement")
    ap.add_argument("--json", metavar="FILE", help="write the results as JSON")
    ap.add_argument("--workdir", help="server data and mount point go here (default: a new temp dir)")
    ap.add_argument("--keep-workdir", action="store_true", help="do not delete the work directory")
    ap.add_argument("--cold-server", action="store_true",
                    help="after dropping the page cache, do not re-read the server's data files "
                         "(the server then reads from disk too; no effect on the in-memory emulators)")
    args = ap.parse_args(argv)
    if args.repeat < 1:
        ap.error("--repeat must be >= 1")
    if args.client == "obstore" and args.store != "s3":
        ap.error("--client obstore applies to --store s3 only")
    if args.list_count is None:
        args.list_count = 20000 if args.store == "s3" else 0
    peer_names, peers_skipped = split_installed(parse_peers(ap, args), log)

    # SIGTERM ends the run through the same cleanup as Ctrl-C
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    own_workdir = args.workdir is None
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="unifs-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    backend = make_backend(args, workdir)
    mountpoint = workdir / "mnt"
    mounts: list[Mount] = []
    peer_mounts: list = []
    started = time.time()
    rc = 0
    warnings: list[str] = []
    try:
        backend.start()
        pid = backend.server_pid()
        if pid:
            NOISE.own.add(pid)
            NOISE.own_groups.add(pid)  # started in a session of its own: pgid == pid

        local = workdir / "local" if "passthrough" in peer_names else None
        big_size = args.big_mib * MIB
        log(f"uploading {args.small_count} x {args.small_kib} KiB and {args.big_mib} MiB (random bytes)")
        small_data = {f"{SMALL_PREFIX}/f_{i:06d}.bin": os.urandom(args.small_kib * KIB)
                      for i in range(args.small_count)}
        small = {k: sha256(v) for k, v in small_data.items()}
        t0 = time.time()
        backend.upload_small(small_data)
        log(f"small objects uploaded in {time.time() - t0:.1f} s")
        if local:
            write_tree(local, small_data)
        del small_data
        big = os.urandom(big_size)
        big_sha = sha256(big)
        t0 = time.time()
        backend.upload_big(big)
        log(f"big object uploaded in {time.time() - t0:.1f} s")
        if local:
            write_tree(local, {BIG_KEY: big})
        del big
        list_names: set = set()
        if args.list_count:
            list_data = {f"{LIST_PREFIX}/o_{i:06d}.bin": os.urandom(LIST_OBJ_BYTES) for i in range(args.list_count)}
            list_names = {k.rsplit("/", 1)[-1] for k in list_data}
            t0 = time.time()
            backend.upload_small(list_data)
            log(f"{args.list_count} listing objects uploaded in {time.time() - t0:.1f} s")
            if local:
                write_tree(local, list_data)
            del list_data
        if local:
            os.sync()
            log(f"local copy for the passthrough written to {local}")
        log(f"uploaded in {time.time() - started:.0f} s")
        if args.store in ("gcs", "azure"):
            warnings.append(f"{args.store}: a local emulator holding the data in memory, not the cloud "
                            "service (no network latency, no real server-side limits)")
        if args.store != "s3" and (args.big_mib, args.small_count, args.small_kib) != (1024, 2000, 100):
            warnings.append(f"data set differs from the S3 defaults: big {args.big_mib} MiB, "
                            f"{args.small_count} x {args.small_kib} KiB")

        entry = {"path": MOUNT_PATH, "url": backend.url(), "read_only": True}
        if backend.mount_options():
            entry["options"] = backend.mount_options()
        if args.client:
            entry["client"] = args.client
        cfg = workdir / "mounts.yaml"
        cache_dir = workdir / "unifs-cache"
        cfg.write_text(yaml.safe_dump({"mounts": [entry], "cache": {"dir": str(cache_dir)}}, sort_keys=False))
        os.chmod(cfg, 0o600)

        def mount_factory():
            # cold means cold: unifs' disk tier outlives a remount, so every fresh mount starts
            # from an empty one (as the peers get a fresh --cache-dir / use_cache dir)
            shutil.rmtree(cache_dir, ignore_errors=True)
            m = Mount(mountpoint, cfg)
            mounts.append(m)
            return m

        clients = [MountClient("unifs", mount_factory)]
        if peer_names:
            srv = backend.server
            target = S3Target(srv.endpoint, srv.access_key, srv.secret_key, BUCKET)
            peer_mounts = make_peers(peer_names, workdir / "peers", target, local)
            for p in peer_mounts:
                def open_peer(p=p):
                    p.start(workdir / f"mnt-{p.name}")
                    NOISE.own.add(p.pid)
                    NOISE.own_groups.add(p.pid)  # started in a session of its own
                    return p
                clients.append(MountClient(p.name, open_peer))

        cache = CacheControl(backend.data_dir(), warm_server=not args.cold_server)
        res = Results()
        small_names = {k.rsplit("/", 1)[-1] for k in small}
        small_total = args.small_count * args.small_kib * KIB
        for k in range(args.repeat):
            log(f"--- run {k + 1} of {args.repeat}")
            for c in clients:
                attempt(c, measure_big, cache, res, big_sha, big_size)
            direct_big(backend, cache, res, big_sha, big_size)
            for c in clients:
                attempt(c, measure_small, cache, res, small)
            direct_small(backend, cache, res, small)
            for c in clients:
                attempt(c, measure_ls, cache, res, "ls", SMALL_PREFIX, small_names, small_total)
            direct_ls(backend, cache, res, "ls", SMALL_PREFIX, small_names, small_total)
            if args.list_count:
                list_total = args.list_count * LIST_OBJ_BYTES
                for c in clients:
                    attempt(c, measure_ls, cache, res, "list", LIST_PREFIX, list_names, list_total)
                direct_ls(backend, cache, res, "list", LIST_PREFIX, list_names, list_total)

        info = {"page_cache_dropped": cache.can_drop, "server_warm_after_drop": cache.warm_server,
                "warnings": warnings, "peers_skipped": peers_skipped}
        peer_clients = clients[1:]
        out = report(args, backend, res, info, peer_clients)
        if any(c.wrong_bytes for c in peer_clients):
            print("\nFAILED: a peer mount returned wrong bytes (see above)", file=sys.stderr, flush=True)
            rc = 3
        elapsed = time.time() - started
        print(f"\ntotal time {elapsed:.0f} s")
        if args.json:
            config = {"store": args.store, "url": backend.url(), "direct_fsspec": backend.fsspec_label,
                      "third_client": backend.third if backend.has_third else None,
                      "client": args.client or "auto (key not set)", "big_mib": args.big_mib,
                      "small_count": args.small_count, "small_kib": args.small_kib,
                      "list_count": args.list_count, "list_object_bytes": LIST_OBJ_BYTES,
                      "peers": peer_names,
                      "repeat": args.repeat, "threads_small": SMALL_THREADS,
                      "read_chunk": READ_CHUNK, "fsspec_block_size": FSSPEC_BLOCK,
                      "obstore_range": OBSTORE_RANGE, "obstore_big_threads": OBSTORE_BIG_THREADS}
            write_json(args.json, config, info, elapsed, out)
    except VerificationError as e:
        print(f"\nFAILED: wrong bytes or sizes: {e}", file=sys.stderr, flush=True)
        rc = 3
    finally:
        for m in mounts:
            try:
                m.unmount()
            except Exception as e:  # noqa: BLE001 - keep cleaning up
                log(f"unmount failed: {e}")
        for p in peer_mounts:
            try:
                p.stop()
            except Exception as e:  # noqa: BLE001 - keep cleaning up
                log(f"{p.name}: stop failed: {e}")
        backend.stop()
        remove_workdir(workdir, [mountpoint] + [workdir / f"mnt-{p.name}" for p in peer_mounts],
                       own_workdir and not args.keep_workdir)
    return rc


if __name__ == "__main__":
    sys.exit(main())
