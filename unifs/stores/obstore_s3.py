"""S3 data path through obstore (Rust object_store): ~8x the small-GET rate of s3fs here.

The user still writes s3fs-style options; `map_s3_options` translates the ones
obstore understands and returns None for anything it does not, so the caller
falls back to s3fs rather than silently dropping an option.
"""

from __future__ import annotations

import datetime as _dt
import functools
import logging
import os
import time
from pathlib import Path
from typing import Any, Optional

import obstore
from obstore.store import S3Store

from unifs.errors import ObjectNotFound, StoreRejected, object_root_error
from unifs.stores.base import Listing, ObjectInfo, not_utf8
from unifs.stores.probe import probe_endpoint
from unifs.stores.retry import breaker_for, call_store, call_store_first

log = logging.getLogger("unifs.store")

PART_SIZE = 8 * 1024 * 1024
MAX_PARTS = 10_000  # S3 refuses part numbers above this: 8 MiB parts end at 78 GiB
PARTS_IN_FLIGHT_BYTES = 64 * 1024 * 1024  # an upload's parts held in memory at once
SMALL_BODY = 64 * 1024

_PASSTHROUGH = {"skip_instance_cache", "use_listings_cache", "listings_expiry_time", "default_block_size",
                "default_fill_cache", "default_cache_type", "max_concurrency"}


