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


def not_utf8(key: str) -> Optional[str]:
    """Object keys are UTF-8; a name that is not (Latin-1 from an old tar, decoded by the FUSE
    layer with surrogateescape) cannot be sent, and the client's encoding error was an EIO and
    a traceback in the log for every lookup."""
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        return "object names must be UTF-8"
    return None


class Store(Protocol):
    url: str
    has_dirs: bool  # real directories (file://, memory://) rather than key prefixes

    def name_problem(self, key: str) -> Optional[str]:
        """Why the store's client would address another object than `key` (it parses part
        of the name as something else), or None."""

    def check(self) -> None:
        """Raise AccessDenied / StoreUnavailable / ObjectNotFound if the root is unusable."""

    def head(self, key: str) -> Optional[ObjectInfo]:
        """The object at key, or None if there is none."""

    def is_dir(self, key: str) -> bool:
        """True if any object lives under key + '/'."""

    def list_dir(self, key: str) -> Listing:
        """Direct children of key ('' for the root), paging through the whole listing."""

    def get_range(self, key: str, start: int, end: int, etag: Optional[str] = None) -> bytes:
        """Bytes [start, end) of key, as bytes or another read-only buffer (obstore.Bytes);
        raises ObjectChanged if etag no longer matches."""

    # -- changes (never called on read-only mounts) ----------------------------
    def put_file(self, key: str, local_path: str) -> ObjectInfo:
        """Upload a whole local file as key (multipart for large files); the new object."""

    def delete(self, key: str) -> None:
        """Remove key; a missing object is not an error (stores disagree, unifs does not)."""

    def copy(self, src: str, dst: str) -> None:
        """Server-side copy of one object, replacing dst."""

    def move(self, src: str, dst: str) -> None:
        """Rename one object (or, where has_dirs, a whole directory): the store's native
        rename where it has one, else copy then delete, so a crash leaves both copies."""

    def list_keys(self, prefix: str) -> list[str]:
        """Every object key below prefix + '/' (recursive), for directory renames. Directory
        markers other tools left ("dir/" objects, prefix + '/' itself included) are listed
        with their trailing slash."""

    def put_marker(self, key: str) -> None:
        """Create the directory marker key + '/' (an empty object), to move one in a rename."""

    def make_dir(self, key: str) -> bool:
        """Create a real directory where the store has them (file://, memory://);
        False where directories only exist through the keys below them."""

    def remove_dir(self, key: str) -> None:
        """Remove an empty directory made by make_dir, or the marker ("key/") another tool
        left for it; neither there is not an error."""

    def close(self) -> None:
        ...
