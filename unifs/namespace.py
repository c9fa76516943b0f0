"""The unified namespace: a path -> (mount, key in that mount's store).

Mount points may nest; the longest matching mount path wins. The root and
every proper ancestor of a mount path are virtual directories, so they exist
whatever the stores hold.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Optional

from unifs.config import MountEntry, redact_url
from unifs.stores.base import Store


@dataclass
class Mount:
    entry: MountEntry
    store: Store

    @property
    def path(self) -> str:
        return self.entry.path

    @property
    def read_only(self) -> bool:
        return self.entry.read_only

    @property
    def ttl(self) -> float:
        return self.entry.metadata_ttl

    @functools.cached_property
    def entry_url_redacted(self) -> str:  # part of every block-cache key: computed once
        return redact_url(self.entry.url)

    @functools.cached_property
    def site(self) -> str:
        """What in the options sends the URL to one store rather than another (endpoint,
        account, host), without secrets: a pending upload found at start goes only to
        the store it was written for (the same bucket name on another endpoint is another
        store)."""
        return store_site(self.entry.options)


# option (or connection-string part) -> what it names; credentials (keys, tokens, profiles)
# may change between runs and are left out
_SITE_OPTIONS = {"endpoint_url": "endpoint", "endpoint": "endpoint", "blobendpoint": "endpoint",
                 "account_name": "account", "accountname": "account", "host": "host", "port": "port",
                 "endpointsuffix": "suffix"}
_DEFAULT_SUFFIX = "core.windows.net"


def store_site(options: dict) -> str:
    given = [(k.lower(), v) for k, v in options.items() if k.lower() in _SITE_OPTIONS]
    client_kwargs = options.get("client_kwargs")
    if isinstance(client_kwargs, dict) and client_kwargs.get("endpoint_url"):
        given.append(("endpoint_url", client_kwargs["endpoint_url"]))
    if isinstance(options.get("connection_string"), str):
        for part in options["connection_string"].split(";"):
            k, _, v = part.partition("=")
            given.append((k.strip().lower(), v.strip()))
    found = {}
    for k, v in given:
        what = _SITE_OPTIONS.get(k)
        v = str(v).strip().rstrip("/")
        if what is None or not v or what == "suffix" and v.lower() == _DEFAULT_SUFFIX:
            continue  # spelled out or not, the public endpoint is the same store
        found[what] = v.lower() if what in ("account", "host", "suffix") else v
    return ", ".join(f"{k}={redact_url(v)}" for k, v in sorted(found.items()))


def split(path: str) -> list[str]:
    return [p for p in path.split("/") if p]


class Namespace:
    def __init__(self, mounts: list[Mount]):
        self.mounts = sorted(mounts, key=lambda m: len(split(m.path)), reverse=True)
        self._by_parts = {tuple(split(m.path)): m for m in mounts}
        # virtual directory -> names of the mount-path components directly under it
        self._children: dict[tuple, set[str]] = {}
        for m in mounts:
            parts = split(m.path)
            for i in range(len(parts)):
                self._children.setdefault(tuple(parts[:i]), set()).add(parts[i])

        # the table never changes while mounted: every open and stat resolves its path (twice
        # for an open), so the answers are memoised
        self.resolve = functools.lru_cache(maxsize=1 << 16)(self._resolve)
        self.is_virtual_dir = functools.lru_cache(maxsize=1 << 16)(self._is_virtual_dir)

    def _resolve(self, path: str) -> tuple[Optional[Mount], str]:
        """(mount, key) for a path; (None, '') when no mount covers it."""
        parts = split(path)
        for i in range(len(parts), -1, -1):
            m = self._by_parts.get(tuple(parts[:i]))
            if m is not None:
                return m, "/".join(parts[i:])
        return None, ""

    def virtual_children(self, path: str) -> set[str]:
        """Names that exist under path because a mount point lies below it."""
        return self._children.get(tuple(split(path)), set())

    def _is_virtual_dir(self, path: str) -> bool:
        parts = tuple(split(path))
        return not parts or parts in self._children or parts in self._by_parts

    def is_mount_point(self, path: str) -> bool:
        return tuple(split(path)) in self._by_parts
