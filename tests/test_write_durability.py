"""Nothing lost: a write the store cannot take fails at close with EIO, stays on local
disk, shows in `unifs status`, and is uploaded once the store is back, also after the
daemon was killed. A full local disk gives ENOSPC, never a truncated object."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import obstore
import pytest

from conftest import cache_stats, is_mounted, sha256, unifs, wait_for
from unifs.devstores.seaweed import SeaweedS3

BUCKET = "ckpt"


@pytest.fixture
def flaky(tmp_path):
    """A SeaweedFS of its own, stopped and restarted (same port, same data) by the tests."""
    server = SeaweedS3(str(tmp_path / "flaky")).start()
    server.create_bucket(BUCKET)
    yield server
    server.stop()


@pytest.fixture
def tiny_staging(mounter, tmp_path):
    """A 1 MiB file system for a staging directory, so a write runs out of room (ENOSPC)."""
    small = tmp_path / "tiny-staging"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(small)], check=True)
    try:
        yield small
    finally:
        mounter.cleanup()  # its mounts stage there
        subprocess.run(["umount", str(small)], check=False)


def _table(mounter, server, **write):
    mounter.seaweed = server
    entry = mounter.s3_entry("/c", f"s3://{BUCKET}/run", write_back="1s")
    return {"mounts": [entry], "store": {"timeout": "2s", "connect_timeout": "1s", "retries": 1},
            "write": {"staging_dir": str(mounter.tmp / "staging"), "retry_max_interval": "1s", **write}}


def _mount(mounter, server):
    t = _table(mounter, server)
    return mounter.mount(t.pop("mounts"), extra=t)


def _mount_bg(mounter, server, mp):
    """`unifs mount` of the flaky server's table at mp, as a user runs it; returns the config."""
    cfg = mounter.write_table(_table(mounter, server))
    mp.mkdir()
    unifs("mount", str(mp), "--config", str(cfg), check=True)
    return cfg


def _status(mp) -> dict:
    res = unifs("status", "--json", check=True)
    rows = [r for r in json.loads(res.stdout) if r["mountpoint"] == str(mp)]
    assert rows, res.stdout
    return rows[0]


def _stop_daemon(pid: int, sig: int, timeout: float = 10.0) -> None:
    os.kill(pid, sig)
    assert wait_for(lambda: subprocess.run(["kill", "-0", str(pid)], capture_output=True).returncode != 0,
                    timeout=timeout)


def _in_store(server, key):
    """The object's bytes, or None while it is absent or the store cannot serve it yet (a
    SeaweedFS just restarted, or a background upload of the key in progress, can answer 500)."""
    try:
        return bytes(obstore.get(server.obstore(BUCKET), key).bytes())
    except (FileNotFoundError, obstore.exceptions.BaseError):
        return None


