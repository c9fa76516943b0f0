"""The FUSE adapter's libfuse-3 parts, driven directly (no mount).

readdirplus: every entry goes out with its attributes and a nonzero offset
(libfuse 3.14 ignores the attributes of entries filled at offset 0), a listing read in several
calls comes from one snapshot per open directory, and a plain readdir still works.

The callback is driven directly with a recording filler; test_mount_read's 10,000-entry listing
exercises the same code through a real mount."""

from __future__ import annotations

import errno
import types

import mfusepy
import pytest

from unifs.fuse_ops import FILL_DIR_PLUS, READDIR_PLUS, FuseOps, UnifsFUSE
from unifs.vfs.attrs import Attr


class _Fs:
    def __init__(self, n):
        self.entries = [(f"f{i:04d}", Attr(is_dir=False, size=i, mtime=1_700_000_000.0 + i)) for i in range(n)]
        self.calls = 0

    def readdir(self, path):
        self.calls += 1
        return list(self.entries)

    def known_attr(self, path):
        """Now: what the daemon knows (a later readdir call must send this, not the snapshot)."""
        name = path.rsplit("/", 1)[1]
        return dict(self.entries).get(name)


def _read_all(ops, fh, plus, room, between=None):
    """Like the kernel: readdir calls from the last offset until one returns nothing;
    between() runs after each call (a program changing files while it lists)."""
    seen, offset = [], 0
    fip = types.SimpleNamespace(contents=types.SimpleNamespace(fh=fh))
    fuse = types.SimpleNamespace(operations=ops, encoding="utf-8", errors="surrogateescape")
    while True:
        batch = []

        def filler(buf, name, st, off, flags):
            if len(batch) == room:
                return 1  # the kernel's buffer is full
            batch.append((name.decode(), st.st_size, st.st_mode, off, flags))
            return 0
        assert UnifsFUSE.readdir_fuse_3(fuse, b"/d", None, filler, offset, fip, READDIR_PLUS if plus else 0) == 0
        if not batch:
            return seen
        seen += batch
        offset = batch[-1][3]
        if between:
            between()


@pytest.mark.parametrize("plus", [True, False])
def test_entries_carry_attributes_and_offsets_from_one_snapshot(plus):
    fs = _Fs(250)
    ops = FuseOps(fs)
    fh = ops.opendir("/d")
    seen = _read_all(ops, fh, plus, room=64)
    assert [s[0] for s in seen] == [".", ".."] + [n for n, _ in fs.entries]
    assert [s[3] for s in seen] == list(range(1, 253))  # nonzero offsets, one per entry
    assert seen[0][4] == seen[1][4] == 0  # . and .. without attributes (inode 0 would hide them)
    assert fs.calls == 1  # five calls of the kernel, one listing
    files = seen[2:]
    assert all(flags == (FILL_DIR_PLUS if plus else 0) for *_, flags in files)
    if plus:
        assert [size for _, size, *_ in files] == list(range(250))
    assert all(mode == Attr(is_dir=False).mode for _, _, mode, *_ in files)
    ops.releasedir("/d", fh)
    # a new open directory lists again
    _read_all(ops, ops.opendir("/d"), plus, room=1000)
    assert fs.calls == 2


def test_rewinding_lists_again_and_errors_become_errno():
    fs = _Fs(3)
    ops = FuseOps(fs)
    fh = ops.opendir("/d")
    _read_all(ops, fh, True, room=100)
    fs.entries.append(("new", Attr(is_dir=False, size=1)))
    assert "new" in [s[0] for s in _read_all(ops, fh, True, room=100)]  # offset 0: rewinddir()

    def missing(path):
        raise OSError(errno.ENOENT, "gone", path)
    fs.readdir = missing
    with pytest.raises(mfusepy.FuseOSError) as e:
        ops.dir_entries("/d", ops.opendir("/d"), 0)
    assert e.value.errno == errno.ENOENT


class _Fi:
    """fuse_file_info as mfusepy exposes it on libfuse >= 3.11 (the noflush bit exists)."""
    noflush = 0

    def __init__(self, flags):
        self.flags, self.fh, self.keep_cache = flags, 0, 0
        self.noflush = 0


def test_files_opened_for_reading_ask_for_no_flush_at_close():
    import os

    class Fs:
        def open(self, path, flags, owner=None):
            return (7 if flags & os.O_ACCMODE else 3), True

        def is_writable(self, fh):
            return fh == 7

        def is_direct(self, fh):
            return False

    ops = FuseOps(Fs())
    read, write = _Fi(os.O_RDONLY), _Fi(os.O_WRONLY)
    ops.open("/f", read)
    ops.open("/f", write)
    assert (read.fh, read.noflush, read.keep_cache) == (3, 1, 1)
    assert (write.fh, write.noflush) == (7, 0)  # its close() uploads: FLUSH must come


def test_later_calls_send_current_attributes_not_the_snapshots():
    """A file growing while its directory is listed: a later readdirplus call must not send the
    size from when the listing began (the kernel would roll the file's size back)."""
    fs = _Fs(200)
    ops = FuseOps(fs)
    fh = ops.opendir("/d")
    changes = []

    def between():
        if not changes:
            changes.append(1)
            fs.entries[150] = ("f0150", Attr(is_dir=False, size=999_999))
            del fs.entries[160]  # gone meanwhile: the daemon no longer knows it
    seen = {s[0]: s for s in _read_all(ops, fh, True, room=64, between=between)}
    assert fs.calls == 1
    assert seen["f0150"][1] == 999_999 and seen["f0150"][4] == FILL_DIR_PLUS
    assert seen["f0160"][4] == 0  # the name, without attributes


def test_fuse_threads_follow_the_stores_round_trip():
    # Python callbacks all want the GIL: more FUSE threads cost warm reads of a near store
    # (9,900-16,700 vs 7,900-10,200 warm small files/s), and pay off only when requests wait
    # on a far one
    from unifs import daemon
    from unifs.config import parse_table

    if daemon._libfuse_major() != 3:
        pytest.fail("the test machine has libfuse 3 (.ci/run installs fuse3)")
    table = parse_table("mounts:\n  - path: /m\n    url: memory://x\n", env={})
    assert daemon.fuse_kwargs(table, {}, 0.002)["max_threads"] == daemon.NEAR_THREADS == 10
    assert daemon.fuse_kwargs(table, {}, 0.040)["max_threads"] == daemon.FAR_THREADS
    assert daemon.fuse_kwargs(table, {}, None)["max_threads"] == daemon.FAR_THREADS
    assert daemon.fuse_kwargs(table, {"max_threads": "32"}, 0.002)["max_threads"] == "32"
