"""One provider per store kind: where its data lives and how a mount entry reaches it.

The conformance tests run unchanged against every provider through a real mount.
"""

from __future__ import annotations

import os
from pathlib import Path


class Provider:
    name = ""
    inprocess = False  # mount from a thread of the test process (memory://)

    def url(self, prefix: str) -> str:
        raise NotImplementedError

    def options(self) -> dict:
        return {}

    def put_many(self, items: dict[str, bytes]) -> None:
        raise NotImplementedError

    def make_root(self, prefix: str) -> None:
        """An empty root for a writable mount (stores with real directories need one)."""

    def entry(self, path: str, prefix: str, **extra) -> dict:
        e = {"path": path, "url": self.url(prefix)}
        if self.options():
            e["options"] = self.options()
        e.update(extra)
        return e


class S3Provider(Provider):
    name = "s3"

    def __init__(self, server, bucket: str):
        self.server, self.bucket = server, bucket
        server.create_bucket(bucket)

    def url(self, prefix):
        return f"s3://{self.bucket}/{prefix}".rstrip("/")

    def options(self):
        return self.server.mount_options()

    def put_many(self, items):
        self.server.put_many(self.bucket, items)


class FileProvider(Provider):
    name = "file"

    def __init__(self, root: Path):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def url(self, prefix):
        return f"file://{self.root / prefix}".rstrip("/")

    def make_root(self, prefix):
        (self.root / prefix).mkdir(parents=True, exist_ok=True)

    def put_many(self, items):
        for key, data in items.items():
            p = self.root / key
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(data)
        os.sync()


class GCSProvider(S3Provider):
    name = "gcs"

    def url(self, prefix):
        return f"gs://{self.bucket}/{prefix}".rstrip("/")


class AzureProvider(S3Provider):
    name = "azure"

    def url(self, prefix):
        return f"abfs://{self.bucket}/{prefix}".rstrip("/")


class MemoryProvider(Provider):
    """fsspec's memory:// lives in one process, so its mounts are served in-process."""

    name = "memory"
    inprocess = True

    def __init__(self, root: str):
        import fsspec

        self.root = root
        self.fs = fsspec.filesystem("memory")

    def url(self, prefix):
        return f"memory://{self.root}/{prefix}".rstrip("/")

    def put_many(self, items):
        self.fs.pipe({f"/{self.root}/{k}": v for k, v in items.items()})

    def make_root(self, prefix):
        self.fs.makedirs(f"/{self.root}/{prefix}", exist_ok=True)


class HttpProvider(FileProvider):
    """A directory served by Python's http.server: a read-only http:// mount."""

    name = "http"

    def __init__(self, root: Path, port: int):
        super().__init__(root)
        self.port = port

    def url(self, prefix):
        return f"http://127.0.0.1:{self.port}/{prefix}/".replace("//", "/").replace("http:/", "http://")
