"""Names of cached things: an object version and one block of it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple


@dataclass(frozen=True, slots=True)
class ObjectId:
    """One immutable version of one object.

    `version` must pin the content (and so the size): the store's ETag or generation, or a
    "size-mtime" string for stores without either. Cached blocks are only ever looked up under
    the exact version they were fetched with, so an overwritten object can never be served
    stale; old versions are dropped with `drop_object(..., keep_version=...)`.
    """

    store: str
    key: str
    version: str


# (object, block index); block `i` covers bytes [i * block_size, (i + 1) * block_size).
BlockId = Tuple[ObjectId, int]