def _write_across_outage(path, data, server):
    """Open and start writing while the store is up, stop it, finish: close fails with EIO."""
    with pytest.raises(OSError) as e:
        with open(path, "wb") as f:
            f.write(data[:len(data) // 2])
            f.flush()
            server.stop()
            f.write(data[len(data) // 2:])
    assert e.value.errno == errno.EIO, e.value


def _left_pending(mounter, server, mp, name: str) -> bytes:
    """A file written through a mount at mp across an outage, left pending by `umount --force`;
    the store is back. Returns its bytes."""
    _mount_bg(mounter, server, mp)
    data = os.urandom(50_000)
    _write_across_outage(mp / name, data, server)
    assert unifs("umount", "--force", str(mp)).returncode == 0
    server.restart()
    return data


def _append_with_the_store_down(path, text):
    """A logging handler's open (mode 'a') and write: its close fails with EIO."""
    f = open(path, "a")
    f.write(text)
    with pytest.raises(OSError) as e:
        f.close()
    assert e.value.errno == errno.EIO


def test_store_down_at_close_keeps_data_and_uploads_later(mounter, flaky):
    mp = _mount(mounter, flaky)
    (mp / "c/before.bin").write_bytes(b"fine")
    data = os.urandom(2 * 1024 * 1024 + 5)
    _write_across_outage(mp / "c/epoch3.pt", data, flaky)

    def pending_now():
        return [p for p in _status(mp)["pending"] if p["path"] == "/c/epoch3.pt" and p["state"] == "pending"]
    # FUSE sends release (after which the file counts as closed) just after close() returns
    assert wait_for(pending_now, timeout=10), _status(mp)
    pending = pending_now()
    assert "cannot connect to the store" in pending[0]["error"], pending[0]["error"]
    with open(pending[0]["data"], "rb") as f:  # the user can recover it by hand
        assert sha256(f.read()) == sha256(data)
    text = unifs("status").stdout
    assert "upload pending: /c/epoch3.pt" in text and pending[0]["data"] in text
    # reads through the mount still see what was written
    assert sha256((mp / "c/epoch3.pt").read_bytes()) == sha256(data)

    flaky.restart()
    assert wait_for(lambda: _in_store(flaky, "run/epoch3.pt") is not None, timeout=60)
    assert sha256(_in_store(flaky, "run/epoch3.pt")) == sha256(data)
    assert wait_for(lambda: not _status(mp)["pending"], timeout=20)
    assert not os.path.exists(pending[0]["data"])


def test_killed_daemon_resumes_pending_uploads(mounter, flaky, tmp_path):
    mp = tmp_path / "mnt-resume"
    cfg = _mount_bg(mounter, flaky, mp)
    try:
        data = os.urandom(300_000)
        held = os.open(mp / "c/held.log", os.O_WRONLY | os.O_CREAT)  # still open when the daemon dies
        os.write(held, b"partial")
        _write_across_outage(mp / "c/model.keras", data, flaky)
        # closed (and so pending) at the kernel's release, which comes after close() returns
        assert wait_for(lambda: {p["path"]: p["state"] for p in _status(mp)["pending"]}.get("/c/model.keras")
                        == "pending"), _status(mp)
        pid = _status(mp)["pid"]
        _stop_daemon(pid, signal.SIGKILL)
        left = {p["path"]: p["state"] for p in _status(mp)["pending"]}
        assert left == {"/c/model.keras": "pending", "/c/held.log": "orphaned"}, left
        res = unifs("umount", str(mp))  # the stale mount of the dead daemon
        assert res.returncode == 0, res.stderr
        assert "2 file(s) not in the store are kept in" in res.stdout, res.stdout
        # and `unifs status` still names them once the mount is gone
        row = _status(mp)
        assert row["state"] == "unmounted" and row["pid"] is None, row
        assert {p["path"]: p["state"] for p in row["pending"]} == left, row
        assert "not mounted: mounting it again" in unifs("status").stdout
        try:
            os.close(held)
        except OSError:
            pass
        flaky.restart()
        unifs("mount", str(mp), "--config", str(cfg), check=True)
        assert wait_for(lambda: _in_store(flaky, "run/model.keras") is not None, timeout=60)
        assert sha256(_in_store(flaky, "run/model.keras")) == sha256(data)
    finally:
        if is_mounted(mp):
            unifs("umount", "--force", str(mp))


def test_umount_waits_for_pending_uploads(mounter, flaky):
    mp = _mount(mounter, flaky)
    data = os.urandom(100_000)
    _write_across_outage(mp / "c/last.ckpt", data, flaky)
    waiter = subprocess.Popen([sys.executable, "-m", "unifs", "umount", str(mp)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        # still waiting (and still mounted) while the store is down
        assert not wait_for(lambda: waiter.poll() is not None, timeout=3)
        assert is_mounted(mp)
        flaky.restart()
        out, err = waiter.communicate(timeout=90)
    finally:
        if waiter.poll() is None:
            waiter.kill()
    assert waiter.returncode == 0, err
    assert not is_mounted(mp)
    assert sha256(_in_store(flaky, "run/last.ckpt")) == sha256(data)


def test_umount_force_leaves_staged_files_and_says_where(mounter, flaky):
    from unifs.mountinfo import log_file

    mp = _mount(mounter, flaky)
    _write_across_outage(mp / "c/abandoned.bin", b"precious", flaky)
    res = unifs("umount", "--force", str(mp))
    assert res.returncode == 0, res.stderr
    # the daemon's log says why the upload failed: kept (a clean unmount used to delete it)
    assert wait_for(lambda: log_file(str(mp)).exists() and "abandoned.bin" in log_file(str(mp)).read_text(),
                    timeout=10)
    staging = str(mounter.tmp / "staging")
    assert staging in res.stdout and "1 file(s)" in res.stdout
    found = [os.path.join(d, f) for d, _, fs in os.walk(staging) for f in fs if f.endswith(".data")]
    assert [open(p, "rb").read() for p in found] == [b"precious"]
    row = _status(mp)  # the mount is gone; status still says what is left, and where
    assert row["state"] == "unmounted" and [p["path"] for p in row["pending"]] == ["/c/abandoned.bin"], row
    assert row["pending"][0]["data"] == found[0]
    for p in found:  # recovered by hand: then nothing is left to report
        os.remove(p)
        os.remove(p[:-len(".data")] + ".json")
    rows = json.loads(unifs("status", "--json", check=True).stdout)
    assert not [r for r in rows if r["mountpoint"] == str(mp)], rows


@pytest.mark.parametrize("change", ["path", "endpoint"])
def test_a_pending_upload_the_mount_table_no_longer_maps_is_not_waited_for(mounter, flaky, tmp_path, change):
    # remounted with another table: the old daemon's pending file cannot be uploaded, and
    # `unifs umount` waited for it forever (systemd: a stop hung for TimeoutStopSec). The same
    # bucket and prefix at another endpoint is another store: the file went there (review)
    from faultproxy import FaultProxy

    mp = tmp_path / "mnt-strand"
    data = _left_pending(mounter, flaky, mp, "c/stranded.bin")
    other = _table(mounter, flaky)
    # a proxy stands for the other endpoint: what went through it would land in the same store
    proxy = FaultProxy(flaky.port).__enter__()
    if change == "path":
        other["mounts"][0]["path"] = "/elsewhere"
    else:
        other["mounts"][0]["options"]["endpoint_url"] = f"http://127.0.0.1:{proxy.port}"
    cfg = mounter.write_table(other)
    unifs("mount", str(mp), "--config", str(cfg), check=True)
    try:
        left = {p["path"]: p["state"] for p in _status(mp)["pending"]}
        assert left == {"/c/stranded.bin": "stranded"}, left
        assert "the mount table no longer maps this path" in unifs("status").stdout
        assert _in_store(flaky, "run/stranded.bin") is None
        res = unifs("umount", str(mp), timeout=60)
        assert res.returncode == 0 and "1 file(s) not in the store are kept" in res.stdout, (res.stdout, res.stderr)
        # the original table again: uploaded after all
        unifs("mount", str(mp), "--config", str(mounter.write_table(_table(mounter, flaky))), check=True)
        assert wait_for(lambda: _in_store(flaky, "run/stranded.bin") is not None, timeout=30)
        assert sha256(_in_store(flaky, "run/stranded.bin")) == sha256(data)
        assert wait_for(lambda: not _status(mp)["pending"], timeout=10), _status(mp)
    finally:
        if is_mounted(mp):
            unifs("umount", "--force", str(mp))
        proxy.__exit__(None, None, None)


def test_a_mount_with_another_staging_dir_than_its_pending_files_is_refused(mounter, flaky, tmp_path):
    # the new daemon neither uploaded nor listed them, and `unifs status` lost them (review)
    mp = tmp_path / "mnt-moved"
    data = _left_pending(mounter, flaky, mp, "c/waiting.bin")
    moved = mounter.write_table(_table(mounter, flaky, staging_dir=str(tmp_path / "staging2")))
    res = unifs("mount", str(mp), "--config", str(moved))
    assert res.returncode != 0 and not is_mounted(mp)
    assert str(mounter.tmp / "staging") in res.stderr and "Traceback" not in res.stderr, res.stderr
    assert {p["path"] for p in _status(mp)["pending"]} == {"/c/waiting.bin"}
    # with the staging_dir it had: uploaded
    unifs("mount", str(mp), "--config", str(mounter.write_table(_table(mounter, flaky))), check=True)
    try:
        assert wait_for(lambda: _in_store(flaky, "run/waiting.bin") is not None, timeout=30)
        assert sha256(_in_store(flaky, "run/waiting.bin")) == sha256(data)
    finally:
        unifs("umount", "--force", str(mp))


def test_write_back_shows_progress_of_a_file_still_open(mounter, flaky):
    mp = _mount(mounter, flaky)
    with open(mp / "c/events.out.tfevents", "wb") as f:
        f.write(b"step 1\n")
        f.flush()
        assert wait_for(lambda: _in_store(flaky, "run/events.out.tfevents") == b"step 1\n", timeout=20)
        f.write(b"step 2\n")
        f.flush()
        assert wait_for(lambda: _in_store(flaky, "run/events.out.tfevents") == b"step 1\nstep 2\n", timeout=20)
        f.write(b"step 3\n")
    assert _in_store(flaky, "run/events.out.tfevents") == b"step 1\nstep 2\nstep 3\n"


def test_write_back_shows_progress_of_a_log_written_without_pauses(mounter, flaky):
    # a line every 0.3 s never gave the writer the 1 s pause write-back waited for: readers
    # of the store saw nothing until the job ended (write_back 1s: at least every 6 s)
    import time

    mp = _mount(mounter, flaky)
    seen = None
    with open(mp / "c/train.log", "w") as f:
        end = time.monotonic() + 20
        step = 0
        while time.monotonic() < end and not seen:
            f.write(f"step {step} loss 0.{step:04d}\n")
            f.flush()
            step += 1
            time.sleep(0.3)
            seen = _in_store(flaky, "run/train.log")
    assert seen and seen.startswith(b"step 0 loss 0.0000\n"), seen
    assert _in_store(flaky, "run/train.log") == (mp / "c/train.log").read_bytes()


def test_full_local_disk_gives_enospc_and_uploads_nothing(mounter, seaweed, dataset, tiny_staging):
    from conftest import SCRATCH

    mp = mounter.mount([mounter.s3_entry("/c", f"s3://{SCRATCH}/enospc")],
                       extra={"write": {"staging_dir": str(tiny_staging / "s")}})
    with pytest.raises(OSError) as e:
        with open(mp / "c/too-big.bin", "wb") as f:
            for _ in range(4):
                f.write(os.urandom(1024 * 1024))
    assert e.value.errno == errno.ENOSPC
    assert _keys(seaweed, SCRATCH, "enospc") == set()
    # nothing of it reached the store: the mount does not show it either (it did until
    # the kernel's attribute timeout, and then open() said ENOENT)
    assert wait_for(lambda: not os.path.exists(mp / "c/too-big.bin"), timeout=10)  # well below the TTL
    assert os.listdir(mp / "c") == []
    (mp / "c/fits.bin").write_bytes(b"small enough")
    assert _keys(seaweed, SCRATCH, "enospc") == {"enospc/fits.bin"}


def test_df_of_a_writable_mount_tells_the_room_of_its_staging_disk(mounter, seaweed, dataset, tiny_staging):
    # it said 4 PiB free: a program checking for room before a big checkpoint went ahead and
    # met ENOSPC half-way
    from conftest import SCRATCH

    mp = mounter.mount([mounter.s3_entry("/c", f"s3://{SCRATCH}/df")],
                       extra={"write": {"staging_dir": str(tiny_staging / "s")}})
    usage, room = shutil.disk_usage(mp / "c"), shutil.disk_usage(tiny_staging)
    assert usage.total == room.total == 1 << 20
    assert abs(usage.free - room.free) <= 64 << 10
    with open(mp / "c/part.bin", "wb") as f:
        f.write(os.urandom(512 << 10))
        f.flush()
        assert shutil.disk_usage(mp / "c").free <= usage.free - (512 << 10)
    ro = mounter.mount([mounter.s3_entry("/d", f"s3://{SCRATCH}/df", read_only=True)],
                       extra={"write": {"staging_dir": str(tiny_staging / "s2")}})
    assert shutil.disk_usage(ro / "d").free >= 1 << 50  # nothing to write: no bound to tell


def test_a_staging_directory_deleted_under_the_daemon_is_eio_not_enoent(mounter, seaweed, dataset, tmp_path):
    # "No such file or directory" for a new file in a directory that exists, and no word in the log
    from conftest import SCRATCH

    staging = tmp_path / "gone-staging"
    mp = mounter.mount([mounter.s3_entry("/c", f"s3://{SCRATCH}/staging-gone")],
                       extra={"write": {"staging_dir": str(staging)}})
    (mp / "c/first.txt").write_bytes(b"1")
    assert wait_for(lambda: not shutil.rmtree(staging, ignore_errors=True) and not staging.exists(), timeout=10)
    with pytest.raises(OSError) as e:
        (mp / "c/second.txt").write_bytes(b"2")
    assert e.value.errno == errno.EIO
    assert os.listdir(mp / "c") == ["first.txt"]


def test_a_file_that_fills_the_staging_disk_is_still_uploaded(mounter, seaweed, dataset, tiny_staging):
    # its record had to be rewritten before the upload, with no room left for it: close
    # failed with ENOSPC and the uploader retried with a traceback until space was freed
    from conftest import SCRATCH

    mp = mounter.mount([mounter.s3_entry("/c", f"s3://{SCRATCH}/enospc-full")],
                       extra={"write": {"staging_dir": str(tiny_staging / "s")}})
    with open(mp / "c/fills.bin", "wb") as f:
        vfs = os.statvfs(tiny_staging)
        data = os.urandom(vfs.f_bavail * vfs.f_bsize)  # every block left, its record's included
        f.write(data)
        f.flush()
        # no room for another file's record: its open fails, and leaves no empty data file
        with pytest.raises(OSError) as e:
            open(mp / "c/another.bin", "wb")
        assert e.value.errno == errno.ENOSPC
        left = [n for d in os.listdir(tiny_staging / "s") for n in os.listdir(tiny_staging / "s" / d)]
        assert len([n for n in left if n.endswith(".data")]) == 1 and not [n for n in left if n.endswith(".tmp")], \
            left
    assert _in_store_s3(seaweed, SCRATCH, "enospc-full/fills.bin") == data
    def left():
        return [n for d in os.listdir(tiny_staging / "s") for n in os.listdir(tiny_staging / "s" / d)
                if n.endswith((".data", ".tmp"))]
    assert wait_for(lambda: not left()), left()  # the space is free again (at the kernel's release)


def test_a_rewrite_after_a_full_disk_uploads_while_a_reader_keeps_the_failed_copy(mounter, seaweed, dataset,
                                                                                 tiny_staging):
    # the reader kept the staged copy of the write that failed, and with it the write error:
    # the next `open(..., "wb")` wrote fine, and its close failed on the old error
    from conftest import SCRATCH

    mp = mounter.mount([mounter.s3_entry("/c", f"s3://{SCRATCH}/enospc-reader")],
                       extra={"write": {"staging_dir": str(tiny_staging / "s")}})
    (mp / "c/log.txt").write_bytes(b"v1\n")
    with pytest.raises(OSError) as e:
        with open(mp / "c/log.txt", "wb") as f:
            reader = open(mp / "c/log.txt", "rb")
            for _ in range(4):
                f.write(os.urandom(1024 * 1024))
    assert e.value.errno == errno.ENOSPC
    try:
        with open(mp / "c/log.txt", "wb") as f:
            f.write(b"fits\n")
        assert bytes(obstore.get(seaweed.obstore(SCRATCH), "enospc-reader/log.txt").bytes()) == b"fits\n"
    finally:
        reader.close()


def test_a_name_put_into_the_store_since_its_listing_is_never_replaced_half_written(mounter, seaweed, dataset,
                                                                                     tiny_staging):
    # the daemon's listing (within its TTL) did not have the name, so `cmd > f` created it as a
    # new file: the shell's close of a copy of its descriptor uploaded it empty, and write-back
    # uploaded it half-written, over an object another client had put there; a writer that then
    # failed with ENOSPC left that object empty
    from conftest import SCRATCH

    mp = mounter.mount([mounter.s3_entry("/c", f"s3://{SCRATCH}/unknown", write_back="1s")],
                       extra={"write": {"staging_dir": str(tiny_staging / "s")}})
    assert os.listdir(mp / "c") == []  # listed: these names are not there for the next 60 s
    theirs = {n: os.urandom(200_000) for n in ("full", "touched", "slow", "emptied")}
    seaweed.put_many(SCRATCH, {f"unknown/{n}": b for n, b in theirs.items()})

    def in_store(n):
        return bytes(obstore.get(seaweed.obstore(SCRATCH), f"unknown/{n}").bytes())
    res = subprocess.run(f"head -c 4000000 /dev/zero > {mp}/c/full", shell=True, capture_output=True,
                         text=True)
    assert res.returncode != 0 and "No space left on device" in res.stderr, res
    assert in_store("full") == theirs["full"]
    subprocess.run(["touch", str(mp / "c/touched")], check=True)
    assert in_store("touched") == theirs["touched"]
    writer = subprocess.Popen(f"(sleep 3; printf new) > {mp}/c/slow", shell=True)
    try:
        time.sleep(2.5)  # past write_back (1 s) and its quiet second
        assert in_store("slow") == theirs["slow"]
    finally:
        assert writer.wait(30) == 0
    assert in_store("slow") == b"new"
    subprocess.run(f": > {mp}/c/emptied", shell=True, check=True)
    # emptied as a known file is by `: >`: by the uploader, after the release
    assert wait_for(lambda: in_store("emptied") == b"", timeout=20)
    # what the mount shows after the releases: the store's objects, not the empty files
    assert wait_for(lambda: os.stat(mp / "c/touched").st_size == 200_000, timeout=5)
    assert sha256((mp / "c/full").read_bytes()) == sha256(theirs["full"])


def test_an_open_without_o_trunc_keeps_an_object_put_since_the_listing(mounter, seaweed, dataset):
    # the daemon's listing (within its TTL) did not have the names, so the kernel created them:
    # `>>` replaced another client's object with the two bytes appended, open(..., 'x')
    # succeeded over it, and an O_CREAT open renamed before any write left the new name empty
    from conftest import SCRATCH

    mp = mounter.mount([mounter.s3_entry("/c", f"s3://{SCRATCH}/noclobber")])
    assert os.listdir(mp / "c") == []
    theirs = {n: os.urandom(300_000) for n in ("appended", "exclusive", "patched", "touched", "moved")}
    seaweed.put_many(SCRATCH, {f"noclobber/{n}": b for n, b in theirs.items()})

    def in_store(n):
        return bytes(obstore.get(seaweed.obstore(SCRATCH), f"noclobber/{n}").bytes())
    subprocess.run(f"echo x >> {mp}/c/appended", shell=True, check=True)
    assert in_store("appended") == theirs["appended"] + b"x\n"
    with pytest.raises(FileExistsError):
        open(mp / "c/exclusive", "x")
    assert in_store("exclusive") == theirs["exclusive"]
    fd = os.open(mp / "c/patched", os.O_WRONLY | os.O_CREAT)
    os.write(fd, b"hi")
    os.close(fd)
    assert in_store("patched") == b"hi" + theirs["patched"][2:]
    subprocess.run(["touch", str(mp / "c/touched")], check=True)
    assert in_store("touched") == theirs["touched"]
    fd = os.open(mp / "c/moved", os.O_WRONLY | os.O_CREAT)
    os.rename(mp / "c/moved", mp / "c/moved2")
    os.close(fd)
    assert in_store("moved2") == theirs["moved"]
    assert sha256((mp / "c/appended").read_bytes()) == sha256(theirs["appended"] + b"x\n")


def test_a_log_opened_for_appending_while_the_store_is_down_is_kept_and_uploaded(mounter, flaky):
    # a create without O_TRUNC asks the store whether another client put the file there: with
    # the store down that must not refuse the open (a logging handler opens with mode 'a')
    mp = _mount(mounter, flaky)
    assert os.listdir(mp / "c") == []  # listed: the create needs no lookup from the store
    flaky.stop()
    _append_with_the_store_down(mp / "c/train.log", "epoch 1\n")
    flaky.restart()
    assert wait_for(lambda: _in_store(flaky, "run/train.log") == b"epoch 1\n", timeout=60)


def test_a_file_touched_while_the_store_was_down_is_the_object_found_there_after(mounter, flaky):
    # the uploader found another client's object and kept it, then dropped the empty staged
    # file; the name was gone from the mount (ls, cat: ENOENT) until the listing expired
    mp = _mount(mounter, flaky)
    assert os.listdir(mp / "c") == []
    obstore.put(flaky.obstore(BUCKET), "run/z", b"fromB")
    flaky.stop()
    f = open(mp / "c/z", "a")
    with pytest.raises(OSError) as e:
        f.close()
    assert e.value.errno == errno.EIO
    flaky.restart()
    assert wait_for(lambda: not _status(mp)["pending"], timeout=60), _status(mp)
    assert os.listdir(mp / "c") == ["z"]
    assert (mp / "c/z").read_bytes() == b"fromB"
    assert _in_store(flaky, "run/z") == b"fromB"


def test_an_append_while_the_store_is_down_never_replaces_an_object_put_since_the_listing(mounter, flaky):
    # the create could not ask the store: the object another client put there since the
    # listing turns up before the first upload, and the appended lines stay local instead of
    # replacing it (which would lose the other client's lines)
    mp = _mount(mounter, flaky)
    assert os.listdir(mp / "c") == []
    theirs = b"EXISTING-LOG-LINE-1\n"
    obstore.put(flaky.obstore(BUCKET), "run/train.log", theirs)
    obstore.put(flaky.obstore(BUCKET), "run/held.lock", b"host-a")
    # filelock's SoftFileLock opens with O_EXCL|O_TRUNC: the lock another host holds is found
    with pytest.raises(FileExistsError):
        os.open(mp / "c/held.lock", os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_TRUNC)
    assert (mp / "c/held.lock").read_bytes() == b"host-a"  # stat and open agree with the EEXIST
    flaky.stop()
    # a lock file needs certainty: O_EXCL cannot be granted without asking the store
    for flags in (os.O_EXCL, os.O_EXCL | os.O_TRUNC):
        with pytest.raises(OSError) as e:
            os.open(mp / "c/lock", os.O_WRONLY | os.O_CREAT | flags)
        assert e.value.errno == errno.EIO
    _append_with_the_store_down(mp / "c/train.log", "appended while down\n")
    flaky.restart()

    def row():
        return {p["path"]: p for p in _status(mp)["pending"]}.get("/c/train.log", {})
    assert wait_for(lambda: row().get("state") == "failed", timeout=60), _status(mp)
    row = row()
    assert "/c/train.log" in row["error"] and "not meant to replace" in row["error"], row
    assert wait_for(lambda: _in_store(flaky, "run/train.log") == theirs, timeout=30)  # a 500 just after a restart
    with open(row["data"], "rb") as kept:
        assert kept.read() == b"appended while down\n"


def test_an_append_made_while_the_store_was_down_stays_unchecked_across_a_daemon_restart(mounter, flaky,
                                                                                        tmp_path):
    mp = tmp_path / "mnt-unchecked"
    cfg = _mount_bg(mounter, flaky, mp)
    try:
        assert os.listdir(mp / "c") == []
        theirs = b"THEIR LINE\n"
        obstore.put(flaky.obstore(BUCKET), "run/app.log", theirs)
        flaky.stop()
        with pytest.raises(OSError):
            with open(mp / "c/app.log", "a") as f:
                f.write("mine\n")
        assert wait_for(lambda: [p["state"] for p in _status(mp)["pending"]] in (["pending"], ["failed"])), \
            _status(mp)  # closed at the kernel's release, after close() returned
        pid = _status(mp)["pid"]
        _stop_daemon(pid, signal.SIGKILL)
        unifs("umount", str(mp))
        flaky.restart()
        unifs("mount", str(mp), "--config", str(cfg), check=True)
        assert wait_for(lambda: [p["state"] for p in _status(mp)["pending"]] == ["failed"], timeout=60), \
            _status(mp)
        assert wait_for(lambda: _in_store(flaky, "run/app.log") == theirs, timeout=30)
    finally:
        if is_mounted(mp):
            unifs("umount", "--force", str(mp))


def test_a_failed_close_upload_is_retried_while_a_reader_keeps_the_file_open(mounter, flaky):
    # a reader (tail -f) attached to the staged copy counted as a writer: the failed upload
    # was never retried while it stayed open, and a daemon stop left the file "orphaned"
    mp = _mount(mounter, flaky)
    (mp / "c/app.log").write_bytes(b"line 1\n")
    with open(mp / "c/app.log", "rb") as monitor:
        assert monitor.read() == b"line 1\n"
        with pytest.raises(OSError) as e:
            with open(mp / "c/app.log", "ab") as f:
                f.write(b"line 2\n")
                f.flush()  # the write fetched the stored part; the upload at close fails
                flaky.stop()
        assert e.value.errno == errno.EIO
        assert wait_for(lambda: [p["state"] for p in _status(mp)["pending"]] == ["pending"]), _status(mp)
        flaky.restart()
        assert wait_for(lambda: _in_store(flaky, "run/app.log") == b"line 1\nline 2\n", timeout=60)
        assert monitor.read() == b"line 2\n"
        # uploaded: nothing for status to list, nor for a restarted daemon to upload again
        assert wait_for(lambda: _status(mp)["pending"] == [], timeout=10), _status(mp)
    # the same, then removed while the monitor reads: its changes must never reach the store,
    # not even through a restart
    with open(mp / "c/app.log", "rb") as monitor:
        with pytest.raises(OSError):
            with open(mp / "c/app.log", "ab") as f:
                f.write(b"line 3\n")
                f.flush()
                flaky.stop()
        os.unlink(mp / "c/app.log")
        assert wait_for(lambda: _status(mp)["pending"] == []), _status(mp)
    flaky.restart()


def test_a_disk_cache_gives_room_to_staged_writes(mounter, seaweed, dataset, tmp_path):
    # cache.dir and staging_dir on one file system (/var/cache and /var/lib by default): the
    # disk tier, bound above the free space, filled it and checkpoint writes got ENOSPC
    from conftest import BUCKET as DATA, SCRATCH

    fs = tmp_path / "small-fs"
    fs.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(fs)], check=True)
    try:
        mp = mounter.mount([mounter.s3_entry("/data", f"s3://{DATA}", read_only=True),
                            mounter.s3_entry("/c", f"s3://{SCRATCH}/roomy")],
                           extra={"write": {"staging_dir": str(fs / "staging")},
                                  "cache": {"mode": "tiered", "dir": str(fs / "cache"), "ram": "8MiB",
                                            "disk": "1GiB", "block_size": "1MiB"}})
        with open(mp / "data/shards/big.bin", "rb") as f:
            assert f.read() == dataset["big"]  # 110 MiB through a 48 MiB file system
        stats = cache_stats(mp)
        assert stats["cache"]["disk"]["limit"] < 48 << 20
        data = os.urandom(20 << 20)
        with open(mp / "c/ckpt.bin", "wb") as f:
            for i in range(0, len(data), 1 << 20):
                f.write(data[i:i + (1 << 20)])
        assert _in_store_s3(seaweed, SCRATCH, "roomy/ckpt.bin") == data
    finally:
        mounter.cleanup()
        subprocess.run(["umount", str(fs)], check=False)


def _in_store_s3(server, bucket, key):
    return bytes(obstore.get(server.obstore(bucket), key).bytes())


def _keys(server, bucket, prefix):
    return {m["path"] for chunk in obstore.list(server.obstore(bucket), prefix) for m in chunk}


def test_write_back_never_replaces_an_object_with_a_partial_one(mounter, flaky):
    import time

    obstore.put(flaky.obstore(BUCKET), "run/model.pt", b"good old checkpoint")
    mp = _mount(mounter, flaky)  # write_back: 1s
    with open(mp / "c/model.pt", "wb") as f:
        f.write(b"half of a new checkp")
        f.flush()
        time.sleep(3)  # well past write_back with the writer quiet: still no upload of half a file
        assert _in_store(flaky, "run/model.pt") == b"good old checkpoint"
        f.write(b"oint")
    assert _in_store(flaky, "run/model.pt") == b"half of a new checkpoint"


def test_rm_that_fails_keeps_a_pending_upload(mounter, flaky):
    # unlink used to drop the staged copy before the store delete: with the store down, rm
    # failed with EIO and the only copy of the new bytes was gone
    mp = _mount(mounter, flaky)
    (mp / "c/k5").write_bytes(b"v0")
    data = os.urandom(300_000)
    _write_across_outage(mp / "c/k5", data, flaky)
    with pytest.raises(OSError) as e:
        os.unlink(mp / "c/k5")
    assert e.value.errno == errno.EIO
    assert [p for p in _status(mp)["pending"] if p["path"] == "/c/k5"], _status(mp)
    flaky.restart()
    assert wait_for(lambda: _in_store(flaky, "run/k5") == data, timeout=60)
    assert sha256((mp / "c/k5").read_bytes()) == sha256(data)
    os.unlink(mp / "c/k5")  # with the store back, rm works and removes the object
    assert wait_for(lambda: _in_store(flaky, "run/k5") is None)  # at the reader's release, if it came late
    assert wait_for(lambda: not _status(mp)["pending"], timeout=20)


def test_a_child_closing_an_inherited_descriptor_uploads_nothing(mounter, flaky):
    # fork/subprocess/DataLoader workers close inherited descriptors mid-write; each such close
    # is a FLUSH, which must not put a half-written file over the object
    import time

    obstore.put(flaky.obstore(BUCKET), "run/wb3", b"GOOD" * 1000)
    mp = _mount(mounter, flaky)
    fd = os.open(mp / "c/wb3", os.O_RDWR)
    try:
        os.pwrite(fd, b"half-of-new-checkpoint", 0)
        os.set_inheritable(fd, True)
        subprocess.run([sys.executable, "-c", "import os, sys; os.close(int(sys.argv[1]))", str(fd)],
                       close_fds=False, check=True)
        pid = os.fork()
        if pid == 0:  # a forked child that exits holding the descriptor
            os._exit(0)
        os.waitpid(pid, 0)
        time.sleep(2.5)  # past write_back (1s)
        assert _in_store(flaky, "run/wb3") == b"GOOD" * 1000
        os.pwrite(fd, b"!", 4000)
    finally:
        os.close(fd)  # the opener's close uploads
    assert _in_store(flaky, "run/wb3") == b"half-of-new-checkpoint" + (b"GOOD" * 1000)[22:] + b"!"


def test_a_daemon_stopped_after_an_upload_but_before_the_release_keeps_no_stale_copy(mounter, flaky, tmp_path):
    # SIGTERM between a writer's close() (the upload) and the kernel's RELEASE left the file
    # "open" in its sidecar: the next mount reported it as not uploaded, and kept it forever
    mp = tmp_path / "mnt-clean"
    cfg = _mount_bg(mounter, flaky, mp)
    # asked before the writes: a `unifs status` between the last write and the kill took over
    # a second on a loaded machine, and the write-back (1 s quiet) then rightly uploaded it
    pid = _status(mp)["pid"]
    try:
        done, changed = os.urandom(200_000), os.urandom(1000)
        fd_done = os.open(mp / "c/done.bin", os.O_WRONLY | os.O_CREAT)
        os.write(fd_done, done)
        os.fsync(fd_done)  # in the store now, exactly these bytes; the descriptor stays open
        fd_changed = os.open(mp / "c/changed.bin", os.O_WRONLY | os.O_CREAT)
        os.write(fd_changed, changed)
        os.fsync(fd_changed)
        os.write(fd_changed, b"more")  # not in the store: must be kept
        _stop_daemon(pid, signal.SIGKILL)
        for fd in (fd_done, fd_changed):
            try:
                os.close(fd)
            except OSError:
                pass
        left = {p["path"]: (p["state"], p["size"]) for p in _status(mp)["pending"]}
        assert left == {"/c/changed.bin": ("orphaned", 1004)}, left
        assert unifs("umount", str(mp)).returncode == 0
        unifs("mount", str(mp), "--config", str(cfg), check=True)
        left = {p["path"]: p["state"] for p in _status(mp)["pending"]}
        assert left == {"/c/changed.bin": "orphaned"}, left
        assert _in_store(flaky, "run/done.bin") == done
    finally:
        if is_mounted(mp):
            unifs("umount", "--force", str(mp))


def test_a_file_whose_close_failed_as_the_daemon_stopped_is_uploaded_by_the_next(mounter, flaky, tmp_path):
    # SIGTERM (systemd's stop) while a checkpoint's close() failed on a store down: its RELEASE
    # never came, the file stayed "open" and was never uploaded, not after a restart either.
    # A closed duplicate stands for the close whose release is still to come.
    mp = tmp_path / "mnt-term"
    cfg = _mount_bg(mounter, flaky, mp)
    pid = _status(mp)["pid"]
    try:
        data, more = os.urandom(300_000), os.urandom(1000)
        fd = os.open(mp / "c/ckpt.pt", os.O_WRONLY | os.O_CREAT)
        os.write(fd, data)
        fd2 = os.open(mp / "c/half.log", os.O_WRONLY | os.O_CREAT)
        os.write(fd2, more)
        flaky.stop()
        with pytest.raises(OSError) as e:
            os.close(os.dup(fd))
        assert e.value.errno == errno.EIO
        with pytest.raises(OSError):
            os.close(os.dup(fd2))
        os.write(fd2, b"written after its close: still being written")
        _stop_daemon(pid, signal.SIGTERM, timeout=60)
        for d in (fd, fd2):
            try:
                os.close(d)
            except OSError:
                pass
        left = {p["path"]: p["state"] for p in _status(mp)["pending"]}
        assert left == {"/c/ckpt.pt": "pending", "/c/half.log": "orphaned"}, left
        if is_mounted(mp):
            assert unifs("umount", str(mp)).returncode == 0
        flaky.restart()
        unifs("mount", str(mp), "--config", str(cfg), check=True)
        assert wait_for(lambda: _in_store(flaky, "run/ckpt.pt") is not None, timeout=60)
        assert sha256(_in_store(flaky, "run/ckpt.pt")) == sha256(data)
        assert _in_store(flaky, "run/half.log") is None
    finally:
        if is_mounted(mp):
            unifs("umount", "--force", str(mp))


def test_force_unmount_of_a_hung_daemon_says_where_open_files_are_kept(mounter, flaky, tmp_path):
    mp = tmp_path / "mnt-hung"
    cfg = _mount_bg(mounter, flaky, mp)
    pid = _status(mp)["pid"]
    # the writer is a process of its own: a descriptor of a hung mount held here would block
    # every subprocess this test starts (the child's close of it waits on the daemon)
    writer = subprocess.Popen([sys.executable, "-c", (
        "import os, sys, time\n"
        f"fd = os.open({str(mp / 'c/forced.bin')!r}, os.O_WRONLY | os.O_CREAT)\n"
        "os.write(fd, os.urandom(3_000_000))\n"
        "print('written', flush=True)\n"
        "time.sleep(600)\n")], stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "written"
        os.kill(pid, signal.SIGSTOP)
        res = unifs("umount", "--force", str(mp), timeout=60)
        assert res.returncode == 0 and "1 file(s) not in the store are kept in" in res.stdout, res
        assert not is_mounted(mp)
    finally:
        writer.kill()
        writer.wait(30)
        if subprocess.run(["kill", "-0", str(pid)], capture_output=True).returncode == 0:
            os.kill(pid, signal.SIGKILL)
    unifs("mount", str(mp), "--config", str(cfg), check=True)
    try:
        left = {p["path"]: (p["state"], p["size"]) for p in _status(mp)["pending"]}
        assert left == {"/c/forced.bin": ("orphaned", 3_000_000)}, left
    finally:
        unifs("umount", "--force", str(mp))


def test_a_rejected_upload_cleared_by_hand_then_written_again_uploads(mounter, seaweed, dataset, tmp_path):
    # design.md: a rejected ("failed") staged file stays until the user deletes its .data and
    # .json. Deleted while the daemon ran, the daemon kept serving the deleted copy and took
    # new writes into it: `echo > f` returned 0 and nothing reached the store, ever

    from conftest import SCRATCH
    from faultproxy import FaultProxy, upstream_port

    reject = {"on": True}

    def rule(method, path, headers):
        return 400 if reject["on"] and method in ("PUT", "POST") and "rejectme" in path else None
    opts = seaweed.mount_options()
    upstream = upstream_port(opts)
    with FaultProxy(upstream, rule=rule) as proxy:
        entry = mounter.s3_entry("/c", f"s3://{SCRATCH}/rejects")
        entry["options"] = dict(opts, endpoint_url=opts["endpoint_url"].replace(str(upstream), str(proxy.port)))
        mp = mounter.mount([entry])
        for name in ("rejectme-a.txt", "rejectme-b.txt"):
            with pytest.raises(OSError) as e:
                with open(mp / "c" / name, "wb") as f:
                    f.write(b"epoch1")
            assert e.value.errno == errno.EIO
        assert wait_for(lambda: len([p for p in _status(mp)["pending"] if p["state"] == "failed"]) == 2,
                        timeout=30), _status(mp)
        reject["on"] = False
        a = next(p for p in _status(mp)["pending"] if p["path"] == "/c/rejectme-a.txt")
        os.unlink(a["data"])
        os.unlink(a["data"][:-len(".data")] + ".json")
        # the store never had it: gone from the mount too, not served from the deleted copy
        assert "rejectme-a.txt" not in os.listdir(mp / "c") and "rejectme-b.txt" in os.listdir(mp / "c")
        # a: cleared by hand, then written again by a shell redirect
        res = subprocess.run(f"echo epoch2 > '{mp}/c/rejectme-a.txt'", shell=True)
        assert res.returncode == 0
        assert wait_for(lambda: _in_store(seaweed_like(seaweed), "rejects/rejectme-a.txt") == b"epoch2\n",
                        timeout=10)
        # b: not cleared, written again: a new attempt, which the store takes now
        with open(mp / "c/rejectme-b.txt", "wb") as f:
            f.write(b"epoch2")
        assert _in_store(seaweed_like(seaweed), "rejects/rejectme-b.txt") == b"epoch2"
        assert wait_for(lambda: not _status(mp)["pending"], timeout=10), _status(mp)
        assert (mp / "c/rejectme-a.txt").read_bytes() == b"epoch2\n"


def seaweed_like(server):
    """_in_store reads BUCKET; the shared server's scratch bucket instead."""
    from conftest import SCRATCH

    class _S:
        def obstore(self, bucket):
            return server.obstore(SCRATCH)
    return _S()
