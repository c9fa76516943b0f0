"""Staged writes through a real mount on SeaweedFS: create, overwrite, random writes,
truncate, mkdir/rmdir, unlink, rename, EROFS next to a writable mount."""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import stat
import subprocess
import threading
import time

import obstore
import pytest

from conftest import SCRATCH, assert_every_change_is_erofs, cache_stats, errno_of as _errno_of, sha256, unifs, wait_for

PREFIX = "writes"


def _store_bytes(seaweed, key: str) -> bytes:
    return bytes(obstore.get(seaweed.obstore(SCRATCH), key).bytes())


def _open_handles(mp) -> int:
    """Files the daemon at mp holds open: the kernel's release of a closed file comes after
    close() returns, and an unlink, rename or truncate before it meets an open file."""
    return cache_stats(mp)["open_handles"]


def _store_keys(seaweed, prefix: str) -> set[str]:
    return {m["path"] for chunk in obstore.list(seaweed.obstore(SCRATCH), prefix) for m in chunk}


@pytest.fixture
def rw(mounter, dataset, request):
    """A writable mount of a per-test prefix of the scratch bucket at <mp>/w."""
    prefix = f"{PREFIX}/{request.node.name}"
    mp = mounter.mount([mounter.s3_entry("/w", f"s3://{SCRATCH}/{prefix}")])
    return mp / "w", prefix


def test_create_write_close_lands_in_the_store(rw, seaweed):
    root, prefix = rw
    data = os.urandom(3 * 1024 * 1024 + 17)
    with open(root / "model.bin", "wb") as f:
        f.write(data)
    assert _store_bytes(seaweed, f"{prefix}/model.bin") == data
    assert (root / "model.bin").read_bytes() == data
    assert os.stat(root / "model.bin").st_size == len(data)
    assert "model.bin" in os.listdir(root)
    # an empty file is an object too
    open(root / "empty", "wb").close()
    assert _store_bytes(seaweed, f"{prefix}/empty") == b""


def test_a_file_too_big_for_the_store_s_part_limit_is_uploaded_in_larger_parts(mounter, dataset, seaweed,
                                                                                 request, monkeypatch):
    # S3 takes at most 10,000 parts per upload: with fixed 8 MiB parts a checkpoint over 78 GiB
    # could never be uploaded. The same rule with a limit of 2 parts, through the mount
    from unifs.stores import obstore_s3
    monkeypatch.setattr(obstore_s3, "MAX_PARTS", 2)
    prefix = f"{PREFIX}/{request.node.name}"
    root = mounter.mount([mounter.s3_entry("/w", f"s3://{SCRATCH}/{prefix}")], inprocess=True) / "w"
    data = os.urandom(20 * 1024 * 1024 + 5)
    with open(root / "big.ckpt", "wb") as f:
        f.write(data)
    # a multipart object's ETag ends with its number of parts (8 MiB parts: 3)
    head = obstore.head(seaweed.obstore(SCRATCH), f"{prefix}/big.ckpt")
    assert head["e_tag"].strip('"').endswith("-2"), head["e_tag"]
    assert head["size"] == len(data)
    assert sha256(_store_bytes(seaweed, f"{prefix}/big.ckpt")) == sha256(data)


def test_upload_parts_fit_s3_s_limit_and_bound_memory():
    from unifs.stores.obstore_s3 import MAX_PARTS, PART_SIZE, upload_parts
    assert upload_parts(5 << 20) == (PART_SIZE, 8)
    assert upload_parts(PART_SIZE * MAX_PARTS) == (PART_SIZE, 8)
    for size in (PART_SIZE * MAX_PARTS + 1, 100 << 30, 5 << 40):
        part, in_flight = upload_parts(size)
        assert part % (1 << 20) == 0 and part * MAX_PARTS >= size and (part - (1 << 20)) * MAX_PARTS < size
        assert 2 <= in_flight <= 8 and (part * in_flight <= 64 << 20 or in_flight == 2)
    assert upload_parts(100 << 30) == (11 << 20, 5)


def test_a_reader_open_before_the_writer_sees_its_appends_and_none_is_lost(rw, seaweed):
    # a monitor (tail -f) had the stored log open when the resumed run began to append: its
    # reads past the stored end answered end-of-file, the kernel cut the file to that size,
    # and the next appends landed over lines already written
    root, prefix = rw
    old = b"".join(b"epoch %03d loss 0.5\n" % i for i in range(10))
    obstore.put(seaweed.obstore(SCRATCH), f"{prefix}/train.log", old)
    new = b""
    with open(root / "train.log", "rb") as monitor:
        seen = monitor.read()
        assert seen == old
        with open(root / "train.log", "ab") as w:
            for i in range(10, 40):
                line = b"epoch %03d loss 0.4\n" % i
                w.write(line)
                w.flush()
                new += line
                if i in (20, 30):
                    seen += monitor.read()  # the monitor polls
                    assert seen == old + new
        seen += monitor.read()
    assert seen == old + new
    assert _store_bytes(seaweed, f"{prefix}/train.log") == old + new
    assert (root / "train.log").read_bytes() == old + new


def test_an_in_place_write_is_read_back_after_a_reader_open_before_it_on_libfuse_2(mounter, seaweed, dataset,
                                                                                  monkeypatch):
    # the earlier reader's READ refilled the written page from the stored version, and the
    # next open kept that page (keep_cache for the ETag just uploaded): libfuse 2 has no
    # invalidation of its own to hide it
    prefix = f"{PREFIX}/in-place-fuse2"
    obstore.put(seaweed.obstore(SCRATCH), f"{prefix}/x.bin", b"A" * 8192)
    monkeypatch.setenv("FUSE_LIBRARY_NAME", "fuse")
    root = mounter.mount([mounter.s3_entry("/w", f"s3://{SCRATCH}/{prefix}")]) / "w"
    want = b"A" * 100 + b"B" * 10 + b"A" * 8082
    with open(root / "x.bin", "rb", buffering=0) as r, open(root / "x.bin", "r+b", buffering=0) as w:
        w.seek(100)
        w.write(b"B" * 10)
        assert r.read(8192) == want
    assert _store_bytes(seaweed, f"{prefix}/x.bin") == want
    assert (root / "x.bin").read_bytes() == want


def test_read_your_writes_before_close(rw):
    root, _ = rw
    with open(root / "log.txt", "wb", buffering=0) as w:
        w.write(b"first line\n")
        with open(root / "log.txt", "rb") as r:
            assert r.read() == b"first line\n"
        w.seek(0)
        w.write(b"FIRST")
        with open(root / "log.txt", "rb") as r:
            assert r.read() == b"FIRST line\n"
    assert (root / "log.txt").read_bytes() == b"FIRST line\n"


