"""Read-only http(s):// mounts: a web server's directory index pages as directories.

fsspec's HTTP listing knows names but not sizes (0 until a HEAD), and a HEAD of
a directory URL answers 200 with its index page, so lookups go through the
parent's listing and sizes come from one HEAD per listed file.

A file's version is its ETag, or else its Last-Modified date ("lm:<date>"): many
servers (Python's http.server, most static file servers behind a CDN) send only
the latter. Every ranged GET compares the response's version with the one the
reader pinned at open, since plain web servers ignore conditional headers: a file
replaced on the server reads as ESTALE instead of mixing old and new bytes.
"""

from __future__ import annotations

import logging
import posixpath
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Optional
from urllib.parse import quote, unquote, urlsplit

import fsspec.asyn

from unifs.config import redact_url
from unifs.errors import ObjectChanged, ObjectNotFound, StoreRejected, StoreUnavailable
from unifs.stores.base import Listing, ObjectInfo
from unifs.stores.fsspec_store import FsspecStore, info_to_object


log = logging.getLogger("unifs.store")


class HttpStore(FsspecStore):
    """Keys are plain names; URLs are percent-encoded only when requested."""

    _warned_no_ranges = False

    def __init__(self, url: str, options: dict, **kw):
        super().__init__(url, options, **kw)
        # a query string (a signed URL's token) goes after each key's path, not before it
        base, _, self._query = self.root.partition("?")
        self.root = base.rstrip("/")

    def _path(self, key: str) -> str:
        path = super()._path(quote(key, safe="/"))
        if not self._query:
            return path
        return f"{path}{'' if key else '/'}?{self._query}"  # the root is a directory's index page

    def check(self) -> None:
        # fsspec lists a page that answers 404 as an empty directory: a mistyped URL would
        # mount as an empty directory instead of failing
        try:
            info = self._call(f"stat {redact_url(self.url)}", self.fs.info, self._path(""), _first=True)
        except ObjectNotFound as e:
            # fsspec's http says "not found" for a server it cannot reach too (the connection
            # error is its cause); no probe of our own, which would bypass an HTTP proxy
            reason = _connection_failure(e)
            if reason:
                host = urlsplit(self.url)
                raise StoreUnavailable(f"cannot connect to {host.hostname}:{host.port or (443 if host.scheme == 'https' else 80)}"
                                       f" ({reason})") from None
            raise
        listing = self._names("") if info.get("type") == "file" else None
        if listing is not None and not listing.files and not listing.dirs:
            raise StoreRejected(f"{redact_url(self.url)} lists nothing: a file, or an empty index page; "
                                "mount a directory's index page")

    def _names(self, key: str) -> Listing:
        """The index page of key: plain names, file sizes still unknown (0)."""
        raw = super().list_dir(key)
        listing = Listing(dirs={unquote(d) for d in raw.dirs})
        for name, info in raw.files.items():
            plain = unquote(name)
            listing.files[plain] = replace(info, key=f"{key}/{plain}" if key else plain)
        return listing

    def _sized(self, info: ObjectInfo) -> ObjectInfo:
        if info.size:
            return info
        path = self._path(info.key)
        raw = self._call(f"stat {path}", self.fs.info, path)
        obj = info_to_object(info.key, raw)
        return replace(obj, etag=_version(raw))

    def list_dir(self, key: str) -> Listing:
        listing = self._names(key)
        with ThreadPoolExecutor(8) as pool:
            listing.files = dict(zip(listing.files, pool.map(self._sized, listing.files.values())))
        return listing

    def head(self, key: str) -> Optional[ObjectInfo]:
        if not key:
            return None
        parent, name = posixpath.split(key)
        info = self._names(parent).files.get(name)
        return None if info is None else self._sized(info)  # one HEAD, not one per sibling

    def is_dir(self, key: str) -> bool:
        if not key:
            return True
        parent, name = posixpath.split(key)
        return name in self._names(parent).dirs

    def get_range(self, key: str, start: int, end: int, etag: Optional[str] = None) -> bytes:
        if end <= start:
            return b""
        data = self._call(f"read {key}", self._get, key, start, end, etag)
        if len(data) > end - start:
            # the server ignored the Range header and sent the whole file
            if not self._warned_no_ranges:
                self._warned_no_ranges = True
                log.warning("%s: the web server ignores byte ranges; every read downloads the whole "
                            "file", self.url)
            data = data[start:end]
        return data

    def _get(self, key: str, start: int, end: int, pinned: Optional[str], timeout=None) -> bytes:
        url = self._path(key)

        async def _go():
            session = await self.fs.set_session()
            kw = dict(self.fs.kwargs)
            headers = dict(kw.pop("headers", None) or {})
            headers["Range"] = f"bytes={start}-{end - 1}"
            # as fsspec's HEAD asks: a compressed answer carries another ETag (nginx makes it
            # weak, Apache appends -gzip) and its byte ranges are not the file's
            headers["Accept-Encoding"] = "identity"
            async with session.get(self.fs.encode_url(url), headers=headers, **kw) as r:
                if r.status == 404:
                    raise ObjectNotFound(f"read {key}: not found")
                if r.status == 416:  # the range lies past the end now: it shrank
                    raise ObjectChanged(f"read {key}: file changed on the server while open; reopen it")
                r.raise_for_status()
                now = _version(r.headers)
                if pinned and now and _strong(now) != _strong(pinned):
                    raise ObjectChanged(f"read {key}: file changed on the server while open; reopen it")
                return await r.read()
        return fsspec.asyn.sync(self.fs.loop, _go, timeout=timeout)


def _version(headers) -> Optional[str]:
    """What identifies a web server's file content: its ETag, else its Last-Modified date."""
    if headers.get("ETag"):
        return str(headers["ETag"])
    if headers.get("Last-Modified"):
        return f"lm:{headers['Last-Modified']}"
    return None


def _strong(version: str) -> str:
    return version[2:] if version.startswith("W/") else version


def _connection_failure(exc: BaseException) -> str:
    """The reason of a failed connection among exc's causes (aiohttp's ClientConnectorError,
    a refused or reset connection, a name that does not resolve), else ''."""
    import socket

    exc = exc.__cause__
    for _ in range(10):
        if exc is None:
            return ""
        name = type(exc).__name__
        if "Connector" in name or isinstance(exc, (ConnectionError, socket.gaierror)):
            os_err = getattr(exc, "os_error", None) or exc
            return getattr(os_err, "strerror", None) or str(os_err) or name
        exc = exc.__cause__ or exc.__context__
    return ""
