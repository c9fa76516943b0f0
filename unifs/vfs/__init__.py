"""The file system itself, with no FUSE import: usable from plain Python."""

from unifs.vfs.attrs import Attr
from unifs.vfs.filesystem import FileSystem

__all__ = ["Attr", "FileSystem"]
