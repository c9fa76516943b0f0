"""A Store over any fsspec filesystem (s3fs, gcsfs, adlfs, hdfs, file, memory ...)."""

from __future__ import annotations

import asyncio
import datetime as _dt
import email.utils
import logging
import os
import posixpath
import re
from typing import Any, Optional

import fsspec
from fsspec.core import url_to_fs

from unifs.errors import ObjectNotFound, object_root_error
from unifs.paths import under
from unifs.stores.base import Listing, ObjectInfo, not_utf8
from unifs.stores.probe import probe_endpoint
from unifs.stores.retry import backoff_s, breaker_for, call_store, call_store_first, is_transient

log = logging.getLogger("unifs.store")

_BUCKET_SCHEMES = {"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl"}
_GCS_SCHEMES = {"gs", "gcs"}
_AZ_SCHEMES = {"az", "abfs", "abfss"}
_LOCAL_SCHEMES = {"file", "local"}
UPLOAD_PART = 8 * 1024 * 1024
LIST_PAGES_BOUND = 20
_EMPTY_SEGMENT = "a key with an empty, '.' or '..' path segment cannot be a file name"
_MISREAD = re.compile(r"[?#\t\n\r]")  # characters some clients parse out of a path (name_problem)


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
            pass
        try:  # an HTTP date (a web server's Last-Modified)
            return email.utils.parsedate_to_datetime(v).timestamp()
        except (TypeError, ValueError):
            return 0.0
    return 0.0


def info_to_object(key: str, info: dict) -> ObjectInfo:
    mtime = next((_to_ts(info[k]) for k in ("LastModified", "mtime", "last_modified", "updated",
                                            "modified", "created", "Last-Modified") if info.get(k)), 0.0)
    # gcsfs: "generation" identifies the content (reads pin it); its "etag" also changes
    # on metadata-only updates. Only gcsfs results carry "generation".
    etag = next((str(info[k]) for k in ("ETag", "generation", "etag", "md5Hash") if info.get(k)), None)
    version = next((str(info[k]) for k in ("VersionId", "version_id", "generation") if info.get(k)), None)
    if etag is None and info.get("ino") and info.get("mtime"):
        # local files: inode, size, mtime and ctime stand in for an ETag, so an unchanged file
        # keeps the kernel page cache across opens; ctime because `cp -p` and `touch -r` put an
        # old mtime back after rewriting a file in place, and nobody can set the ctime
        etag = f"local-{info['ino']}-{info.get('size')}-{info['mtime']}-{info.get('created')}"
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


# gcsfs and the Azure SDK retry inside each call (gcsfs: 6 attempts 1-32 s apart, a count fixed
# when gcsfs is imported; Azure: 3 retries 15 s and more apart) and wait long to connect or read
# (gcsfs: no limit; Azure: 20 s and 60 s). Under unifs' per-call timeout a refused connection
# then ran into that timeout on every attempt instead of failing at once. unifs retries itself
# (tenacity, `store: retries`), so the clients make one attempt per call, with `store: timeout`
# and `connect_timeout` as their socket timeouts unless the mount's options set the client's own
# (gcsfs `requests_timeout`; adlfs `connection_timeout`, `read_timeout`).

def _gcs_defaults(options: dict, timeout: float, connect_timeout: float) -> dict:
    import aiohttp

    opts = dict(options)
    # per request; gcsfs passes it to aiohttp and None there means no limit at all. No total:
    # an upload or a big read may take longer than one socket wait.
    opts.setdefault("requests_timeout", aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout,
                                                              sock_read=timeout))
    # the Storage Control retries of gcsfs' extended class (bucket layout lookups)
    opts.setdefault("retry_timeout", timeout)
    return opts


def _gcs_single_attempt(fs, upload_retries: int) -> None:
    """gcsfs' request methods on this instance without its retry_request decorator: one attempt,
    except for the requests of an upload, which get `upload_retries` more (see _gcs_once).
    (retry_request(retries=1) would also do one attempt, but logs a traceback for each failure.)"""
    for name in ("_request", "_get_file_request", "_get_file_concurrent"):
        inner = getattr(getattr(type(fs), name, None), "__wrapped__", None)
        if inner is None:
            (log.warning if name == "_request" else log.debug)(
                "gcsfs %s has no retry wrapper to replace: gcsfs keeps retrying inside each call", name)
            continue
        setattr(fs, name, _gcs_once(inner, upload_retries if name == "_request" else 0).__get__(fs))


