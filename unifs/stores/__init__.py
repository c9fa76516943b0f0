"""Store construction from a mount-table entry."""

from __future__ import annotations

import logging
import os

from unifs.config import MountEntry, StoreSettings
from unifs.errors import UserError
from unifs.stores.base import Listing, ObjectInfo, Store

log = logging.getLogger("unifs.store")

__all__ = ["Listing", "ObjectInfo", "Store", "open_store"]


def open_store(entry: MountEntry, settings: StoreSettings) -> Store:
    scheme = entry.url.split("://", 1)[0].lower()
    common = dict(timeout=settings.timeout, connect_timeout=settings.connect_timeout,
                  retries=settings.retries)
    from unifs.stores.fsspec_store import FsspecStore

    options = _with_env_endpoint(entry.options) if scheme in ("s3", "s3a") else entry.options
    if scheme in ("s3", "s3a") and entry.client in ("auto", "obstore"):
        from unifs.stores.obstore_s3 import ObstoreS3Store, map_s3_options, s3fs_options

        cfg = map_s3_options(options)
        if cfg is not None:
            log.debug("mount %s: S3 data path through obstore", entry.path)
            return ObstoreS3Store(entry.url, cfg, **common,
                                  fallback=lambda: FsspecStore(entry.url, s3fs_options(options), **common))
        if entry.client == "obstore":
            from unifs.stores.obstore_s3 import unmappable_s3_option

            bad = unmappable_s3_option(entry.options)
            hint = " (did you mean endpoint_url?)" if bad == "endpoint" else ""
            raise UserError(f"mount {entry.path}: option '{bad}' has no obstore equivalent{hint}; "
                            "remove it or use client: fsspec (or auto)")
    if scheme in ("http", "https"):
        from unifs.stores.http_store import HttpStore

        return HttpStore(entry.url, entry.options, **common)
    return FsspecStore(entry.url, options, **common)


_ENDPOINT_VARS = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_ENDPOINT")


def _with_env_endpoint(options: dict) -> dict:
    """An S3 endpoint from the environment, given to every client alike: obstore refused an
    http:// one it read itself (no allow_http: "builder error"), and botocore, behind the
    listings of directory renames, knows no AWS_ENDPOINT and went to AWS instead."""
    if options.get("endpoint_url") or (options.get("client_kwargs") or {}).get("endpoint_url"):
        return options
    found = next((os.environ[v] for v in _ENDPOINT_VARS if os.environ.get(v)), None)
    return dict(options, endpoint_url=found) if found else options
