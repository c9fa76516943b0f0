"""Staged files' sidecars: what a restarted daemon may drop and what it must keep."""

from __future__ import annotations

import errno
import json
import os

import pytest

from unifs.vfs.staging import StagingArea, pending_files


def _on_disk(st) -> dict:
    with open(st.meta_path) as f:
        return json.load(f)


def _uploaded(st) -> None:
    st.uploaded_gen = st.gen  # what a successful upload records
    st.save()


def test_a_clean_sidecar_is_rewritten_before_a_change_is_acknowledged(tmp_path):
    area = StagingArea(str(tmp_path / "st"))
    st = area.create("/w/f", "/w", "f", "s3://b")
    st.opens = 1
    st.pwrite(b"v1", 0)
    assert _on_disk(st)["clean"] is False
    _uploaded(st)
    assert _on_disk(st)["clean"] is True
    # an open file, uploaded and unchanged, is nothing to recover
    assert pending_files(area.directory, daemon_dead=True) == []
    assert StagingArea(area.directory).recover() == [] and not os.path.exists(st.data_path)


def test_a_change_after_an_upload_is_kept_by_a_later_daemon(tmp_path):
    area = StagingArea(str(tmp_path / "st"))
    st = area.create("/w/f", "/w", "f", "s3://b")
    st.opens = 1
    st.pwrite(b"v1", 0)
    _uploaded(st)
    st.pwrite(b"v2 longer", 0)
    assert _on_disk(st)["clean"] is False
    assert [d["state"] for d in pending_files(area.directory, daemon_dead=True)] == ["orphaned"]
    found = StagingArea(area.directory).recover()
    assert len(found) == 1 and open(st.data_path, "rb").read() == b"v2 longer"


def test_a_sidecar_that_cannot_be_rewritten_fails_the_write(tmp_path, monkeypatch):
    area = StagingArea(str(tmp_path / "st"))
    st = area.create("/w/f", "/w", "f", "s3://b")
    st.opens = 1
    st.pwrite(b"v1", 0)
    _uploaded(st)

    def broken(*a, **kw):
        raise OSError(errno.EIO, "injected")
    monkeypatch.setattr(os, "replace", broken)
    with pytest.raises(OSError) as e:
        st.pwrite(b"v2", 0)
    assert e.value.errno == errno.EIO  # not acknowledged while the disk still says "clean"
    monkeypatch.undo()
    st.pwrite(b"v3", 0)  # the next change records it
    assert _on_disk(st)["clean"] is False



def test_a_write_racing_the_clean_record_is_never_lost(tmp_path, monkeypatch):
    # an upload records "clean" while a write of another descriptor lands: the write must
    # either see the record (and rewrite it) or be seen by it (found by a reviewer: a
    # pwrite between the decision and the rename was acknowledged, and recovery dropped it)
    import threading
    import time

    area = StagingArea(str(tmp_path / "st"))
    st = area.create("/w/f", "/w", "f", "s3://b")
    st.opens = 1
    st.pwrite(b"v1", 0)
    st.uploaded_gen = st.gen
    real, writer = os.replace, []

    def replace(a, b):
        if not writer:
            writer.append(threading.Thread(target=st.pwrite, args=(b"v2 and more", 0)))
            writer[0].start()
            time.sleep(0.2)  # where the write landed
        return real(a, b)
    monkeypatch.setattr(os, "replace", replace)
    st.save()
    writer[0].join(5)
    monkeypatch.undo()
    assert _on_disk(st)["clean"] is False
    assert pending_files(area.directory, daemon_dead=True)[0]["size"] == len(b"v2 and more")


def test_a_full_file_system_asks_the_disk_cache_for_room(tmp_path, monkeypatch):
    # only the data writes did: a new file's sidecar failed with ENOSPC while the disk cache on
    # the same file system held blocks it could have given back
    area = StagingArea(str(tmp_path / "st"))
    asked = []
    area.room_maker = lambda directory, n: asked.append((directory, n)) or True
    real = os.replace
    failures = [OSError(errno.ENOSPC, "injected")]

    def full_once(*a, **kw):
        if failures:
            raise failures.pop()
        return real(*a, **kw)
    monkeypatch.setattr(os, "replace", full_once)
    st = area.create("/w/f", "/w", "f", "s3://b")
    assert asked and asked[0][0] == area.directory and _on_disk(st)["path"] == "/w/f"
    # no room to be had: the writer gets ENOSPC
    area.room_maker = lambda directory, n: False
    failures.append(OSError(errno.ENOSPC, "injected"))
    with pytest.raises(OSError) as e:
        area.create("/w/g", "/w", "g", "s3://b")
    assert e.value.errno == errno.ENOSPC


def _memory_fs(tmp_path, name):
    import random

    import fsspec

    from unifs.config import MountEntry, StoreSettings
    from unifs.namespace import Mount, Namespace
    from unifs.stores import open_store
    from unifs.vfs import FileSystem

    root = f"/{name}-{random.randrange(1 << 30)}"
    fsspec.filesystem("memory").pipe({f"{root}/w/seed": b"s"})
    entry = MountEntry(path="/w", url=f"memory://{root}/w")
    mount = Mount(entry, open_store(entry, StoreSettings()))
    return FileSystem(Namespace([mount]), staging_dir=str(tmp_path / "staging")), mount


def test_a_pending_copy_opened_again_is_recorded_open_before_it_is_rewritten(tmp_path):
    # closed with a failed upload, then rewritten: a daemon dying half-way left "pending",
    # and the next one uploaded the torn file over the object
    from unifs.errors import StoreError

    fs, mount = _memory_fs(tmp_path, "reopen")
    w = fs.create("/w/model.bin")
    fs.write(w, b"GOOD" * 10, 0)
    put = mount.store.put_file
    mount.store.put_file = lambda *a: (_ for _ in ()).throw(StoreError(errno.EIO, "down"))
    with pytest.raises(OSError):
        fs.flush(w)
    fs.release(w)
    w2, _ = fs.open("/w/model.bin", os.O_WRONLY | os.O_TRUNC)
    fs.write(w2, b"TORN", 0)
    mount.store.put_file = put
    found = StagingArea(str(tmp_path / "staging")).recover()
    assert [d["state"] for d, _ in found] == ["orphaned"], found


def test_a_stop_leaves_no_data_of_copies_kept_only_for_readers(tmp_path):
    fs, _ = _memory_fs(tmp_path, "stop")
    for name in ("ckpt", "gone"):
        w = fs.create(f"/w/{name}")
        fs.write(w, b"X" * 100_000, 0)
        fs.open(f"/w/{name}", os.O_RDONLY)  # a reader (an evaluator, tail -f) stays
        fs.flush(w)
        fs.release(w)  # uploaded: kept for the reader only
    fs.rename("/w/gone", "/w/.fuse_hidden0000000100000001")  # unlinked while read
    fs.writes.close()  # a stop while the readers hold them
    assert StagingArea(str(tmp_path / "staging")).recover() == []
    assert not [n for n in os.listdir(tmp_path / "staging") if n.endswith(".data")]
