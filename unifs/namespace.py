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