def upload_parts(size: int) -> tuple[int, int]:
    """(part size, parts in flight) of a multipart upload of size bytes: PART_SIZE, or whole
    MiB large enough that the parts fit under MAX_PARTS (a 100 GiB checkpoint takes 11 MiB
    parts); fewer parts in flight when they are large, so memory stays near the same bound."""
    mib = 1 << 20
    part = max(PART_SIZE, -(-size // MAX_PARTS))
    part = -(-part // mib) * mib
    return part, max(2, min(8, PARTS_IN_FLIGHT_BYTES // part))


def map_s3_options(options: dict[str, Any]) -> Optional[dict[str, Any]]:
    """obstore S3 config for s3fs-style options, or None if some option has no equivalent."""
    return _map_s3_options(options)[0]


def unmappable_s3_option(options: dict[str, Any]) -> Optional[str]:
    """The first s3fs-style option obstore has no equivalent for."""
    return _map_s3_options(options)[1]


# names obstore's mapping takes that s3fs (and botocore's session) do not: the s3fs store of
# such a mount (directory markers, keys obstore cannot parse) gets them under s3fs' names
OBSTORE_ONLY_NAMES = {"aws_access_key_id": "key", "access_key_id": "key", "aws_secret_access_key": "secret",
                      "secret_access_key": "secret", "aws_session_token": "token", "session_token": "token",
                      "region": None, "region_name": None}


def s3fs_options(options: dict[str, Any]) -> dict[str, Any]:
    """The same options as s3fs takes them (see OBSTORE_ONLY_NAMES)."""
    out = {k: v for k, v in options.items() if k not in OBSTORE_ONLY_NAMES}
    for k, v in options.items():
        if k in ("region", "region_name"):
            out["client_kwargs"] = {"region_name": v, **(out.get("client_kwargs") or {})}
        elif k in OBSTORE_ONLY_NAMES:
            out.setdefault(OBSTORE_ONLY_NAMES[k], v)
    return out


def _map_s3_options(options: dict[str, Any]) -> tuple[Optional[dict[str, Any]], Optional[str]]:
    cfg: dict[str, Any] = {}
    ck = dict(options.get("client_kwargs") or {})
    for k, v in options.items():
        if k in _PASSTHROUGH or k == "client_kwargs":
            continue
        if k == "endpoint_url":
            cfg["endpoint"] = v
        elif k in ("key", "aws_access_key_id", "access_key_id"):
            cfg["access_key_id"] = v
        elif k in ("secret", "aws_secret_access_key", "secret_access_key"):
            cfg["secret_access_key"] = v
        elif k in ("token", "aws_session_token", "session_token"):
            cfg["token"] = v
        elif k == "anon":
            if v:
                cfg["skip_signature"] = True
        elif k in ("region", "region_name"):
            cfg["region"] = v
        else:
            return None, k
    for k, v in ck.items():
        if k == "endpoint_url":
            cfg["endpoint"] = v
        elif k == "region_name":
            cfg["region"] = v
        elif k in ("aws_access_key_id",):
            cfg["access_key_id"] = v
        elif k in ("aws_secret_access_key",):
            cfg["secret_access_key"] = v
        else:
            return None, f"client_kwargs.{k}"
    if "endpoint" in cfg:  # S3-compatible servers mostly ignore it; the signature needs one
        cfg.setdefault("region", os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1")
    return cfg, None


def _s3fs_for_unparseable_keys(method):
    """Run the same call on the s3fs fallback store when obstore cannot parse a key."""
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except StoreRejected as e:
            fallback = self._via_fallback(e)
            if fallback is None:
                raise
            return getattr(fallback, method.__name__)(*args, **kwargs)
    return wrapper


def _ts(v) -> float:
    return v.timestamp() if isinstance(v, _dt.datetime) else 0.0


class ObstoreS3Store:
    has_dirs = False
    def __init__(self, url: str, config: dict[str, Any], timeout: float = 30.0,
                 connect_timeout: float = 5.0, retries: int = 3, fallback=None):
        """fallback: a callable returning an s3fs-backed store, used for listings that
        contain keys obstore refuses to parse (a newline, '//', '/./' in a key)."""
        self._fallback_factory = fallback
        self._fallback = None
        self.url = url
        rest = url.split("://", 1)[1]
        bucket, _, prefix = rest.partition("/")
        self.bucket = bucket
        prefix = prefix.strip("/")
        endpoint = str(config.get("endpoint") or "")  # from the environment too (open_store)
        self.endpoint = endpoint
        client_options = {"timeout": f"{int(timeout * 1000)}ms",
                          "connect_timeout": f"{int(connect_timeout * 1000)}ms",
                          "allow_http": endpoint.startswith("http://"),
                          "pool_max_idle_per_host": "64"}
        self.prefix = prefix
        # what the reading client is made of, less its prefix (see _bucket_store)
        self._read_args = dict(client_options=client_options, virtual_hosted_style_request=False,
                               retry_config={"max_retries": 0, "retry_timeout": _dt.timedelta(seconds=timeout)},
                               **config)
        self.store = S3Store(bucket, prefix=prefix or None, **self._read_args)
        # Uploads retry each request (a part, the create or complete call) in the client: one
        # failed part of a multipart upload is sent again instead of the whole file, which
        # unifs' own loop around put() would do. retry_timeout is per request.
        self.upload_store = S3Store(bucket, prefix=prefix or None, client_options=client_options,
                                    retry_config={"max_retries": retries,
                                                  "retry_timeout": _dt.timedelta(seconds=timeout),
                                                  "backoff": {"init_backoff": _dt.timedelta(milliseconds=200),
                                                              "max_backoff": _dt.timedelta(seconds=5),
                                                              "base": 2}},
                                    virtual_hosted_style_request=False, **config)
        self.retries = retries
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.breaker = breaker_for(timeout)  # uploads (put_file) do not go through it

    def _bucket_store(self):
        """The reading client without the prefix: it can name the prefix itself (check)."""
        return S3Store(self.bucket, **self._read_args)

    def _call(self, what, fn, *args, **kwargs):
        return call_store(self.retries, what, fn, *args, breaker=self.breaker, **kwargs)

    def _via_fallback(self, exc: Exception):
        text = f"{type(exc.__cause__).__name__} {exc.__cause__ or exc}".lower()
        if self._fallback_factory is None or ("invalidpath" not in text and "parsing path" not in text
                                              and "parse path" not in text and "expected string path" not in text):
            return None
        if self._fallback is None:
            log.warning("%s: a key obstore cannot parse; listing this store through s3fs", self.url)
        return self._s3fs()

    @_s3fs_for_unparseable_keys
    def check(self) -> None:
        if self.endpoint:
            probe_endpoint(self.endpoint, self.connect_timeout)
        try:
            top = call_store_first(self.retries, f"list {self.url}", self.timeout, obstore.list_with_delimiter,
                                   self.store, None)
        except ObjectNotFound:
            where = f" at {self.endpoint} (or that is not the S3 API's port)" if self.endpoint else ""
            raise ObjectNotFound(f"bucket '{self.bucket}' does not exist{where}") from None
        if self.prefix and not top["objects"] and not top["common_prefixes"]:
            try:  # the prefix itself, which the prefixed client cannot name
                meta = self._call(f"stat {self.url}", obstore.head, self._bucket_store(), self.prefix)
            except ObjectNotFound:
                return
            if meta["size"]:  # zero bytes: a folder object of an old tool (s3fs-fuse), fine
                raise object_root_error(meta["size"])

    @_s3fs_for_unparseable_keys
    def head(self, key: str) -> Optional[ObjectInfo]:
        if not key:
            return None
        try:
            meta = self._call(f"stat {key}", obstore.head, self.store, key)
        except ObjectNotFound:
            return None
        return ObjectInfo(key=key, size=meta["size"], mtime=_ts(meta.get("last_modified")),
                          etag=meta.get("e_tag"), version=meta.get("version"))

    @_s3fs_for_unparseable_keys
    def is_dir(self, key: str) -> bool:
        if not key:
            return True

        def _first():
            for chunk in obstore.list(self.store, key + "/", chunk_size=1):
                if chunk:
                    return True
            return False
        return self._call(f"stat {key}/", _first)

    @_s3fs_for_unparseable_keys
    def list_dir(self, key: str) -> Listing:
        res = self._call(f"list {key or '/'}", obstore.list_with_delimiter, self.store, key or None)
        out = Listing()
        base = f"{key}/" if key else ""
        for p in res["common_prefixes"]:
            leaf = p[len(base):].strip("/") if p.startswith(base) else p.rstrip("/").rsplit("/", 1)[-1]
            if leaf:
                out.dirs.add(leaf)
        for m in res["objects"]:
            path = m["path"]
            if not path.startswith(base):
                continue  # the directory's own marker object ("dir/", listed as "dir")
            leaf = path[len(base):]
            if not leaf or "/" in leaf:
                continue
            out.files[leaf] = ObjectInfo(key=path, size=m["size"], mtime=_ts(m.get("last_modified")),
                                         etag=m.get("e_tag"), version=m.get("version"))
        return out

    @_s3fs_for_unparseable_keys
    def get_range(self, key: str, start: int, end: int, etag: Optional[str] = None):
        if end <= start:
            return b""
        opts: dict[str, Any] = {"range": (start, end)}
        if etag:
            opts["if_match"] = etag

        def _get():
            # obstore.Bytes: immutable, buffer protocol, no copy into a Python bytes. A small
            # body can share a larger buffer of the HTTP client (2,000 bodies of 100 B held
            # 4.7 KiB each), which the RAM tier would not count: those are copied.
            data = obstore.get(self.store, key, options=opts).bytes()
            return bytes(data) if len(data) < SMALL_BODY else data
        return self._call(f"read {key}", _get)

    # -- changes -------------------------------------------------------------
    @_s3fs_for_unparseable_keys
    def put_file(self, key: str, local_path: str) -> ObjectInfo:
        size = os.path.getsize(local_path)
        # multipart above one part, parts in parallel; obstore aborts a failed upload's parts.
        # The client retries each request (upload_store); starting the whole upload again is the
        # last resort, once (a timed-out PUT is not retried by the client).
        part, in_flight = upload_parts(size)
        res = call_store(min(self.retries, 1), f"upload {key}", obstore.put, self.upload_store, key, Path(local_path),
                         chunk_size=part, max_concurrency=in_flight)
        # S3 keeps whole seconds: a later listing must not move the mtime back by a fraction
        return ObjectInfo(key=key, size=size, mtime=float(int(time.time())), etag=res.get("e_tag"),
                          version=res.get("version"))

    @_s3fs_for_unparseable_keys
    def delete(self, key: str) -> None:
        if key.endswith("/"):
            # a directory marker: obstore makes "dir/" into "dir", and would delete a file of
            # that name instead (see remove_dir)
            self._s3fs().delete(key)
            return
        self._call(f"delete {key}", obstore.delete, self.store, key)

    def name_problem(self, key: str) -> Optional[str]:
        return not_utf8(key)

    @_s3fs_for_unparseable_keys
    def copy(self, src: str, dst: str) -> None:
        self._call(f"copy {src} to {dst}", obstore.copy, self.store, src, dst)

    def move(self, src: str, dst: str) -> None:
        self.copy(src, dst)
        self.delete(src)

    def list_keys(self, prefix: str) -> list[str]:
        # obstore lists a "dir/" marker as "dir", indistinguishable from an empty object of
        # that name, and cannot address it: s3fs keeps the slash (renames list rarely)
        return self._s3fs().list_keys(prefix)

    def put_marker(self, key: str) -> None:
        self._s3fs().put_marker(key)

    def _s3fs(self):
        if self._fallback is None:
            if self._fallback_factory is None:
                raise StoreRejected("directory markers need s3fs")
            self._fallback = self._fallback_factory()
        return self._fallback

    def make_dir(self, key: str) -> bool:
        return False  # S3 directories exist through the keys below them

    def remove_dir(self, key: str) -> None:
        # a directory marker ("key/", also what SeaweedFS and MinIO keep for an emptied
        # prefix) would keep listing the removed directory. obstore lists it as an object
        # "key" below "key/" and cannot address it; s3fs can (an object "key" is not touched)
        if not key:
            return
        res = self._call(f"list {key}", obstore.list_with_delimiter, self.store, key)
        if any(m["path"] == key for m in res["objects"]):
            self._s3fs().delete(key + "/")

    def close(self) -> None:
        pass
