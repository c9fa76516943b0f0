"""Shared fixtures: a real SeaweedFS S3 server and real `unifs mount` mounts.

The server starts once per session on free 127.0.0.1 ports with credentials
configured; mounts are made by running the `unifs` command as a user would.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from unifs.daemon import select_libfuse
from unifs.devstores.seaweed import SeaweedS3

# A suite started in the background of a shell script (`make test &`) inherits SIGINT ignored,
# and so would every unifs process it starts: the Ctrl-C tests then failed for want of a Ctrl-C
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

select_libfuse()  # in-process mounts bind the same libfuse as the daemons the tests start

BUCKET = "data"
SCRATCH = "scratch"  # tests that add objects use this bucket, so listings of BUCKET stay exact
SMALL_COUNT = 300
BIG_SIZE = 110 * 1024 * 1024
LISTING_COUNT = 10_000
LIST_ONLY = {"name": "lister", "access_key": "list-only-key", "secret_key": "list-only-secret",
             "actions": ["List"]}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def unifs(*args, env=None, check=False, timeout=120, cwd=None) -> subprocess.CompletedProcess:
    """Run the unifs command line exactly as a user would."""
    res = subprocess.run([sys.executable, "-m", "unifs", *args], capture_output=True, text=True,
                         env=env, timeout=timeout, cwd=cwd)
    if check and res.returncode != 0:
        raise AssertionError(f"unifs {' '.join(args)} failed ({res.returncode}): {res.stderr}")
    return res


def cache_stats(mp) -> dict:
    """`unifs cache stats --json` of the daemon at mp."""
    return json.loads(unifs("cache", "stats", "--json", str(mp), check=True).stdout)[str(mp)]


def is_mounted(mp) -> bool:
    mp = os.path.abspath(str(mp))
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == mp for line in f)


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory):
    server = SeaweedS3(str(tmp_path_factory.mktemp("seaweed")), extra_identities=[LIST_ONLY])
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def fake_gcs(tmp_path_factory):
    from unifs.devstores.fakegcs import FakeGCS

    server = FakeGCS(str(tmp_path_factory.mktemp("fakegcs"))).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def azurite(tmp_path_factory):
    from unifs.devstores.azurite import Azurite

    server = Azurite(str(tmp_path_factory.mktemp("azurite"))).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def dataset(seaweed):
    """Objects in the bucket and their checksums: small files, a big one, a 10,000-key prefix."""
    rng = random.Random(1234)
    seaweed.create_bucket(BUCKET)
    seaweed.create_bucket(SCRATCH)
    small = {f"images/class_{i % 7}/img_{i:05d}.jpg": rng.randbytes(rng.randrange(1, 200_000))
             for i in range(SMALL_COUNT)}
    small["images/empty.txt"] = b""
    big = rng.randbytes(BIG_SIZE)
    many = {f"many/obj_{i:05d}": str(i).encode() for i in range(LISTING_COUNT)}
    nested = {f"extra/file_{i}.bin": rng.randbytes(4096 + i) for i in range(20)}
    seaweed.put_many(BUCKET, {**small, **many, **nested, "shards/big.bin": big})
    return {"small": {k: sha256(v) for k, v in small.items()}, "big": big,
            "many": sorted(k.split("/", 1)[1] for k in many),
            "nested": {k: sha256(v) for k, v in nested.items()}}


class Mounter:
    """Writes a mount table and mounts it with `unifs mount`; unmounts everything at the end."""

    def __init__(self, tmp_path: Path, seaweed: SeaweedS3):
        self.tmp = tmp_path
        self.seaweed = seaweed
        self.mounted: list[Path] = []
        self.threads = []
        self.inprocess: set[str] = set()
        self.count = 0

    def s3_entry(self, path: str, url: str, **extra) -> dict:
        entry = {"path": path, "url": url, "options": self.seaweed.mount_options()}
        entry.update(extra)
        return entry

    def write_table(self, table: dict) -> Path:
        self.count += 1
        cfg = self.tmp / f"mounts{self.count}.yaml"
        cfg.write_text(yaml.safe_dump(table))
        return cfg

    def mount(self, mounts: list[dict], *opts: str, extra: dict | None = None,
              inprocess: bool = False) -> Path:
        table = {"mounts": mounts, **(extra or {})}
        # staged writes of test mounts stay in the test's tmp dir
        table.setdefault("write", {"staging_dir": str(self.tmp / "staging")})
        table.setdefault("cache", {"dir": str(self.tmp / "cache"), "ram": "256MiB", "disk": "1GiB"})
        cfg = self.write_table(table)
        mp = self.tmp / f"mnt{self.count}"
        mp.mkdir()
        if inprocess:
            return self._mount_inprocess(cfg, mp)
        res = unifs("mount", str(mp), "--config", str(cfg), *opts)
        assert res.returncode == 0, res.stderr
        assert is_mounted(mp)
        self.mounted.append(mp)
        return mp

    def _mount_inprocess(self, cfg: Path, mp: Path) -> Path:
        """Serve from a thread of this process: the only way a memory:// store seeded by
        the test is the one the mount sees."""
        import threading

        from unifs.config import load_config
        from unifs.daemon import serve

        table, path = load_config(str(cfg))
        errors = []

        def run():
            try:
                serve(str(mp), table, path, {})
            except Exception as e:  # noqa: BLE001 - reported by the assert below
                errors.append(e)
        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        assert wait_for(lambda: is_mounted(mp) or errors, timeout=30) and not errors, errors
        self.threads.append(thread)
        self.inprocess.add(str(mp))
        return mp

    def cleanup(self):
        # every unifs mount a test left under its tmp dir, also ones made without mount()
        with open("/proc/self/mountinfo") as f:
            live = [line.split()[4] for line in f]
        for mp in [Path(p) for p in live if p.startswith(str(self.tmp))]:
            if str(mp) in self.inprocess:
                # `unifs umount` would stop the serving process: this one
                subprocess.run(["fusermount", "-u", str(mp)], capture_output=True)
                continue
            if is_mounted(mp):
                # --force: a test that left uploads pending against a stopped store must not hang here
                res = unifs("umount", "--force", str(mp))
                if res.returncode != 0 and is_mounted(mp):
                    subprocess.run(["fusermount", "-uz", str(mp)], capture_output=True)
        for t in self.threads:
            t.join(timeout=30)


@pytest.fixture
def mounter(tmp_path, seaweed):
    m = Mounter(tmp_path, seaweed)
    yield m
    m.cleanup()


@pytest.fixture
def data_mount(mounter, dataset):
    """The bucket mounted read-only at /data."""
    return mounter.mount([mounter.s3_entry("/data", f"s3://{BUCKET}", read_only=True)])


def errno_of(fn, *args) -> int:
    try:
        fn(*args)
    except OSError as e:
        return e.errno
    raise AssertionError(f"{fn.__name__}{args} did not fail")


def assert_every_change_is_erofs(root: Path, f: Path) -> None:
    """Every kind of change under a read-only mount root (f: an existing file in it)."""
    for fn, args in [(open, (root / "new.txt", "wb")), (open, (f, "r+b")), (open, (f, "ab")),
                     (os.mkdir, (root / "newdir",)), (os.unlink, (f,)), (os.rmdir, (root / "extra",)),
                     (os.rename, (f, root / "moved.jpg")), (os.chmod, (f, 0o600)), (os.truncate, (f, 0)),
                     (os.utime, (f, (1, 1))), (os.symlink, ("x", root / "link")),
                     (os.setxattr, (f, "user.x", b"1")), (os.mkfifo, (root / "fifo",))]:
        assert errno_of(fn, *args) == errno.EROFS, (fn.__name__, args)
    assert not os.access(f, os.W_OK)
    assert os.access(f, os.R_OK)
    assert not os.access(f, os.X_OK) and os.access(root, os.X_OK)  # 0444 files, 0555 directories
    fd = os.open(f, os.O_RDONLY | os.O_APPEND)  # cannot write: a plain read
    try:
        assert os.read(fd, 1) or os.stat(f).st_size == 0
    finally:
        os.close(fd)


def wait_for(cond, timeout=10.0, step=0.05):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(step)
    return cond()
