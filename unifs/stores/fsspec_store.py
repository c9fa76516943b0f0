"""A Store over any fsspec filesystem (s3fs, gcsfs, adlfs, hdfs, file, memory ...)."""

from __future__ import annotations

import datetime as _dt
import logging
import os
import posixpath
from typing import Any, Optional

import fsspec
from fsspec.core import url_to_fs

from unifs.errors import ObjectChanged, ObjectNotFound
from unifs.stores.base import Listing, ObjectInfo
from unifs.stores.retry import call_store

log = logging.getLogger("unifs.store")

_BUCKET_SCHEMES = {"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl"}
_GCS_SCHEMES = {"gs", "gcs"}
_AZ_SCHEMES = {"az", "abfs", "abfss"}


def _to_ts(v) -> float:
    if v is None:
        return 0.0
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, _dt.datetime):
        return v.timestamp()
    if isinstance(v, str):
        try:
            return _dt.datetime.fromisoformat(v.replace("Z", "+00:00")).timestamp()
        except ValueError:
            return 0.0
    return 0.0


def info_to_object(key: str, info: dict) -> ObjectInfo:
    mtime = next((_to_ts(info[k]) for k in ("LastModified", "mtime", "last_modified", "updated",
                                            "modified", "created") if info.get(k)), 0.0)
    # gcsfs: "generation" identifies the content (reads pin it); its "etag" also changes
    # on metadata-only updates. Only gcsfs results carry "generation".
    etag = next((str(info[k]) for k in ("ETag", "generation", "etag", "md5Hash") if info.get(k)), None)
    version = next((str(info[k]) for k in ("VersionId", "version_id", "generation") if info.get(k)), None)
    if etag is None and info.get("ino") and info.get("mtime"):
        # local files: inode, size and mtime stand in for an ETag, so an unchanged file
        # keeps the kernel page cache across opens
        etag = f"local-{info['ino']}-{info.get('size')}-{info['mtime']}"
    return ObjectInfo(key=key, size=int(info.get("size") or 0), mtime=mtime, etag=etag, version=version)


def _quoted(etag):
    """Azure's SDK lists ETags bare, adlfs' info() quotes them: one form for both."""
    return f'"{etag.strip(chr(34))}"' if etag else None


def _s3_defaults(options: dict, timeout: float, connect_timeout: float) -> dict:
    opts = dict(options)
    opts.setdefault("use_listings_cache", False)
    cfg = dict(opts.get("config_kwargs") or {})
    cfg.setdefault("connect_timeout", connect_timeout)
    cfg.setdefault("read_timeout", timeout)
    cfg.setdefault("retries", {"max_attempts": 1, "mode": "standard"})
    opts["config_kwargs"] = cfg
    return opts