def test_overwrite_append_and_random_writes(rw, seaweed):
    root, prefix = rw
    p = root / "f.bin"
    base = os.urandom(5_000_000)
    p.write_bytes(base)
    p.write_bytes(b"short")  # O_TRUNC over an existing object
    assert _store_bytes(seaweed, f"{prefix}/f.bin") == b"short"
    with open(p, "ab") as f:
        f.write(b"+more")
    assert _store_bytes(seaweed, f"{prefix}/f.bin") == b"short+more"
    p.write_bytes(base)
    expect = bytearray(base)
    with open(p, "r+b") as f:  # existing object: fetched once, then patched locally
        for off in (4_999_990, 0, 1_234_567):
            f.seek(off)
            f.write(b"XYZ")
            expect[off:off + 3] = b"XYZ"
    assert sha256(_store_bytes(seaweed, f"{prefix}/f.bin")) == sha256(bytes(expect))
    assert sha256(p.read_bytes()) == sha256(bytes(expect))


def test_truncate_and_ftruncate(rw, seaweed):
    root, prefix = rw
    p = root / "t.bin"
    p.write_bytes(b"0123456789")
    os.truncate(p, 4)
    # uploaded at once when nobody holds the file open; the kernel's release of the writer's
    # handle comes after close() returns, and a truncate before it is uploaded in the background
    assert wait_for(lambda: _store_bytes(seaweed, f"{prefix}/t.bin") == b"0123")
    assert p.read_bytes() == b"0123"
    with open(p, "r+b") as f:
        f.truncate(8)
    assert _store_bytes(seaweed, f"{prefix}/t.bin") == b"0123\0\0\0\0"
    assert os.stat(p).st_size == 8


def test_mkdir_rmdir_unlink(rw, seaweed):
    root, prefix = rw
    os.mkdir(root / "run1")
    assert (root / "run1").is_dir() and "run1" in os.listdir(root)
    assert _errno_of(os.mkdir, root / "run1") == errno.EEXIST
    assert _errno_of(os.mkdir, root / "no/such/parent") == errno.ENOENT
    (root / "run1/ckpt.pt").write_bytes(b"weights")
    assert _errno_of(os.rmdir, root / "run1") == errno.ENOTEMPTY
    assert _errno_of(os.unlink, root / "run1") == errno.EISDIR
    assert _errno_of(os.rmdir, root / "run1/ckpt.pt") == errno.ENOTDIR
    os.unlink(root / "run1/ckpt.pt")
    assert _errno_of(os.unlink, root / "run1/ckpt.pt") == errno.ENOENT
    # an unlink before the writer's release (which comes after close() returns) is an unlink
    # of an open file: its object goes at that release
    assert wait_for(lambda: f"{prefix}/run1/ckpt.pt" not in _store_keys(seaweed, prefix))
    os.rmdir(root / "run1")
    assert not (root / "run1").exists()
    assert "run1" not in os.listdir(root)


def test_a_directory_holding_only_an_emptied_one_stays_after_the_ttl(mounter, dataset, seaweed, request):
    # SeaweedFS keeps an emptied folder: the listing of "run" showed "sub", so "run" was taken
    # as existing through the store's keys and no longer kept; its lookup (a list of the keys
    # below it) then found none: ENOENT for a directory its parent's listing showed, and the
    # job could not write into it any more. On AWS "run" also loses its last key
    prefix = f"{PREFIX}/{request.node.name}"
    root = mounter.mount([mounter.s3_entry("/w", f"s3://{SCRATCH}/{prefix}", metadata_ttl="1s")]) / "w"
    os.makedirs(root / "run/sub")
    (root / "run/sub/f").write_bytes(b"x")
    os.unlink(root / "run/sub/f")
    assert os.listdir(root / "run") == ["sub"]
    time.sleep(1.5)
    assert (root / "run").is_dir() and (root / "run/sub").is_dir()
    assert os.listdir(root) == ["run"] and os.listdir(root / "run") == ["sub"]
    (root / "run/new.txt").write_bytes(b"y")
    assert _store_bytes(seaweed, f"{prefix}/run/new.txt") == b"y"


def test_rename_files_and_directories(rw, seaweed):
    root, prefix = rw
    os.makedirs(root / "tmp/deep")
    (root / "tmp/a").write_bytes(b"A" * 100_000)
    (root / "tmp/deep/b").write_bytes(b"B")
    (root / "checkpoint").write_bytes(b"old state")
    (root / "checkpoint.tmp").write_bytes(b"new state")
    os.rename(root / "checkpoint.tmp", root / "checkpoint")  # over an existing file
    assert (root / "checkpoint").read_bytes() == b"new state"
    assert not (root / "checkpoint.tmp").exists()
    os.rename(root / "tmp/a", root / "a-moved")  # across directories
    assert (root / "a-moved").read_bytes() == b"A" * 100_000
    os.rename(root / "tmp", root / "final")  # a directory with a subdirectory
    assert (root / "final/deep/b").read_bytes() == b"B"
    assert not (root / "tmp").exists() and "tmp" not in os.listdir(root)
    keys = _store_keys(seaweed, prefix)
    assert {f"{prefix}/checkpoint", f"{prefix}/a-moved", f"{prefix}/final/deep/b"} <= keys
    assert not any(k.startswith(f"{prefix}/tmp/") or k.endswith("checkpoint.tmp") for k in keys)
    assert _store_bytes(seaweed, f"{prefix}/checkpoint") == b"new state"
    (root / "x").write_bytes(b"x")
    assert _errno_of(os.rename, root / "final", root / "final/deep/inside") == errno.EINVAL
    assert _errno_of(os.rename, root / "x", root / "final") == errno.EISDIR
    assert _errno_of(os.rename, root / "final", root / "x") == errno.ENOTDIR


def test_rename_of_a_file_still_open_for_writing(rw, seaweed):
    root, prefix = rw
    f = open(root / "partial", "wb")
    f.write(b"abc")
    f.flush()
    os.rename(root / "partial", root / "done")
    f.write(b"def")
    f.close()
    assert _store_bytes(seaweed, f"{prefix}/done") == b"abcdef"
    assert f"{prefix}/partial" not in _store_keys(seaweed, prefix)


def test_a_file_open_for_reading_reads_on_after_a_rename(rw, seaweed):
    """mv of a file (or of its directory) while a job reads it: the reader keeps reading, as
    on a local disk, instead of failing with ESTALE as if someone deleted its object. The
    objects are multipart uploads, whose copies may get another ETag."""
    root, prefix = rw
    store = seaweed.obstore(SCRATCH)
    blobs = {"shard-0": os.urandom(40_000_000), "dir/shard-1": os.urandom(30_000_000)}
    for name, data in blobs.items():
        obstore.put(store, f"{prefix}/{name}", data, chunk_size=5 << 20)
    f0 = open(root / "shard-0", "rb", buffering=0)
    f1 = open(root / "dir/shard-1", "rb", buffering=0)
    head0, head1 = f0.read(4096), f1.read(4096)
    os.rename(root / "shard-0", root / "moved-0")
    os.rename(root / "dir", root / "moved-dir")
    got0 = head0 + f0.read()  # far past what read-ahead fetched before the rename
    got1 = head1 + f1.read()
    f0.close()
    f1.close()
    assert sha256(got0) == sha256(blobs["shard-0"]) and sha256(got1) == sha256(blobs["dir/shard-1"])
    assert sha256((root / "moved-dir/shard-1").read_bytes()) == sha256(blobs["dir/shard-1"])
    keys = _store_keys(seaweed, prefix)
    assert f"{prefix}/moved-0" in keys and f"{prefix}/shard-0" not in keys