def _is_gcs_upload(args) -> bool:
    # (fs, method, path): a simple or resumable upload's start, or one chunk of a resumable upload
    return len(args) >= 3 and args[1] in ("POST", "PUT") and "/upload/storage/v1/" in str(args[2])


def _gcs_once(inner, upload_retries: int):
    async def once(*args, **kwargs):
        attempt = 0
        while True:
            try:
                return await inner(*args, **kwargs)
            except Exception as e:
                # the one error retry_request rewrites: keep its hint
                msg = getattr(e, "message", None)
                if getattr(e, "code", None) == 400 and isinstance(msg, str) and "requester pays" in msg:
                    raise ValueError("Bucket is requester pays. Set `requester_pays: true` in the mount's "
                                     "options.") from e
                # A resumable upload sends its chunks one after another; a chunk that failed is
                # sent again (gcsfs seeks its data back) rather than the whole upload.
                attempt += 1
                if attempt > upload_retries or not _is_gcs_upload(args) or not is_transient(e):
                    raise
                log.warning("upload request failed (attempt %d of %d): %s; retrying", attempt,
                            upload_retries + 1, e)
                await asyncio.sleep(backoff_s(attempt))
    return once


def _az_defaults(options: dict, timeout: float, connect_timeout: float) -> dict:
    opts = dict(options)
    # adlfs passes these to its uploads and downloads; _az_bound applies them to every call
    opts.setdefault("connection_timeout", connect_timeout)
    opts.setdefault("read_timeout", timeout)
    return opts


def _az_bound(fs) -> None:
    """One attempt per call, with the connection_timeout / read_timeout options, on the client
    every adlfs and unifs call goes through. adlfs builds its BlobServiceClient itself and passes
    it no retry or timeout settings (adlfs applies its timeout options to uploads and downloads
    only), so they are set on the client's retry policy and transport, which its container and
    blob clients share."""
    client = getattr(fs, "service_client", None)
    config = getattr(client, "_config", None)
    retry = getattr(config, "retry_policy", None)
    conn = getattr(getattr(config, "transport", None), "connection_config", None)
    if retry is None or conn is None:
        log.warning("Azure client without the expected retry policy and transport: the Azure SDK "
                    "keeps retrying inside each call")
        return
    for attr in ("total_retries", "connect_retries", "read_retries", "status_retries"):
        setattr(retry, attr, 0)
    # uploads alone retry inside the SDK (put_file passes retry_total), each block on its own;
    # with unifs' backoff, not the SDK's 15 s and more
    retry.get_backoff_time = lambda settings: backoff_s(max(1, settings.get("count", 1)))
    # blocks of one part size as on S3, uploaded in parallel, above one block (SDK: 64 MiB in one
    # request, whose failure costs all of it)
    config.max_single_put_size = UPLOAD_PART
    config.max_block_size = UPLOAD_PART
    # each block read into memory: a retried block needs its data again, and aiohttp closes
    # the SDK's file-backed block streams after the first send ("Stream is closed")
    config.use_byte_buffer = True
    given = getattr(fs, "_timeout_kwargs", {})
    conn.timeout = given.get("connection_timeout", conn.timeout)
    conn.read_timeout = given.get("read_timeout", conn.read_timeout)


def _quiet_orphan_tasks(loop) -> None:
    """A failed upload of the Azure SDK (parallel block uploads) leaves its other tasks'
    exceptions unretrieved, and asyncio logged a 26-line traceback for each: the failure itself
    is reported once, by the upload that saw it."""
    def handler(lp, context):
        if "never retrieved" in str(context.get("message", "")):
            log.debug("store client: %s: %s", context.get("message"), context.get("exception"))
        else:
            lp.default_exception_handler(context)
    loop.set_exception_handler(handler)