class FsspecStore:
    def __init__(self, url: str, options: dict[str, Any], timeout: float = 30.0,
                 connect_timeout: float = 5.0, retries: int = 3):
        self.url = url
        self.scheme = url.split("://", 1)[0].lower()
        opts = dict(options)
        if self.scheme in ("s3", "s3a"):
            opts = _s3_defaults(opts, timeout, connect_timeout)
        opts.setdefault("skip_instance_cache", True)
        if self.scheme in _BUCKET_SCHEMES:
            # unifs caches metadata itself (metadata_ttl); fsspec's listings cache never
            # expires and answers info() from stale listings (gcsfs, adlfs).
            opts.setdefault("use_listings_cache", False)
        try:
            if self.scheme in _GCS_SCHEMES and opts.get("endpoint_url") \
                    and "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT" not in os.environ:
                # gcsfs' default ("extended") class asks the Storage Control gRPC API about
                # every bucket; an emulator or proxy endpoint does not serve it, and each
                # bucket then stalls ~20-60 s and fails. The core class is plain JSON API.
                from gcsfs.core import GCSFileSystem
                self.fs = GCSFileSystem(**opts)
                root = self.fs._strip_protocol(url)
            else:
                self.fs, root = url_to_fs(url, **opts)
        except TypeError as e:
            from unifs.errors import UserError
            raise UserError(f"{url}: invalid option for the {self.scheme}:// backend: {e}") from None
        self.root = root.rstrip("/")
        if self.scheme in ("s3", "s3a"):
            # unifs retries itself (tenacity); nested retry loops would multiply the wait
            self.fs.retries = 1
        self.timeout = timeout
        self.retries = retries
        self._async = bool(getattr(self.fs, "async_impl", False))

    # -- helpers ---------------------------------------------------------
    def _path(self, key: str) -> str:
        return f"{self.root}/{key}" if key else self.root

    def _call(self, what: str, fn, *args, **kwargs):
        if self._async:
            # fsspec's sync() takes the timeout itself: a dead store cannot hang a reader.
            kwargs["timeout"] = self.timeout
        return call_store(self.retries, what, fn, *args, **kwargs)

    # -- Store protocol ----------------------------------------------------
    def check(self) -> None:
        if self.scheme in ("file", "local"):
            if not self.fs.isdir(self.root or "/"):
                what = "is not a directory" if self.fs.exists(self.root) else "does not exist"
                raise ObjectNotFound(f"local directory {self.root} {what}")
            return
        try:
            self._call(f"list {self.url}", self.fs.ls, self._path(""), detail=False)
        except ObjectNotFound:
            if self.scheme in _BUCKET_SCHEMES:
                bucket = self.root.split("/", 1)[0]
                try:
                    self._call(f"list {self.scheme}://{bucket}", self.fs.ls, bucket, detail=False)
                except ObjectNotFound:
                    raise ObjectNotFound(f"bucket or container '{bucket}' does not exist") from None

    def head(self, key: str) -> Optional[ObjectInfo]:
        try:
            info = self._call(f"stat {key}", self.fs.info, self._path(key))
        except ObjectNotFound:
            return None
        if info.get("type") == "directory":
            return None
        return info_to_object(key, info)

    def is_dir(self, key: str) -> bool:
        if not key:
            return True
        try:
            info = self._call(f"stat {key}/", self.fs.info, self._path(key))
        except ObjectNotFound:
            return False
        return info.get("type") == "directory"

    def list_dir(self, key: str) -> Listing:
        if self.scheme in _AZ_SCHEMES:
            return self._call(f"list {key or '/'}", self._az_list_dir, key)
        path = self._path(key)
        entries = self._call(f"list {key or '/'}", self.fs.ls, path, detail=True)
        out = Listing()
        base = path.rstrip("/")
        for e in entries:
            name = str(e.get("name", "")).rstrip("/")
            if name == base or not name:
                continue
            leaf = posixpath.basename(name)
            if not leaf:
                continue
            child = f"{key}/{leaf}" if key else leaf
            if e.get("type") == "directory":
                out.dirs.add(leaf)
            else:
                out.files[leaf] = info_to_object(child, e)
        return out

    def get_range(self, key: str, start: int, end: int, etag: Optional[str] = None) -> bytes:
        if end <= start:
            return b""
        if self.scheme in ("s3", "s3a") and etag:
            return self._call(f"read {key}", self._s3_get_if_match, key, start, end, etag)
        if self.scheme in _GCS_SCHEMES and etag and etag.isdigit():
            # pinned to the generation seen at open: a replaced object reads as not found
            try:
                return self._call(f"read {key}", self.fs.cat_file, self._path(key), start=start,
                                  end=end, generation=etag)
            except ObjectNotFound:
                raise ObjectChanged(f"read {key}: object replaced or deleted in the store while open; "
                                    "reopen it") from None
        if self.scheme in _AZ_SCHEMES and etag:
            return self._call(f"read {key}", self._az_get_if_match, key, start, end, etag)
        return self._call(f"read {key}", self.fs.cat_file, self._path(key), start=start, end=end)

    def _s3_get_if_match(self, key, start, end, etag, timeout=None):
        async def _get():
            bucket, k, _ = self.fs.split_path(self._path(key))
            resp = await self.fs._call_s3("get_object", Bucket=bucket, Key=k,
                                          Range=f"bytes={start}-{end - 1}", IfMatch=etag)
            try:
                return await resp["Body"].read()
            finally:
                resp["Body"].close()
        return fsspec.asyn.sync(self.fs.loop, _get, timeout=timeout)

    def _az_get_if_match(self, key, start, end, etag, timeout=None):
        """adlfs' cat_file takes no conditions; download with If-Match through its client."""
        from azure.core import MatchConditions

        async def _get():
            container, blob, _ = self.fs.split_path(self._path(key))
            async with self.fs.service_client.get_blob_client(container=container, blob=blob) as bc:
                stream = await bc.download_blob(offset=start, length=end - start, etag=etag,
                                                match_condition=MatchConditions.IfNotModified,
                                                **self.fs._timeout_kwargs)
                return await stream.readall()
        return fsspec.asyn.sync(self.fs.loop, _get, timeout=timeout)

    def _az_list_dir(self, key, timeout=None):
        """One delimited listing through adlfs' client. adlfs' ls() takes a directory
        marker blob ("dir/") for the directory itself and then hides its children."""
        from azure.storage.blob.aio import BlobPrefix

        async def _walk():
            container, path, _ = self.fs.split_path(self._path(key))
            path = path.strip("/")
            prefix = f"{path}/" if path else ""
            out = Listing()
            async with self.fs.service_client.get_container_client(container) as cc:
                async for item in cc.walk_blobs(name_starts_with=prefix or None, include=["metadata"],
                                                delimiter="/"):
                    leaf = item.name[len(prefix):].rstrip("/")
                    if not leaf or "/" in leaf:
                        continue  # the directory's own marker blob
                    meta = {k.lower(): v for k, v in (getattr(item, "metadata", None) or {}).items()}
                    if isinstance(item, BlobPrefix) or item.name.endswith("/") \
                            or meta.get("hdi_isfolder") == "true" or meta.get("is_directory") == "true":
                        out.dirs.add(leaf)
                        continue
                    out.files[leaf] = ObjectInfo(
                        key=f"{key}/{leaf}" if key else leaf, size=int(item.size or 0),
                        mtime=_to_ts(item.last_modified), etag=_quoted(item.etag),
                        version=getattr(item, "version_id", None))
            # a name can be both a blob and a prefix ("a" and "a/b"): the directory wins
            for d in out.dirs:
                out.files.pop(d, None)
            return out
        return fsspec.asyn.sync(self.fs.loop, _walk, timeout=timeout)

    def close(self) -> None:
        pass
