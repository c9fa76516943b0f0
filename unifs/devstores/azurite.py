"""A local Azurite blob emulator on 127.0.0.1 for the tests, the demo and the benchmarks.

Azurite is an npm package; ``scripts/install-emulators.sh`` installs it into
``<repo>/.emulators/node_modules``. The launcher is looked up in this order:
the ``node_modules_dir`` argument's ``.bin/azurite-blob``, ``$UNIFS_AZURITE_BIN``,
``<repo>/.emulators/node_modules/.bin/azurite-blob``, then ``azurite-blob`` on PATH.

It serves the well-known development account ``devstoreaccount1`` with its
published key; adlfs (and azure-storage-blob) take the connection string from
`connection_string`. Objects live in memory (``--inMemoryPersistence``).
"""

from __future__ import annotations

import os
import shutil
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional

from unifs.devstores.process import LocalServer

ACCOUNT = "devstoreaccount1"
# The published Azurite / storage-emulator development key; not a secret.
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="

REPO = Path(__file__).resolve().parents[2]
DEFAULT_NODE_MODULES = REPO / ".emulators" / "node_modules"
INSTALL_HINT = "run scripts/install-emulators.sh (npm install azurite into .emulators/)"


def azurite_binary(node_modules_dir: Optional[str] = None) -> str:
    if node_modules_dir:
        b = Path(node_modules_dir) / ".bin" / "azurite-blob"
        if os.access(str(b), os.X_OK):
            return str(b)
        raise RuntimeError(f"azurite-blob not found in {node_modules_dir}/.bin: {INSTALL_HINT}")
    env = os.environ.get("UNIFS_AZURITE_BIN")
    if env:
        if os.access(env, os.X_OK):
            return env
        raise RuntimeError(f"$UNIFS_AZURITE_BIN={env} is not an executable file: {INSTALL_HINT}")
    for c in (DEFAULT_NODE_MODULES / ".bin" / "azurite-blob", shutil.which("azurite-blob")):
        if c and os.access(str(c), os.X_OK):
            return str(c)
    raise RuntimeError(f"the Azurite emulator (azurite-blob) was not found: {INSTALL_HINT}")


def connection_string(blob_endpoint: str, account: str = ACCOUNT, key: str = ACCOUNT_KEY) -> str:
    return (f"DefaultEndpointsProtocol=http;AccountName={account};AccountKey={key};"
            f"BlobEndpoint={blob_endpoint};")


class Azurite(LocalServer):
    name = "Azurite"
    stop_grace = 5.0

    def __init__(self, workdir: str, node_modules_dir: Optional[str] = None,
                 memory_limit_mb: int = 512):
        super().__init__(workdir)
        self.node_modules_dir = node_modules_dir
        self.memory_limit_mb = memory_limit_mb

    @property
    def endpoint(self) -> str:
        """The blob endpoint, account included (path-style, as Azurite serves it)."""
        return f"http://127.0.0.1:{self.port}/{ACCOUNT}"

    @property
    def connection_string(self) -> str:
        return connection_string(self.endpoint)

    def mount_options(self) -> dict:
        """Options for a mount-table entry (adlfs style)."""
        return {"connection_string": self.connection_string}

    # -- lifecycle (LocalServer) -------------------------------------------
    def _command(self) -> list[str]:
        cmd = [azurite_binary(self.node_modules_dir), "--blobHost", "127.0.0.1", "--blobPort", str(self.port),
               "--inMemoryPersistence", "--disableTelemetry", "--skipApiVersionCheck", "--loose", "--silent"]
        if self.memory_limit_mb:
            cmd += ["--extentMemoryLimit", str(self.memory_limit_mb)]
        return cmd

    def _log_path(self) -> Path:
        return self.workdir / "azurite.log"

    def _cwd(self) -> Path:
        # Azurite refuses --location together with --inMemoryPersistence; whatever it
        # still writes (e.g. a debug log) goes to its working directory, kept here.
        location = self.workdir / "azurite"
        location.mkdir(parents=True, exist_ok=True)
        return location

    def _answers(self) -> bool:
        try:
            # anonymous, so Azurite refuses it; an Azure-style answer means it serves
            urllib.request.urlopen(f"{self.endpoint}?comp=list", timeout=2).close()
            return True
        except urllib.error.HTTPError as e:
            return "x-ms-request-id" in {k.lower() for k in e.headers.keys()}

    # -- data helpers -----------------------------------------------------
    def service_client(self):
        from azure.storage.blob import BlobServiceClient

        return BlobServiceClient.from_connection_string(self.connection_string)

    def create_container(self, name: str) -> None:
        from azure.core.exceptions import ResourceExistsError

        try:
            self.service_client().create_container(name)
        except ResourceExistsError:
            pass

    create_bucket = create_container

    def put_many(self, container: str, items: dict[str, bytes], threads: int = 16) -> None:
        """Upload many blobs quickly (azure-storage-blob from a thread pool)."""
        cc = self.service_client().get_container_client(container)
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(lambda kv: cc.upload_blob(kv[0], bytes(kv[1]), overwrite=True), items.items()))

    def fs(self, **kwargs):
        """An adlfs file system on the emulator (no instance cache)."""
        from adlfs import AzureBlobFileSystem

        opts = dict(self.mount_options(), skip_instance_cache=True)
        opts.update(kwargs)
        return AzureBlobFileSystem(**opts)
