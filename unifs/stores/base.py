"""What the file system needs from a store, and nothing more.

Keys are relative to the mount's root (the bucket and prefix of its URL) and
use '/' separators; '' is the root. Implementations raise the normalised
errors of `unifs.errors` so every store maps to the same errno.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Protocol


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    mtime: float
    etag: Optional[str] = None
    version: Optional[str] = None


@dataclass
class Listing:
    """One level of a delimited listing: objects and common prefixes, by name."""

    files: dict[str, ObjectInfo] = field(default_factory=dict)
    dirs: set[str] = field(default_factory=set)


class Store(Protocol):
    url: str

    def check(self) -> None:
        """Raise AccessDenied / StoreUnavailable / ObjectNotFound if the root is unusable."""

    def head(self, key: str) -> Optional[ObjectInfo]:
        """The object at key, or None if there is none."""

    def is_dir(self, key: str) -> bool:
        """True if any object lives under key + '/'."""

    def list_dir(self, key: str) -> Listing:
        """Direct children of key ('' for the root), paging through the whole listing."""

    def get_range(self, key: str, start: int, end: int, etag: Optional[str] = None) -> bytes:
        """Bytes [start, end) of key; raises ObjectChanged if etag no longer matches."""

    def close(self) -> None:
        ...