class FsspecStore:
    def __init__(self, url: str, options: dict[str, Any], timeout: float = 30.0,
                 connect_timeout: float = 5.0, retries: int = 3):
        self.url = url
        self.scheme = url.split("://", 1)[0].lower()
        opts = dict(options)
        if self.scheme in ("s3", "s3a"):
            opts = _s3_defaults(opts, timeout, connect_timeout)
        elif self.scheme in _GCS_SCHEMES:
            opts = _gcs_defaults(opts, timeout, connect_timeout)
        elif self.scheme in _AZ_SCHEMES:
            opts = _az_defaults(opts, timeout, connect_timeout)
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
        elif self.scheme in _GCS_SCHEMES:
            _gcs_single_attempt(self.fs, retries)
        elif self.scheme in _AZ_SCHEMES:
            _az_bound(self.fs)
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.retries = retries
        # a local file system does not stall the way a store behind a network does
        self.breaker = None if self.scheme in _LOCAL_SCHEMES else breaker_for(timeout)
        self._gcs = None
        self._async = bool(getattr(self.fs, "async_impl", False))
        if self._async and getattr(self.fs, "loop", None) is not None:
            _quiet_orphan_tasks(self.fs.loop)
        self.has_dirs = self.scheme not in _BUCKET_SCHEMES
        self._hidden: set[str] = set()  # names not listed (name_problem), each logged once

    # -- helpers ---------------------------------------------------------
    def _path(self, key: str) -> str:
        return f"{self.root}/{key}" if key else self.root

    def name_problem(self, key: str) -> Optional[str]:
        # adlfs reads a URL query and fragment out of a path ("x?" and "x#" lose their last
        # character, "a?versionid=1" is "a") and urllib drops tabs and newlines from it; s3fs
        # takes "?versionId=": that name would write, read or delete another object
        if self.scheme in _AZ_SCHEMES and "\\" in key:
            # Azure Blob Storage (and Azurite) store a backslash as '/': "a\b" became file b in
            # directory a, and the name written was gone
            return "Azure Blob Storage turns '\\' in a name into '/'"
        if self.scheme in _LOCAL_SCHEMES or self.scheme == "memory":
            return None
        if not_utf8(key):
            return not_utf8(key)
        if not _MISREAD.search(key):
            return None
        split = getattr(self.fs, "split_path", None)
        if split is None:
            return None
        path = self._path(key)
        try:
            bucket, obj = split(path)[:2]
        except Exception:  # noqa: BLE001 - a client that cannot parse it cannot address it
            return f"{self.scheme}:// client cannot parse this name"
        if f"{bucket}/{obj}" != path:
            return f"the {self.scheme}:// client would take this name for {obj.rpartition('/')[2]!r}"
        return None

    @property
    def _list_bound(self) -> float:
        """A listing is one request per page (1,000 keys on GCS, 5,000 on Azure), each bounded
        by the client's socket timeouts: the whole call gets LIST_PAGES_BOUND timeouts, not one
        (a 26,000-object directory on GCS with a 2 s timeout, 2.7 s in all, was EIO)."""
        return self.timeout * LIST_PAGES_BOUND

    def _call(self, what: str, fn, *args, _timeout: Optional[float] = None, _retries: Optional[int] = None,
              _first: bool = False, _breaker: bool = True, **kwargs):
        if self._async:
            # fsspec's sync() takes the timeout itself: a dead store cannot hang a reader.
            kwargs["timeout"] = _timeout or self.timeout
        retries = self.retries if _retries is None else _retries
        if _first:
            return call_store_first(retries, what, _timeout or self.timeout, fn, *args, **kwargs)
        return call_store(retries, what, fn, *args, breaker=self.breaker if _breaker else None, **kwargs)

    # -- Store protocol ----------------------------------------------------
    def check(self) -> None:
        if self.scheme in ("file", "local"):
            if not self.fs.isdir(self.root or "/"):
                what = "is not a directory" if self.fs.exists(self.root) else "does not exist"
                raise ObjectNotFound(f"local directory {self.root} {what}")
            return
        self._probe_endpoint()
        try:
            names = self._call(f"list {self.url}", self.fs.ls, self._path(""), detail=False, _first=True)
            if all(str(n).rstrip("/") == self.root for n in names):
                self._refuse_object_root()
        except ObjectNotFound:
            if self.scheme in _BUCKET_SCHEMES:
                bucket = self.root.split("/", 1)[0]
                try:
                    self._call(f"list {self.scheme}://{bucket}", self.fs.ls, bucket, detail=False)
                except ObjectNotFound:
                    raise ObjectNotFound(f"bucket or container '{bucket}' does not exist") from None

    def _refuse_object_root(self) -> None:
        """A URL naming an object (s3://bucket/train.tfrecord) would mount as an empty
        directory; nothing would say why the file is missing."""
        if "/" not in self.root and self.scheme in _BUCKET_SCHEMES:
            return
        try:
            info = self._call(f"stat {self.url}", self.fs.info, self.root)
        except ObjectNotFound:
            return
        if info.get("type") == "file" and info.get("size"):  # zero bytes: an old tool's folder
            raise object_root_error(info.get("size"))

    def _probe_endpoint(self) -> None:
        """Left to themselves, gcsfs and the Azure SDK would retry each call for half a minute
        against a wrong endpoint (see _gcs_single_attempt and _az_bound)."""
        if self.scheme in _GCS_SCHEMES:
            url = getattr(self.fs, "_location", None)
        elif self.scheme in _AZ_SCHEMES:
            client = getattr(self.fs, "service_client", None)
            url = getattr(client, "url", None) or getattr(self.fs, "account_url", None)
        elif self.scheme in ("s3", "s3a"):
            url = getattr(self.fs, "endpoint_url", None)
        else:
            return
        if url:
            probe_endpoint(url, self.connect_timeout)

    # -- file:// links and special files --------------------------------------
    def _outside(self, key: str) -> Optional[str]:
        """Why a local path is not served. A symbolic link is followed when it leads to a file
        inside the mounted directory; not to a directory: `rm -r` of such a link deleted the
        files it pointed at, and `dir -> .` made a tree 40 levels deep. Not out of the mounted
        directory (with allow_other every user could read what it points at), nor dangling.
        Only the last component is looked at: a lookup reaches a path one name at a time, and
        directory links are never found, so none can be in the middle."""
        if self.scheme not in _LOCAL_SCHEMES or not key:
            return None
        path = self._path(key)
        if not os.path.islink(path):
            return None
        real = os.path.realpath(path)
        if not under(real, os.path.realpath(self.root or "/")):
            return "a symbolic link out of the mounted directory"
        if os.path.isdir(real):
            return "a symbolic link to a directory"
        if not os.path.isfile(real):
            return "a symbolic link to nothing, or to no regular file"
        return None

    def _local_entry(self, key: str, e: dict) -> Optional[dict]:
        """A listing entry as its link's target, or None for what is not served (_outside;
        FIFOs, sockets and devices, whose reads would block or never end)."""
        if e.get("islink"):
            why = self._outside(key)
            if why is None:
                try:
                    e = {**self.fs.info(self._path(key)), "name": e.get("name")}
                except OSError:
                    why = "a symbolic link to nothing"
            if why:
                self._hide(key, why)
                return None
        if e.get("type") not in ("file", "directory"):
            self._hide(key, "not a regular file or directory")
            return None
        return e

    def head(self, key: str) -> Optional[ObjectInfo]:
        if self._outside(key):
            return None
        try:
            info = self._call(f"stat {key}", self.fs.info, self._path(key))
        except ObjectNotFound:
            return None
        if self.scheme in _LOCAL_SCHEMES and info.get("type") not in ("file", "directory"):
            return None
        if info.get("type") == "directory" or str(info.get("name", "")).endswith("/"):
            return None  # gcsfs answers with the "key/" marker object when there is no "key"
        return info_to_object(key, info)

    def is_dir(self, key: str) -> bool:
        if not key:
            return True
        if self.scheme in _BUCKET_SCHEMES:
            # the clients' info() answers "file" when an object of that name exists too (and
            # gcsfs for a "dir/" marker with data): ask for one key below the prefix instead
            return self._call(f"stat {key}/", self._has_children, key)
        if self._outside(key):
            return False
        try:
            info = self._call(f"stat {key}/", self.fs.info, self._path(key))
        except ObjectNotFound:
            return False
        return info.get("type") == "directory"

    def list_dir(self, key: str) -> Listing:
        return self._addressable(key, self._list_dir(key))

    def _addressable(self, key: str, listing: Listing) -> Listing:
        """The listing without objects this client would mistake for others (see name_problem):
        stat, read and delete of them would act on another object."""
        for leaf in [n for n in (*listing.files, *listing.dirs) if _MISREAD.search(n)]:
            child = f"{key}/{leaf}" if key else leaf
            problem = self.name_problem(child)
            if problem:
                listing.files.pop(leaf, None)
                listing.dirs.discard(leaf)
                self._hide(child, problem)
        return listing

    def _hide(self, key: str, why: str, level: int = logging.WARNING) -> None:
        if key not in self._hidden:
            self._hidden.add(key)
            log.log(level, "not shown: %r (%s)", key, why)

    def _list_dir(self, key: str) -> Listing:
        if self.scheme in _AZ_SCHEMES:
            return self._call(f"list {key or '/'}", self._az_list_dir, key, _timeout=self._list_bound)
        path = self._path(key)
        why = self._outside(key)
        if why:
            raise ObjectNotFound(f"{key}: {why}")
        entries = self._call(f"list {key or '/'}", self.fs.ls, path, detail=True, _timeout=self._list_bound)
        out = Listing()
        base = path.rstrip("/")
        for e in entries:
            raw = str(e.get("name", ""))
            name = raw.rstrip("/")
            if name == base or not name:
                if e.get("type") == "directory":
                    # gcsfs lists the prefix "dir//" as "dir" itself, and a marker object "dir/"
                    # the same way (nothing tells them apart): said quietly, once
                    self._hide(f"{key}//..." if key else "/...",
                               f"if there: {_EMPTY_SEGMENT}; or it is only the directory marker {key}/",
                               logging.INFO)
                continue
            leaf = posixpath.basename(name)
            if leaf in ("", ".", ".."):
                self._hide(f"{key}/{leaf}" if key else leaf, _EMPTY_SEGMENT)
                continue
            child = f"{key}/{leaf}" if key else leaf
            if self.scheme in _LOCAL_SCHEMES:
                e = self._local_entry(child, e)
                if e is None:
                    continue
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
            bucket, _, obj = self._path(key).partition("/")
            return self._call(f"read {key}", self._gcs_reader().get, bucket, obj, start, end, etag)
        if self.scheme in _AZ_SCHEMES and etag:
            return self._call(f"read {key}", self._az_get_if_match, key, start, end, etag)
        why = self._outside(key)
        if why:
            raise ObjectNotFound(f"{key}: {why}")
        return self._call(f"read {key}", self.fs.cat_file, self._path(key), start=start, end=end)

    def _gcs_reader(self):
        if self._gcs is None:
            from unifs.stores.gcs_http import GcsRangeReader
            self._gcs = GcsRangeReader(self.fs, self.timeout, self.connect_timeout)
        return self._gcs

    def _has_children(self, key, timeout=None) -> bool:
        bucket, k, _ = self.fs.split_path(self._path(key))
        prefix = k.rstrip("/") + "/"

        async def _probe():
            if self.scheme in _GCS_SCHEMES:
                res = await self.fs._call("GET", "b/{}/o", bucket, json_out=True, prefix=prefix, maxResults=1)
                return bool(res.get("items") or res.get("prefixes"))
            if self.scheme in _AZ_SCHEMES:
                from azure.core.exceptions import ResourceNotFoundError

                async with self.fs.service_client.get_container_client(bucket) as cc:
                    async def folder_blob():  # an ADLS folder: a zero-length blob with hdi_isfolder
                        try:
                            return _az_folder_blob(await cc.get_blob_client(k.rstrip("/")).get_blob_properties())
                        except ResourceNotFoundError:
                            return False

                    async def children():
                        async for _ in cc.list_blobs(name_starts_with=prefix, results_per_page=1):
                            return True
                        return False
                    return any(await asyncio.gather(folder_blob(), children()))
            res = await self.fs._call_s3("list_objects_v2", Bucket=bucket, Prefix=prefix, MaxKeys=1)
            return res.get("KeyCount", len(res.get("Contents", []))) > 0
        return fsspec.asyn.sync(self.fs.loop, _probe, timeout=timeout)

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
                    if not leaf or "/" in leaf or leaf in (".", ".."):
                        if item.name != prefix:  # not the directory's own marker blob
                            self._hide(item.name, _EMPTY_SEGMENT)
                        continue
                    meta = _az_meta(getattr(item, "metadata", None))
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

    # -- changes -------------------------------------------------------------
    def put_file(self, key: str, local_path: str) -> ObjectInfo:
        path = self._path(key)
        if self.scheme in _LOCAL_SCHEMES:
            self._call(f"write {key}", _atomic_local_copy, local_path, path)
        else:
            # a whole-upload bound: the request timeout plus 1 s per MiB
            limit = self.timeout + os.path.getsize(local_path) / (1 << 20)
            extra = {}
            if self.scheme in _AZ_SCHEMES:
                extra = {f"retry_{k}": self.retries for k in ("total", "connect", "read", "status")}
            # gcsfs and the Azure SDK retry each request of an upload (a chunk, a block) themselves;
            # starting the whole upload again is the last resort, once
            # not through the breaker: an upload slower than its bound is no sign of a stalled
            # store, and must not fail the reads; the background uploader has its own backoff
            self._call(f"upload {key}", self.fs.put_file, local_path, path, _timeout=limit,
                       _retries=min(self.retries, 1), _breaker=False, **extra)
        info = self.head(key)
        if info is None:
            raise ObjectNotFound(f"upload {key}: the store does not show the object after the upload")
        return info

    def delete(self, key: str) -> None:
        try:
            self._call(f"delete {key}", self.fs.rm_file, self._path(key))
        except ObjectNotFound:
            pass  # GCS and Azure fail here, S3 does not: deleting nothing succeeds everywhere

    # fsspec's copy() and mv() take ?, * and [ in a path as a glob pattern (a rename of 'a?b'
    # also took 'axb', and put both in a new directory): only single-path calls here
    def copy(self, src: str, dst: str) -> None:
        if self.scheme in _LOCAL_SCHEMES:
            self._call(f"copy {src} to {dst}", _atomic_local_copy, self._path(src), self._path(dst))
        else:
            # server-side copies of big objects take longer than one request
            self._call(f"copy {src} to {dst}", self.fs.cp_file, self._path(src), self._path(dst),
                       _timeout=self.timeout * 10)

    def move(self, src: str, dst: str) -> None:
        if self.scheme in _LOCAL_SCHEMES:
            self._call(f"rename {src} to {dst}", os.replace, self._path(src), self._path(dst))
        elif self.has_dirs:
            self._call(f"rename {src} to {dst}", self._move_path, self._path(src), self._path(dst))
        else:
            self.copy(src, dst)
            self.delete(src)

    def _move_path(self, src: str, dst: str, timeout=None) -> None:
        """A file or a whole directory of a store with real directories (memory://, hdfs://):
        its own rename where it has one (pyarrow's HDFS, sftp), else file by file."""
        if type(self.fs).mv is not fsspec.AbstractFileSystem.mv:
            self.fs.mv(src, dst)
            return
        if not self.fs.isdir(src):
            self.fs.cp_file(src, dst)
            self.fs.rm_file(src)
            return
        found = self.fs.find(src, withdirs=True, detail=True)  # find() takes no patterns
        below = {p: info for p, info in found.items() if p.rstrip("/") != src.rstrip("/")}
        dirs = sorted(p for p, info in below.items() if info["type"] == "directory")
        self.fs.makedirs(dst, exist_ok=True)
        for d in dirs:
            self.fs.makedirs(dst + d[len(src):], exist_ok=True)
        files = [p for p in below if p not in dirs]
        for f in files:
            self.fs.cp_file(f, dst + f[len(src):])
        for f in files:
            self.fs.rm_file(f)
        for d in list(reversed(dirs)) + [src]:
            try:
                self.fs.rmdir(d)
            except FileNotFoundError:
                pass  # implicit (memory:// makes no directory for a file written by path)

    def list_keys(self, prefix: str) -> list[str]:
        if self.scheme in _AZ_SCHEMES:
            return self._call(f"list {prefix or '/'}", self._az_list_keys, prefix, _timeout=self._list_bound)
        base = self._path(prefix).rstrip("/")
        found = self._call(f"list {prefix or '/'}", self.fs.find, base, detail=False, _timeout=self._list_bound)
        cut = len(self.root) + 1 if self.root else 0
        if self.has_dirs:
            return [str(p)[cut:] for p in found if str(p).rstrip("/") != base and not str(p).endswith("/")]
        # gcsfs and s3fs list "dir/" markers with their slash, the directory's own one too
        return [str(p)[cut:] for p in found if str(p) != base]

    def _az_list_keys(self, prefix, timeout=None):
        """Every blob below prefix + '/'; markers ("dir/" blobs, and the zero-length blobs
        with hdi_isfolder metadata that ADLS tools make) as "dir/". adlfs' find() lists
        neither kind with a slash."""
        async def _walk():
            container, path, _ = self.fs.split_path(self._path(prefix))
            path = path.strip("/")
            start = f"{path}/" if path else ""
            cut = len(self.root.partition("/")[2]) + 1 if "/" in self.root else 0
            out = []
            async with self.fs.service_client.get_container_client(container) as cc:
                async for item in cc.list_blobs(name_starts_with=start or None, include=["metadata"]):
                    name = item.name[cut:]
                    if _az_meta(item.metadata).get("hdi_isfolder") == "true" and not name.endswith("/"):
                        name += "/"
                    out.append(name)
                if path and f"{path[cut:]}/" not in out:  # the directory's own folder blob
                    from azure.core.exceptions import ResourceNotFoundError

                    try:
                        props = await cc.get_blob_client(path).get_blob_properties()
                    except ResourceNotFoundError:
                        props = None
                    if _az_folder_blob(props):
                        out.append(f"{path[cut:]}/")
            return out
        return fsspec.asyn.sync(self.fs.loop, _walk, timeout=timeout)

    def put_marker(self, key: str) -> None:
        self._call(f"mkdir {key}", self.fs.pipe_file, self._path(key) + "/", b"")

    def make_dir(self, key: str) -> bool:
        if self.scheme in _BUCKET_SCHEMES:
            return False  # directories exist through the keys below them
        self._call(f"mkdir {key}", self.fs.makedirs, self._path(key), exist_ok=True)
        return True

    def remove_dir(self, key: str) -> None:
        if self.scheme in _BUCKET_SCHEMES:
            # a marker other tools left ("dir/"; gcsfs, adlfs and s3fs address it with its
            # slash and leave an object "dir" alone) would keep the directory listed
            if key:
                self.delete(key + "/")
                if self.scheme in _AZ_SCHEMES:
                    self._call(f"rmdir {key}", self._az_remove_folder_blob, key)
            return
        try:
            self._call(f"rmdir {key}", self.fs.rmdir, self._path(key))
        except ObjectNotFound:
            pass

    def _az_remove_folder_blob(self, key, timeout=None):
        """ADLS tools mark a directory with a zero-length blob "dir" (no slash) whose metadata
        says hdi_isfolder=true; a file named "dir" is left alone."""
        from azure.core.exceptions import ResourceNotFoundError

        async def _rm():
            container, blob, _ = self.fs.split_path(self._path(key))
            async with self.fs.service_client.get_blob_client(container=container, blob=blob) as bc:
                try:
                    props = await bc.get_blob_properties()
                except ResourceNotFoundError:
                    return
                if _az_folder_blob(props):
                    try:
                        await bc.delete_blob()
                    except ResourceNotFoundError:
                        pass
        return fsspec.asyn.sync(self.fs.loop, _rm, timeout=timeout)

    def close(self) -> None:
        pass


def _az_meta(metadata) -> dict:
    """Blob metadata with lower-case names (Azure keeps the case they were written in)."""
    return {k.lower(): v for k, v in (metadata or {}).items()}


def _az_folder_blob(props) -> bool:
    """The zero-length blob "dir" (no slash) with hdi_isfolder=true that ADLS tools make for a
    directory; None (no such blob) is not one."""
    return props is not None and _az_meta(props.metadata).get("hdi_isfolder") == "true" and not props.size


def _atomic_local_copy(src: str, dst: str) -> None:
    """Readers of a local directory never see a half-written file. Its directory is made if
    missing, as an object store's keys need none: a file created in a directory that exists
    only as the parent of a nested mount point was never uploaded ("not found", for ever)."""
    import shutil
    import tempfile

    os.makedirs(os.path.dirname(dst), exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".unifs-", dir=os.path.dirname(dst))
    try:
        with os.fdopen(fd, "wb") as out, open(src, "rb") as inp:
            shutil.copyfileobj(inp, out, 1 << 20)
        os.chmod(tmp, 0o644)
        os.replace(tmp, dst)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
