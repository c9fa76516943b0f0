"""File and directory attributes as the file system reports them."""

from __future__ import annotations

import stat
import time
from dataclasses import dataclass
from typing import Optional

from unifs.stores.base import ObjectInfo

_START = time.time()


@dataclass(frozen=True)
class Attr:
    is_dir: bool
    size: int = 0
    mtime: float = _START
    etag: Optional[str] = None
    version: Optional[str] = None
    read_only: bool = False

    @classmethod
    def directory(cls, read_only: bool = False) -> "Attr":
        return cls(is_dir=True, read_only=read_only)

    @classmethod
    def from_object(cls, info: ObjectInfo, read_only: bool = False) -> "Attr":
        return cls(is_dir=False, size=info.size, mtime=info.mtime or _START, etag=info.etag,
                   version=info.version, read_only=read_only)

    @property
    def mode(self) -> int:
        if self.is_dir:
            return stat.S_IFDIR | (0o555 if self.read_only else 0o755)
        return stat.S_IFREG | (0o444 if self.read_only else 0o644)

    def to_stat(self, uid: int, gid: int) -> dict:
        ns = int(self.mtime * 1e9)
        return {
            "st_mode": self.mode,
            "st_nlink": 2 if self.is_dir else 1,
            "st_size": 0 if self.is_dir else self.size,
            "st_blocks": 0 if self.is_dir else (self.size + 511) // 512,
            "st_blksize": 1 << 20,
            "st_mtime": ns,
            "st_ctime": ns,
            "st_atime": ns,
            "st_uid": uid,
            "st_gid": gid,
        }
