"""Tiered block cache (RAM, then disk, then the store) for the read path; no FUSE inside."""

from unifs.cache.disk import CacheDirectoryBusy, DiskTier
from unifs.cache.ids import BlockId, ObjectId
from unifs.cache.ram import RamTier
from unifs.cache.tiered import MODES, BlockCache, BlockLengthError

__all__ = ["MODES", "BlockCache", "BlockId", "BlockLengthError", "CacheDirectoryBusy",
           "DiskTier", "ObjectId", "RamTier"]