def test_concurrent_writers(rw, seaweed):
    root, prefix = rw
    blobs = {f"w{i}.bin": os.urandom(700_000 + i) for i in range(8)}

    def write(name):
        with open(root / name, "wb") as f:
            for off in range(0, len(blobs[name]), 65536):
                f.write(blobs[name][off:off + 65536])
    threads = [threading.Thread(target=write, args=(n,)) for n in blobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for name, data in blobs.items():
        assert sha256(_store_bytes(seaweed, f"{prefix}/{name}")) == sha256(data)


def test_metadata_calls_frameworks_make_succeed(rw):
    root, _ = rw
    p = root / "weights.h5"
    p.write_bytes(b"h5")
    os.chmod(p, 0o600)  # accepted, modes stay fixed
    os.utime(p, (1_000_000, 1_000_000))
    with open(p, "r+b") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # HDF5 locks its files
        fcntl.lockf(f, fcntl.LOCK_EX)
        f.write(b"H5")
        fcntl.flock(f, fcntl.LOCK_UN)
    assert p.read_bytes() == b"H5"
    assert not os.access(p, os.X_OK) and os.access(root, os.X_OK | os.W_OK)  # 0644 files, 0755 directories
    assert _errno_of(os.symlink, "weights.h5", root / "link") == errno.EPERM


def test_touch_of_a_file_being_written_sets_now_and_touch_a_leaves_its_mtime(rw):
    root, _ = rw
    p = root / "events.out"
    with open(p, "wb") as f:
        f.write(b"x")
        f.flush()
        os.utime(p, (1_000_000, 1_000_000))
        assert os.stat(p).st_mtime == 1_000_000
        subprocess.run(["touch", "-a", str(p)], check=True)  # UTIME_OMIT for the mtime
        assert os.stat(p).st_mtime == 1_000_000
        subprocess.run(["touch", str(p)], check=True)  # UTIME_NOW
        assert abs(os.stat(p).st_mtime - time.time()) < 60, os.stat(p).st_mtime


def test_unlink_while_open_for_writing(rw, seaweed):
    root, prefix = rw
    f = open(root / "gone.bin", "wb")
    f.write(b"data")
    f.flush()
    os.unlink(root / "gone.bin")
    f.write(b"more")
    f.close()
    assert not (root / "gone.bin").exists()
    # the kernel sends the release after close() returns: the delete follows it
    assert wait_for(lambda: f"{prefix}/gone.bin" not in _store_keys(seaweed, prefix))


def _old_bytes_or_estale(reader, old: bytes) -> None:
    try:
        assert reader.read() == old
    except OSError as e:
        assert e.errno == errno.ESTALE


def test_a_directory_moved_over_one_removed_while_its_file_was_open_keeps_its_files(rw, seaweed):
    # rm -rf ckpt && mv ckpt.new ckpt while an evaluator read ckpt/model.bin: the moved-in
    # model.bin was hidden (ENOENT, not listed), and the reader's close deleted it (review)
    root, prefix = rw
    os.makedirs(root / "ckpt.new")
    os.makedirs(root / "ckpt")
    (root / "ckpt/model.bin").write_bytes(b"old")
    (root / "ckpt.new/model.bin").write_bytes(b"NEW")
    reader = open(root / "ckpt/model.bin", "rb")
    try:
        shutil.rmtree(root / "ckpt")
        os.rename(root / "ckpt.new", root / "ckpt")
        assert (root / "ckpt/model.bin").read_bytes() == b"NEW"
        assert os.listdir(root / "ckpt") == ["model.bin"]
        _old_bytes_or_estale(reader, b"old")  # its object was replaced while open
    finally:
        reader.close()
    assert (root / "ckpt/model.bin").read_bytes() == b"NEW"
    assert _store_bytes(seaweed, f"{prefix}/ckpt/model.bin") == b"NEW"


def test_the_last_close_of_a_removed_file_leaves_another_client_s_new_object(rw, seaweed):
    root, prefix = rw
    (root / "f").write_bytes(b"old")
    reader = open(root / "f", "rb")
    os.unlink(root / "f")
    obstore.put(seaweed.obstore(SCRATCH), f"{prefix}/f", b"NEW from elsewhere")
    reader.close()
    assert _store_bytes(seaweed, f"{prefix}/f") == b"NEW from elsewhere"


def test_the_last_close_of_a_removed_file_deletes_what_was_there_at_the_unlink(rw, seaweed):
    # the version to spare was told from the cached attributes: an object another client had
    # replaced before the unlink (within the metadata TTL) was taken for a newer one and stayed
    root, prefix = rw
    (root / "f").write_bytes(b"v1")
    reader = open(root / "f", "rb")
    assert reader.read() == b"v1"
    obstore.put(seaweed.obstore(SCRATCH), f"{prefix}/f", b"v2, before the unlink")
    os.unlink(root / "f")
    time.sleep(0.5)  # the unlink's HEAD, in the background
    reader.close()
    assert wait_for(lambda: f"{prefix}/f" not in _store_keys(seaweed, prefix))  # at the (async) release
    assert not (root / "f").exists()


def test_a_directory_removed_while_its_file_was_open_stays_removed(mounter, dataset, seaweed, request):
    # SeaweedFS kept the emptied folder: after the last close the directory came back
    prefix = f"{PREFIX}/{request.node.name}"
    root = mounter.mount([mounter.s3_entry("/w", f"s3://{SCRATCH}/{prefix}", metadata_ttl="1s")]) / "w"
    os.makedirs(root / "d")
    (root / "d/x").write_bytes(b"x")
    reader = open(root / "d/x", "rb")
    os.unlink(root / "d/x")
    os.rmdir(root / "d")
    reader.close()
    time.sleep(1.5)
    assert os.listdir(root) == [] and not (root / "d").exists()


def test_store_site_ignores_spelling_and_credentials():
    from unifs.namespace import store_site
    assert store_site({"endpoint_url": "http://h:8333/", "key": "a"}) == \
        store_site({"endpoint_url": "http://h:8333", "key": "b", "profile": "other"})
    assert store_site({"account_name": "Dev", "account_key": "k1"}) == store_site(
        {"connection_string": "DefaultEndpointsProtocol=https;AccountName=dev;AccountKey=k2;"
                              "EndpointSuffix=core.windows.net"})
    assert store_site({"endpoint_url": "http://h:8333"}) != store_site({"endpoint_url": "http://h:9000"})
    assert store_site({"account_name": "a"}) != store_site({"account_name": "b"})


def test_a_file_removed_while_open_stays_removed_when_its_directory_moves(rw, seaweed):
    root, prefix = rw
    os.makedirs(root / "d")
    (root / "d/deleted.bin").write_bytes(b"x")
    (root / "d/keep.bin").write_bytes(b"k")
    reader = open(root / "d/deleted.bin", "rb")
    os.unlink(root / "d/deleted.bin")
    os.rename(root / "d", root / "d2")
    assert os.listdir(root / "d2") == ["keep.bin"]
    _old_bytes_or_estale(reader, b"x")  # its object moved while open
    reader.close()
    assert os.listdir(root / "d2") == ["keep.bin"]
    assert wait_for(lambda: _store_keys(seaweed, prefix) == {f"{prefix}/d2/keep.bin"})  # at the release


def test_read_only_mount_next_to_a_writable_one(mounter, dataset, seaweed):
    from conftest import BUCKET

    mp = mounter.mount([mounter.s3_entry("/data", f"s3://{BUCKET}", read_only=True),
                        mounter.s3_entry("/ckpt", f"s3://{SCRATCH}/{PREFIX}/ro-neighbour")])
    root = mp / "data"
    f = root / "images/class_0/img_00000.jpg"
    assert_every_change_is_erofs(root, f)
    assert _errno_of(os.rename, f, mp / "ckpt/moved.jpg") == errno.EROFS
    assert _errno_of(open, mp / "toplevel.txt", "wb") == errno.EROFS
    # the neighbour takes writes; a cross-mount rename is EXDEV (mv falls back to copying)
    (mp / "ckpt/c.pt").write_bytes(b"ok")
    assert _errno_of(os.rename, mp / "ckpt/c.pt", root / "c.pt") == errno.EROFS
    assert sha256(f.read_bytes()) == dataset["small"]["images/class_0/img_00000.jpg"]


def test_shell_redirection_over_a_file_does_not_upload_it_empty_first(rw, seaweed):
    import subprocess

    root, prefix = rw
    (root / "k.txt").write_bytes(b"good previous version\n")
    # bash opens with O_TRUNC, dup2s and closes the original descriptor before writing;
    # while `sleep` runs, the store must still hold the previous version
    proc = subprocess.Popen(["bash", "-c", f"(sleep 2; echo new) > {root / 'k.txt'}"])
    try:
        import time
        time.sleep(1)
        assert _store_bytes(seaweed, f"{prefix}/k.txt") == b"good previous version\n"
    finally:
        proc.wait(timeout=30)
    assert _store_bytes(seaweed, f"{prefix}/k.txt") == b"new\n"


def test_cp_a_and_sed_i_work(rw, seaweed, tmp_path):
    import subprocess

    root, prefix = rw
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "d/f.txt").write_text("foo\n")
    res = subprocess.run(["cp", "-a", str(src), str(root / "copy")], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr  # xattrs/ACLs: ENOTSUP, which cp ignores
    res = subprocess.run(["sed", "-i", "s/foo/bar/", str(root / "copy/d/f.txt")], capture_output=True, text=True)
    assert res.returncode == 0 and not res.stderr, res.stderr
    assert _store_bytes(seaweed, f"{prefix}/copy/d/f.txt") == b"bar\n"
    with pytest.raises(OSError) as e:
        os.setxattr(root / "copy/d/f.txt", "user.x", b"1")
    assert e.value.errno == errno.ENOTSUP
    for fn, args in [(os.getxattr, ("user.x",)), (os.listxattr, ())]:
        with pytest.raises(OSError) as e:
            fn(root / "copy/d/f.txt", *args)
        assert e.value.errno == errno.ENOTSUP


def test_a_key_longer_than_the_store_allows_is_enametoolong(rw):
    root, _ = rw
    assert _errno_of(open, root / ("n" * 1100), "wb") == errno.ENAMETOOLONG


def test_renames_under_a_file_open_for_writing_keep_its_content(rw, seaweed):
    """A file opened over an object is fetched on first use; a rename of it or of its directory
    must not leave it fetching from a key that moved away (ESTALE, and after a restart an
    empty upload over the object)."""
    root, prefix = rw
    os.makedirs(root / "d")
    (root / "d/f").write_bytes(b"precious data")
    fd = os.open(root / "d/f", os.O_RDWR)  # opened over the object, nothing fetched yet
    os.rename(root / "d", root / "d2")
    assert os.pread(fd, 100, 0) == b"precious data"
    os.pwrite(fd, b"P", 0)
    os.close(fd)
    assert _store_bytes(seaweed, f"{prefix}/d2/f") == b"Precious data"
    assert (root / "d2/f").read_bytes() == b"Precious data"
    assert f"{prefix}/d/f" not in _store_keys(seaweed, prefix)

    (root / "g").write_bytes(b"GGGG")
    fd = os.open(root / "g", os.O_WRONLY)
    os.rename(root / "g", root / "h")
    os.pwrite(fd, b"x", 1)
    os.close(fd)
    assert _store_bytes(seaweed, f"{prefix}/h") == b"GxGG"
    assert (root / "h").read_bytes() == b"GxGG"


def test_unlink_and_rename_over_open_files_leave_no_hidden_objects(rw, seaweed):
    """libfuse's default renames a removed open file to .fuse_hidden*: a copy in the store, a
    stray entry in every listing and `rm -r` failing with ENOTEMPTY. unifs hides the name at
    once, keeps the object for the open descriptors and deletes it at the last close."""
    root, prefix = rw
    os.makedirs(root / "t")
    big = os.urandom(9 * 1024 * 1024 + 3)
    (root / "t/r").write_bytes(big)
    (root / "t/w").write_bytes(b"old")
    (root / "t/dst").write_bytes(b"dst")
    (root / "t/src").write_bytes(b"src")
    reader = os.open(root / "t/r", os.O_RDONLY)
    assert os.pread(reader, 1000, 0) == big[:1000]  # little of it fetched yet
    writer = os.open(root / "t/w", os.O_RDWR)  # nothing fetched yet
    over = os.open(root / "t/dst", os.O_RDONLY)
    os.unlink(root / "t/r")
    os.unlink(root / "t/w")
    os.rename(root / "t/src", root / "t/dst")
    assert sorted(os.listdir(root / "t")) == ["dst"]
    assert _errno_of(os.stat, root / "t/r") == errno.ENOENT
    assert _store_bytes(seaweed, f"{prefix}/t/dst") == b"src"  # replaced, never missing
    assert os.fstat(writer).st_size == 3 and os.fstat(reader).st_size == len(big)
    assert os.pread(reader, len(big), 0) == big  # the open reader reads on, all of it
    assert os.pread(writer, 10, 0) == b"old"
    os.pwrite(writer, b"more", 3)
    os.ftruncate(writer, 5)
    assert os.pread(writer, 100, 0) == b"oldmo"
    for fd in (reader, writer, over):
        os.close(fd)
    assert (root / "t/dst").read_bytes() == b"src"
    assert wait_for(lambda: _store_keys(seaweed, f"{prefix}/t") == {f"{prefix}/t/dst"})
    # rm -r of a directory holding an open file
    (root / "t/sub").mkdir()
    (root / "t/sub/f").write_bytes(b"f")
    fd = os.open(root / "t/sub/f", os.O_RDONLY)
    shutil.rmtree(root / "t")
    assert not (root / "t").exists() and "t" not in os.listdir(root)
    assert os.pread(fd, 10, 0) == b"f"
    os.close(fd)
    assert wait_for(lambda: not _store_keys(seaweed, f"{prefix}/t")), _store_keys(seaweed, f"{prefix}/t")
    # gone for good once the file closed: a file another client puts there later shows
    obstore.put(seaweed.obstore(SCRATCH), f"{prefix}/t/sub/new", b"later")
    unifs("cache", "clear", str(root), check=True)
    assert wait_for(lambda: (root / "t/sub/new").exists(), timeout=10)
    # a name that only looks like libfuse's, on a file nobody has open: a plain rename
    (root / "keep").write_bytes(b"precious")
    assert wait_for(lambda: _open_handles(root.parent) == 0)  # the kernel's release comes after close()
    os.rename(root / "keep", root / ".fuse_hidden000000aa00000001")
    assert (root / ".fuse_hidden000000aa00000001").read_bytes() == b"precious"
    assert _store_bytes(seaweed, f"{prefix}/.fuse_hidden000000aa00000001") == b"precious"


def test_a_file_unlinked_while_open_stays_gone_after_its_last_close(rw, seaweed):
    # the name's tombstone went before the object: a lookup in between found the object and
    # cached the deleted file as present (stat showed it, open and unlink said ENOENT)
    root, prefix = rw
    data = os.urandom(9 * 1024 * 1024)
    for i in range(10):
        p = root / f"gh{i}"
        p.write_bytes(data)
        fd = os.open(p, os.O_RDONLY)
        os.pread(fd, 4096, 0)
        os.unlink(p)
        os.close(fd)
        assert not p.exists(), i
        p.write_bytes(b"again")  # the name can be used again at once
        assert p.read_bytes() == b"again"
    assert wait_for(lambda: _store_keys(seaweed, prefix) == {f"{prefix}/gh{i}" for i in range(10)})


def test_a_name_reused_while_its_unlinked_object_is_being_deleted(mounter, seaweed, dataset):
    # the last close of a file unlinked while open deletes its object; a new file of the same
    # name written meanwhile was uploaded first and then deleted by that slower DELETE: gone
    import time

    from faultproxy import FaultProxy, upstream_port

    opts = seaweed.mount_options()
    upstream = upstream_port(opts)
    # obstore deletes with a POST ?delete (DeleteObjects); small uploads are one PUT
    with FaultProxy(upstream, delays={"POST": 1.5, "DELETE": 1.5}) as proxy:
        entry = mounter.s3_entry("/w", f"s3://{SCRATCH}/reuse")
        entry["options"] = dict(opts, endpoint_url=opts["endpoint_url"].replace(str(upstream), str(proxy.port)))
        root = mounter.mount([entry]) / "w"
        p = root / "ckpt"
        p.write_bytes(b"old")
        fd = os.open(p, os.O_RDONLY)
        os.unlink(p)
        os.close(fd)  # its object's DELETE now takes 1.5 s
        time.sleep(0.3)
        p.write_bytes(b"new")
        assert p.read_bytes() == b"new"
        time.sleep(2)  # past the DELETE
        assert _store_bytes(seaweed, "reuse/ckpt") == b"new"


def test_dot_entries_are_listed(rw):
    root, _ = rw
    (root / "x").write_bytes(b"x")
    out = subprocess.run(["ls", "-a", str(root)], capture_output=True, text=True, check=True).stdout.split()
    assert out[:2] == [".", ".."] and "x" in out


def test_mknod_and_names_with_control_characters(rw, seaweed):
    root, prefix = rw
    os.mknod(root / "plain", 0o644 | stat.S_IFREG)
    # libfuse makes it with create + release (no flush): the release uploads it, so it is in
    # the store when mknod returns, as a create + close would be
    assert _store_bytes(seaweed, f"{prefix}/plain") == b""
    assert _errno_of(os.mkfifo, root / "fifo") == errno.EPERM
    # keys obstore cannot take go through s3fs, for every operation
    for name in ("new\nline", "tab\tx"):
        (root / name).write_bytes(b"x")
        assert name in os.listdir(root)
    os.rename(root / "tab\tx", root / "tab\ty")
    os.unlink(root / "new\nline")
    assert sorted(n for n in os.listdir(root) if n != "plain") == ["tab\ty"]
    import s3fs  # obstore's own listing refuses these keys

    o = seaweed.mount_options()
    fs = s3fs.S3FileSystem(key=o["key"], secret=o["secret"], endpoint_url=o["endpoint_url"],
                           skip_instance_cache=True)
    want = {f"{SCRATCH}/{prefix}/plain", f"{SCRATCH}/{prefix}/tab\ty"}
    # "new\nline" was unlinked right after its close: its object goes at the kernel's release
    assert wait_for(lambda: fs.invalidate_cache() or set(fs.find(f"{SCRATCH}/{prefix}")) == want), \
        fs.find(f"{SCRATCH}/{prefix}")


def test_local_store_errors_are_immediate_and_exact(mounter, tmp_path):
    d = tmp_path / "local"
    d.mkdir()
    mp = mounter.mount([{"path": "/f", "url": f"file://{d}"}], extra={"store": {"retries": 3}})
    long_name = "n" * 256
    assert _errno_of(os.stat, mp / "f" / long_name) == errno.ENAMETOOLONG
    assert _errno_of(open, mp / "f" / long_name, "wb") == errno.ENAMETOOLONG
    assert _errno_of(os.mkdir, mp / "f" / long_name) == errno.ENAMETOOLONG


def test_files_appended_to_while_their_directory_is_listed_keep_every_byte(mounter, tmp_path):
    """A listing longer than one readdirplus reply, stat()ed while files in it grow: a later
    reply must not carry the size from when the listing began (the kernel took it, and the
    appends that followed overwrote the data in between)."""
    d = tmp_path / "local" / "huge"
    d.mkdir(parents=True)
    for i in range(12_000):
        (d / f"f{i:05d}").write_bytes(b"abc")
    mp = mounter.mount([{"path": "/l", "url": f"file://{tmp_path / 'local'}"}])
    base = mp / "l/huge"
    names = [f"f{i:05d}" for i in range(8000, 12_000, 50)]  # in the later replies
    fds = {n: os.open(base / n, os.O_WRONLY | os.O_APPEND) for n in names}
    for fd in fds.values():
        os.write(fd, b"-")
    with os.scandir(base) as it:
        for i, e in enumerate(it):
            e.stat()
            if i == 100:
                for fd in fds.values():
                    os.write(fd, b"1234567890")
    for fd in fds.values():
        os.write(fd, b"END")
        os.close(fd)
    assert {(base / n).read_bytes() for n in names} == {b"abc-1234567890END"}
    assert {(d / n).read_bytes() for n in names} == {b"abc-1234567890END"}


def test_a_directory_rename_the_store_breaks_off_shows_both_halves_at_once(mounter, dataset):
    # after a directory rename failed half-way the mount listed every name under the old
    # directory (reads of the moved ones: ESTALE) and the new one was ENOENT, until the TTL

    from faultproxy import FaultProxy, upstream_port

    opts = mounter.seaweed.mount_options()
    upstream = upstream_port(opts)

    def rule(method, path, headers):  # the copy of one object fails, every time
        return 403 if method == "PUT" and "x-amz-copy-source" in {k.lower() for k in headers} \
            and path.endswith("/f3") else None
    with FaultProxy(upstream, rule=rule) as proxy:
        entry = mounter.s3_entry("/w", f"s3://{SCRATCH}/halfmove", metadata_ttl="10m",
                                 options=dict(opts, endpoint_url=opts["endpoint_url"].replace(
                                     str(upstream), str(proxy.port))))
        root = mounter.mount([entry]) / "w"
        os.makedirs(root / "src")
        for i in range(8):
            (root / f"src/f{i}").write_bytes(b"%d" % i)
        assert len(os.listdir(root / "src")) == 8
        assert _errno_of(os.rename, root / "src", root / "dst") in (errno.EACCES, errno.EIO)
        in_store = _store_keys(mounter.seaweed, "halfmove/")
        under = {d: sorted(k.rsplit("/", 1)[1] for k in in_store if k.startswith(f"halfmove/{d}/"))
                 for d in ("src", "dst")}
        # the moves done were undone (test_a_directory_rename_the_store_breaks_off_is_undone)
        assert under == {"src": [f"f{i}" for i in range(8)], "dst": []}, under
        assert sorted(os.listdir(root / "src")) == under["src"]
        assert not os.path.exists(root / "dst")
        for name in under["src"]:
            assert (root / "src" / name).read_bytes() == name[1:].encode()


def test_a_file_being_written_goes_back_with_a_directory_rename_the_store_breaks_off(mounter, dataset):
    # it stayed under the new name, which so existed after the failed `mv`: a second `mv`
    # moved the directory into it, one level down

    from faultproxy import FaultProxy, via, upstream_port

    opts = mounter.seaweed.mount_options()
    upstream = upstream_port(opts)
    broken = threading.Event()

    def rule(method, path, headers):
        return 403 if broken.is_set() and method == "PUT" and "x-amz-copy-source" in {k.lower() for k in headers} \
            and path.endswith("/f3") else None
    with FaultProxy(upstream, rule=rule) as proxy:
        entry = mounter.s3_entry("/w", f"s3://{SCRATCH}/openmove", options=via(opts, upstream, proxy.port))
        root = mounter.mount([entry]) / "w"
        os.makedirs(root / "src")
        for i in range(6):
            (root / f"src/f{i}").write_bytes(b"%d" % i)
        with open(root / "src/open.bin", "wb") as w:
            w.write(b"first")
            w.flush()
            broken.set()
            assert _errno_of(os.rename, root / "src", root / "dst") in (errno.EACCES, errno.EIO)
            assert not os.path.exists(root / "dst")
            assert sorted(os.listdir(root / "src")) == [f"f{i}" for i in range(6)] + ["open.bin"]
            w.write(b", second")
        assert (root / "src/open.bin").read_bytes() == b"first, second"
        broken.clear()
        os.rename(root / "src", root / "src2")
    keys = _store_keys(mounter.seaweed, "openmove/")
    assert keys == {f"openmove/src2/{n}" for n in [f"f{i}" for i in range(6)] + ["open.bin"]}, keys
    assert _store_bytes(mounter.seaweed, "openmove/src2/open.bin") == b"first, second"


def test_a_directory_rename_stops_at_the_first_move_the_store_fails(mounter, dataset):
    # every move went on after one had failed, each with the store's full timeout and retries:
    # 300 objects on a hung store kept `mv` (and a FUSE thread) busy for 404 s, 75 min with defaults

    from faultproxy import FaultProxy, upstream_port

    opts = mounter.seaweed.mount_options()
    upstream = upstream_port(opts)
    broken = threading.Event()

    def rule(method, path, headers):
        return 403 if broken.is_set() and method == "PUT" and "x-amz-copy-source" in {k.lower() for k in headers} \
            else None
    with FaultProxy(upstream, rule=rule) as proxy:
        entry = mounter.s3_entry("/w", f"s3://{SCRATCH}/stopmove",
                                 options=dict(opts, endpoint_url=opts["endpoint_url"].replace(
                                     str(upstream), str(proxy.port))))
        root = mounter.mount([entry]) / "w"
        mounter.seaweed.put_many(SCRATCH, {f"stopmove/src/f{i:02d}": b"x" for i in range(64)})
        assert len(os.listdir(root / "src")) == 64
        broken.set()
        assert _errno_of(os.rename, root / "src", root / "dst") in (errno.EACCES, errno.EIO)
        copies = [p for m, p in proxy.failed if m == "PUT"]
        assert 1 <= len(copies) <= 16, len(copies)  # the moves already under way, not all 64
    assert len(_store_keys(mounter.seaweed, "stopmove/src/")) == 64  # nothing was moved


@pytest.mark.parametrize("landed,onto", [(False, False), (True, False), (True, True)],
                         ids=["failed", "failed-but-landed", "onto-an-empty-directory"])
def test_a_directory_rename_the_store_breaks_off_is_undone(mounter, dataset, landed, onto):
    # stopping at the first failed move left part of the tree under the new name: `mv` then
    # moved the rest into it, one level down, and exited 0 (a store that hung for 12 s).
    # landed: the failed copy was done in the store (its answer lost, as a timeout's)

    from faultproxy import FaultProxy, upstream_port

    opts = mounter.seaweed.mount_options()
    upstream = upstream_port(opts)
    allowed = [10]
    lock = threading.Lock()

    def rule(method, path, headers):  # the 11th copy into dst/ and every later one fail
        if method != "PUT" or "x-amz-copy-source" not in {k.lower() for k in headers} or "/undo/dst/" not in path:
            return None
        with lock:
            allowed[0] -= 1
            if allowed[0] == -1 and landed:
                return -403
            return 403 if allowed[0] < 0 else None
    with FaultProxy(upstream, rule=rule) as proxy:
        entry = mounter.s3_entry("/w", f"s3://{SCRATCH}/undo",
                                 options=dict(opts, endpoint_url=opts["endpoint_url"].replace(
                                     str(upstream), str(proxy.port))))
        root = mounter.mount([entry]) / "w"
        want = {f"undo/src/d{i % 4}/f{i:02d}": b"%d" % i for i in range(64)}
        mounter.seaweed.put_many(SCRATCH, want)
        assert len(os.listdir(root / "src")) == 4
        if onto:
            os.mkdir(root / "dst")  # renamed onto: mv's rename(2) replaces an empty directory
            res = subprocess.run(["mv", "-T", str(root / "src"), str(root / "dst")], capture_output=True,
                                 text=True)
        else:
            res = subprocess.run(["mv", str(root / "src"), str(root / "dst")], capture_output=True, text=True)
        assert res.returncode != 0, res
        assert len([p for m, p in proxy.answered if m == "PUT" and "/undo/dst/" in p]) >= 1  # some had moved
    assert _store_keys(mounter.seaweed, "undo/") == set(want)
    assert {k: _store_bytes(mounter.seaweed, k) for k in want} == want
    assert sorted(os.listdir(root)) == (["dst", "src"] if onto else ["src"])
    if onto:
        assert os.listdir(root / "dst") == []


def _run_for(seconds, stop, targets):
    """Run each target in a thread of its own until `stop` is set, `seconds` from now."""
    threads = [threading.Thread(target=t) for t in targets]
    for t in threads:
        t.start()
    threading.Event().wait(seconds)
    stop.set()
    for t in threads:
        t.join(60)


def test_calls_racing_the_close_of_a_written_file_see_no_closed_descriptor(rw, seaweed):
    # the kernel's RELEASE comes after close() returns: a truncate, listing, open or rename of
    # the same name then found the staged copy half-discarded (its descriptor closed): EBADF,
    # EIO with "writes lost" logged, ENOENT
    root, prefix = rw
    errors = []
    for i in range(150):
        fd = os.open(root / "t", os.O_RDWR | os.O_CREAT, 0o644)
        os.pwrite(fd, b"x" * 20_000, 0)
        os.close(fd)
        try:
            os.truncate(root / "t", 1000 + i)
        except OSError as e:
            errors.append(("truncate", i, e.errno))
    assert not errors, errors
    assert wait_for(lambda: _store_bytes(seaweed, f"{prefix}/t") == b"x" * 1149)  # see test_truncate_and_ftruncate

    os.makedirs(root / "d")
    for n in range(3):
        (root / "d" / f"base{n}").write_bytes(b"b")
    stop = threading.Event()

    def churn():
        k = 0
        while not stop.is_set():
            (root / "d" / "churn").write_bytes(b"c" * k)
            os.replace(root / "d" / "churn", root / "d" / f"final{k % 2}")
            k += 1

    def lister():
        while not stop.is_set():
            try:
                names = os.listdir(root / "d")
                assert {"base0", "base1", "base2"} <= set(names), names
                for n in names:
                    os.stat(root / "d" / n)
            except FileNotFoundError:
                pass  # churn, or a final* replaced between the listing and the stat
            except OSError as e:
                errors.append(("listing", e.errno))

    _run_for(4, stop, [churn, lister, lister])
    assert not errors, errors[:5]
    for n in ("final0", "final1"):  # what the mount shows is what the store holds
        assert sha256((root / "d" / n).read_bytes()) == sha256(_store_bytes(seaweed, f"{prefix}/d/{n}"))


def test_a_file_replaced_while_a_reader_has_it_open_never_goes_missing(rw, seaweed):
    # os.replace(tmp, final) with final open: libfuse hides final first, then renames tmp onto
    # it, and a lookup in between got ENOENT (a reader polling a checkpoint saw it vanish)
    root, prefix = rw
    (root / "ckpt").write_bytes(b"v0" * 1000)
    stop = threading.Event()
    missing, opened = [], []

    def writer():
        k = 0
        while not stop.is_set():
            k += 1
            (root / ".tmp").write_bytes(b"v%d" % k * 1000)
            os.replace(root / ".tmp", root / "ckpt")

    def reader():
        while not stop.is_set():
            try:
                fd = os.open(root / "ckpt", os.O_RDONLY)
            except FileNotFoundError:
                missing.append(1)
                continue
            try:
                os.read(fd, 100_000)
            except OSError:
                pass  # replaced under an open descriptor: ESTALE is documented
            os.close(fd)
            opened.append(1)

    _run_for(5, stop, [writer, reader, reader, reader])
    assert opened and not missing, (len(missing), len(opened))
    assert (root / "ckpt").read_bytes() == _store_bytes(seaweed, f"{prefix}/ckpt")


def test_truncate_by_path_while_a_writer_has_the_file_open_waits_for_its_close(rw, seaweed):
    # truncate(2) of a file another descriptor is writing must not upload half of the new
    # version over the stored one; the writer's close does
    root, prefix = rw
    (root / "model.ckpt").write_bytes(b"GOOD" * 1000)
    with open(root / "model.ckpt", "r+b") as w:
        w.write(b"half")
        w.flush()
        os.truncate(root / "model.ckpt", 2000)
        assert _store_bytes(seaweed, f"{prefix}/model.ckpt") == b"GOOD" * 1000
        w.seek(0)
        w.write(b"done")
    assert _store_bytes(seaweed, f"{prefix}/model.ckpt") == b"done" + b"GOOD" * 499
    # with nobody else writing, truncate(2) is a change of its own, uploaded at once
    assert wait_for(lambda: _open_handles(root.parent) == 0)  # the kernel's release comes after close()
    os.truncate(root / "model.ckpt", 4)
    assert _store_bytes(seaweed, f"{prefix}/model.ckpt") == b"done"


def test_files_created_in_a_known_directory_ask_the_store_nothing_before_their_upload(mounter, dataset):
    # each new file of a checkpoint directory cost a HEAD and a LIST (the kernel's lookup of
    # its name) besides its upload: the directory was made here, or listed, and the first
    # create dropped that listing

    from faultproxy import FaultProxy, upstream_port

    opts = mounter.seaweed.mount_options()
    upstream = upstream_port(opts)
    mounter.seaweed.put_many(SCRATCH, {"known/listed/old.txt": b"old"})
    with FaultProxy(upstream) as proxy:
        entry = mounter.s3_entry("/w", f"s3://{SCRATCH}/known", options=dict(
            opts, endpoint_url=opts["endpoint_url"].replace(str(upstream), str(proxy.port))))
        root = mounter.mount([entry]) / "w"
        os.mkdir(root / "made")
        assert os.listdir(root / "listed") == ["old.txt"]
        start = len(proxy.answered)
        for d in ("made", "listed"):
            for i in range(4):
                (root / d / f"f{i}").write_bytes(b"%d" % i)
        asked = proxy.answered[start:]
        assert sorted(m for m, _ in asked) == ["PUT"] * 8, asked
        assert sorted(os.listdir(root / "listed")) == ["f0", "f1", "f2", "f3", "old.txt"]
        assert sorted(os.listdir(root / "made")) == ["f0", "f1", "f2", "f3"]
        assert (root / "made/f3").read_bytes() == b"3"
    assert _store_bytes(mounter.seaweed, "known/made/f2") == b"2"


def test_mkdir_and_directory_renames_ask_the_store_not_an_older_listing(rw, seaweed):
    # another client's directory made since the parent was listed: mkdir succeeded and its
    # (assumed empty) listing hid the files in it; a directory renamed onto one made since our
    # own mkdir merged into it and overwrote its files
    root, prefix = rw
    assert os.listdir(root) == []
    seaweed.put_many(SCRATCH, {f"{prefix}/theirs/x": b"x"})
    assert _errno_of(os.mkdir, root / "theirs") == errno.EEXIST
    assert os.listdir(root / "theirs") == ["x"]
    os.makedirs(root / "src/g")
    (root / "src/g/f").write_bytes(b"ours")
    os.mkdir(root / "r2")
    seaweed.put_many(SCRATCH, {f"{prefix}/r2/e/f": b"theirs"})
    assert _errno_of(os.rename, root / "src/g", root / "r2/e") == errno.ENOTEMPTY
    assert _store_bytes(seaweed, f"{prefix}/r2/e/f") == b"theirs"
    assert _store_bytes(seaweed, f"{prefix}/src/g/f") == b"ours"


def test_mkdir_of_a_name_removed_while_a_file_under_it_is_open(rw, seaweed):
    # `rm -rf out; mkdir out` while a log tail still holds out/log: the object stays in the
    # store until that close, and mkdir's check of the store said EEXIST
    root, prefix = rw
    os.mkdir(root / "out")
    (root / "out/log").write_bytes(b"hi\n")
    with open(root / "out/log", "rb") as held:
        shutil.rmtree(root / "out")
        os.mkdir(root / "out")
        assert os.listdir(root / "out") == []
        assert held.read() == b"hi\n"
        (root / "g").write_bytes(b"g")
        with open(root / "g", "rb"):
            os.unlink(root / "g")
            os.mkdir(root / "g")
    assert os.path.isdir(root / "g") and os.listdir(root / "out") == []


@pytest.mark.parametrize("how", ["touch", "O_EXCL", "O_CREAT and ftruncate"])
def test_a_name_removed_while_open_and_made_again_empty_is_empty(rw, seaweed, how):
    # rm f; touch f, while a reader held f: the old content came back (in the mount after the
    # TTL, and in the store for good): the empty new file was taken for one not meant to
    # replace an object another client had put there
    root, prefix = rw
    (root / "f").write_bytes(b"OLDCONTENT")
    reader = open(root / "f", "rb")
    try:
        assert reader.read() == b"OLDCONTENT"
        os.unlink(root / "f")
        if how == "touch":
            subprocess.run(["touch", str(root / "f")], check=True)
        elif how == "O_EXCL":
            os.close(os.open(root / "f", os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644))
        else:
            fd = os.open(root / "f", os.O_RDWR | os.O_CREAT, 0o644)
            os.ftruncate(fd, 0)
            os.close(fd)
        assert os.stat(root / "f").st_size == 0
    finally:
        reader.close()
    assert wait_for(lambda: _store_bytes(seaweed, f"{prefix}/f") == b""), _store_bytes(seaweed, f"{prefix}/f")
    unifs("cache", "clear", str(root), check=True)
    assert (root / "f").read_bytes() == b""


def test_a_new_file_renamed_over_another_and_removed_while_open_leaves_neither(rw, seaweed):
    # the replaced file's object stayed in the store and came back at the writer's close
    root, prefix = rw
    (root / "f").write_bytes(b"OLD")
    h = os.open(root / "g", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(h, b"NEW")
        os.rename(root / "g", root / "f")
        os.unlink(root / "f")
    finally:
        os.close(h)
    assert wait_for(lambda: not _store_keys(seaweed, f"{prefix}/")), _store_keys(seaweed, f"{prefix}/")
    unifs("cache", "clear", str(root), check=True)
    assert os.listdir(root) == []


def test_a_directory_renamed_with_an_emptied_directory_in_it_leaves_nothing_behind(rw, seaweed):
    # SeaweedFS keeps an emptied prefix as a directory: the old tree stayed listed (with the
    # emptied one in it), mkdir of its name said EEXIST and `mv b a` moved b into it
    root, prefix = rw
    os.makedirs(root / "a/e")
    (root / "a/e/x").write_bytes(b"x")
    (root / "a/y").write_bytes(b"y")
    os.unlink(root / "a/e/x")
    os.rename(root / "a", root / "b")
    assert sorted(os.listdir(root)) == ["b"]
    assert sorted(os.listdir(root / "b")) == ["e", "y"]
    unifs("cache", "clear", str(root), check=True)
    assert sorted(os.listdir(root)) == ["b"]
    os.rename(root / "b", root / "a")
    assert sorted(os.listdir(root)) == ["a"]
    assert (root / "a/y").read_bytes() == b"y"
    assert {k for k in _store_keys(seaweed, f"{prefix}/") if not k.endswith("/")} >= {f"{prefix}/a/y"}
    assert not [k for k in _store_keys(seaweed, f"{prefix}/") if k.startswith(f"{prefix}/b")]


@pytest.mark.parametrize("size,length,offset", [(1 << 20, 4096, 0), (387_847, 66_452, 20_389)])
def test_readers_open_across_a_truncate_by_path_read_the_truncated_file(rw, seaweed, size, length, offset):
    # `truncate -s` while another process had the file open for reading: its reads failed
    # (ESTALE once the truncated file was uploaded); a writer's ftruncate already worked
    root, prefix = rw
    data = os.urandom(size)
    (root / "f").write_bytes(data)
    fd = os.open(root / "f", os.O_RDONLY)
    try:
        os.truncate(root / "f", length)
        assert os.pread(fd, 100, offset) == data[offset:offset + 100]
        assert os.fstat(fd).st_size == length
        assert os.pread(fd, 100, length - 50) == data[length - 50:length]
    finally:
        os.close(fd)
    assert wait_for(lambda: _store_bytes(seaweed, f"{prefix}/f") == data[:length])


def test_a_replaced_file_still_open_follows_its_directory_rename(rw, seaweed):
    # libfuse names the replaced file (hidden while open) below the directory's new path:
    # fstat of it said ENOENT after the rename
    root, prefix = rw
    os.makedirs(root / "e")
    (root / "e/a").write_bytes(b"1" * 10)
    h = os.open(root / "e/a", os.O_RDWR)
    try:
        (root / "e/t").write_bytes(b"2" * 20)
        os.replace(root / "e/t", root / "e/a")
        os.rename(root / "e", root / "e2")
        os.pwrite(h, b"z" * 3000, 0)
        assert os.fstat(h).st_size == 3000
        assert os.pread(h, 5, 0) == b"zzzzz"
    finally:
        os.close(h)
    assert (root / "e2/a").read_bytes() == b"2" * 20
    assert wait_for(lambda: {k for k in _store_keys(seaweed, f"{prefix}/") if not k.endswith("/")}
                    == {f"{prefix}/e2/a"}), _store_keys(seaweed, f"{prefix}/")
    assert _store_bytes(seaweed, f"{prefix}/e2/a") == b"2" * 20
