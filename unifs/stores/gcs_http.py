"""GCS ranged reads over urllib3 threads instead of gcsfs' one event loop.

gcsfs runs every request on a single asyncio thread; in the daemon that thread
competes with the FUSE callbacks for the GIL. urllib3 releases the GIL while it
waits on sockets, so 16 read-ahead threads overlap. Measured on fake-gcs-server,
16 threads, same run: 8 MiB ranges 1,011 MiB/s vs gcsfs 615 MiB/s; 100 KiB objects
2,200 vs 1,956 GETs/s. Listing, HEAD and writes stay on gcsfs, and so do its
credentials: each request carries the headers gcsfs would send.
"""

from __future__ import annotations

from typing import Optional
from urllib.parse import quote

import urllib3

from unifs.errors import AccessDenied, ObjectChanged, ObjectNotFound, StoreUnavailable


class GcsRangeReader:
    def __init__(self, fs, timeout: float, connect_timeout: float):
        self.fs = fs  # a GCSFileSystem: endpoint and credentials
        self.http = urllib3.PoolManager(maxsize=64, retries=False,
                                        timeout=urllib3.Timeout(connect=connect_timeout, read=timeout))

    def get(self, bucket: str, key: str, start: int, end: int, generation: Optional[str],
            timeout: Optional[float] = None) -> bytes:
        """timeout: accepted for the fsspec call convention; urllib3 applies its own per request."""
        url = f"{self.fs._location}/download/storage/v1/b/{quote(bucket, safe='')}/o/{quote(key, safe='')}?alt=media"
        if generation:
            url += f"&generation={generation}"
        headers = self.fs._get_headers({"Range": f"bytes={start}-{end - 1}"})
        try:
            resp = self.http.request("GET", url, headers=headers, preload_content=True)
        except urllib3.exceptions.HTTPError as e:
            raise StoreUnavailable(f"read {key}: {type(e).__name__}") from None
        if resp.status in (200, 206):
            return resp.data if resp.status == 206 else resp.data[start:end]
        if resp.status == 404:
            if generation:
                raise ObjectChanged(f"read {key}: object replaced or deleted in the store while open; reopen it")
            raise ObjectNotFound(f"read {key}: not found")
        if resp.status in (401, 403):
            raise AccessDenied(f"read {key}: access denied by the store (HTTP {resp.status})")
        if resp.status in (412, 416):
            raise ObjectChanged(f"read {key}: object changed in the store while open; reopen it")
        raise StoreUnavailable(f"read {key}: HTTP {resp.status}")
