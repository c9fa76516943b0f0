"""`unifs mount / umount / status` as a user drives them, including a killed daemon."""

from __future__ import annotations

import errno
import json
import os
import signal
import stat
import time

import pytest

from conftest import BUCKET, is_mounted, unifs, wait_for
from unifs.mountinfo import pid_alive


def _table(mounter):
    return mounter.write_table({"mounts": [mounter.s3_entry("/data", f"s3://{BUCKET}", read_only=True)]})


@pytest.mark.parametrize("how", ["stdin", "process substitution"])
def test_a_mount_table_from_a_pipe(mounter, dataset, tmp_path, how):
    # `--config <(sops -d t.yaml)`: the daemon opened the pipe again and found nothing there
    import subprocess
    import sys

    cfg = _table(mounter)
    mp = tmp_path / "mp"
    mp.mkdir()
    if how == "stdin":
        res = subprocess.run([sys.executable, "-m", "unifs", "mount", str(mp), "--config", "-"],
                             input=cfg.read_text(), capture_output=True, text=True, timeout=120)
    else:
        res = subprocess.run(["bash", "-c", f'"{sys.executable}" -m unifs mount "{mp}" --config <(cat "{cfg}")'],
                             capture_output=True, text=True, timeout=120)
    try:
        assert res.returncode == 0, res.stderr
        assert is_mounted(mp) and sorted(os.listdir(mp)) == ["data"] and os.listdir(mp / "data")
        row = next(r for r in json.loads(unifs("status", "--json", check=True).stdout)
                   if r["mountpoint"] == str(mp))
        assert row["config"] == "(standard input)"
    finally:
        unifs("umount", str(mp))


def test_mount_status_umount(mounter, dataset, tmp_path):
    cfg = _table(mounter)
    mp = tmp_path / "mp"
    mp.mkdir()
    res = unifs("mount", str(mp), "--config", str(cfg))
    assert res.returncode == 0, res.stderr
    assert is_mounted(mp) and os.listdir(mp) == ["data"]  # live as soon as the command returns
    rows = json.loads(unifs("status", "--json", check=True).stdout)
    row = next(r for r in rows if r["mountpoint"] == str(mp))
    assert row["state"] == "live" and row["mounts"][0]["url"] == f"s3://{BUCKET}"
    assert row["mounts"][0]["options"]["secret"] == "***"
    human = unifs("status", check=True).stdout
    assert str(mp) in human and mounter.seaweed.secret_key not in human
    # seen from another run directory (another user, another UNIFS_RUN_DIR): it said "pid ?  config ?"
    other = tmp_path / "other-run"
    res = unifs("status", check=True, env=dict(os.environ, UNIFS_RUN_DIR=str(other)))
    line = next(x for x in res.stdout.splitlines() if x.startswith(str(mp)))
    assert "another run directory" in line and "?" not in line, res.stdout
    with open(row["log_file"]) as f:
        text = f.read()
    assert "FUSE threads: 10" in text  # a store on this host: libfuse's 10 FUSE threads
    assert "Ignoring invalid max threads" not in text  # libfuse 3.14's noise at every mount
    res = unifs("umount", str(mp))
    assert res.returncode == 0, res.stderr
    assert not is_mounted(mp)
    assert wait_for(lambda: not pid_alive(row["pid"]), timeout=15)  # the daemon exits too
    assert str(mp) not in unifs("status", check=True).stdout
    from unifs.mountinfo import state_file
    left = list(state_file(str(mp)).parent.glob(state_file(str(mp)).stem + ".*"))
    assert left == [], left  # a clean unmount leaves nothing of it in the run dir
    # unmounting again is an error with one line
    res = unifs("umount", str(mp))
    assert res.returncode != 0 and "not mounted" in res.stderr


def test_killed_daemon_leaves_stale_mount_that_umount_cleans(mounter, dataset, tmp_path):
    cfg = _table(mounter)
    mp = tmp_path / "mp"
    mp.mkdir()
    unifs("mount", str(mp), "--config", str(cfg), check=True)
    rows = json.loads(unifs("status", "--json", check=True).stdout)
    pid = next(r["pid"] for r in rows if r["mountpoint"] == str(mp))
    from unifs.mountinfo import state_file
    sock = state_file(str(mp)).with_suffix(".sock")
    assert sock.exists()
    os.kill(pid, signal.SIGKILL)
    assert wait_for(lambda: not pid_alive(pid))
    try:
        os.listdir(mp)
        raise AssertionError("a dead daemon's mount should not answer")
    except OSError as e:
        # ECONNABORTED at first, then ENOTCONN: the stale mount a user would see
        assert e.errno in (errno.ECONNABORTED, errno.ENOTCONN)
    rows = json.loads(unifs("status", "--json", check=True).stdout)
    assert next(r for r in rows if r["mountpoint"] == str(mp))["state"] == "stale"
    res = unifs("umount", str(mp))
    assert res.returncode == 0, res.stderr
    assert not is_mounted(mp)
    assert not sock.exists()  # the dead daemon's control socket goes with its mount
    assert os.listdir(mp) == []
    # and it can be mounted again
    unifs("mount", str(mp), "--config", str(cfg), check=True)
    assert os.listdir(mp) == ["data"]
    # a mount over a dead daemon's stale mount cleans it first (a restarted container failed on
    # it every time: its entrypoint is `unifs mount`, and the stale mount came back shared)
    pid = next(r["pid"] for r in json.loads(unifs("status", "--json", check=True).stdout)
               if r["mountpoint"] == str(mp))
    os.kill(pid, signal.SIGKILL)
    assert wait_for(lambda: not pid_alive(pid))
    res = unifs("cache", "stats", str(mp / "data"))
    assert res.returncode == 1 and f"is on the stale mount {mp} of a dead daemon" in res.stderr, res.stderr
    res = unifs("mount", str(mp), "--config", str(cfg))
    assert res.returncode == 0, res.stderr
    assert f"unmounted {mp} (stale mount of a dead daemon)" in res.stderr, res.stderr
    assert os.listdir(mp) == ["data"]
    unifs("umount", str(mp), check=True)


def test_mount_point_errors(mounter, dataset, tmp_path):
    cfg = _table(mounter)
    res = unifs("mount", str(tmp_path / "missing"), "--config", str(cfg))
    assert res.returncode == 1 and "does not exist" in res.stderr

    afile = tmp_path / "afile"
    afile.write_text("x")
    res = unifs("mount", str(afile), "--config", str(cfg))
    assert res.returncode == 1 and "not a directory" in res.stderr

    full = tmp_path / "full"
    full.mkdir()
    (full / "x").write_text("x")
    res = unifs("mount", str(full), "--config", str(cfg))
    assert res.returncode == 1 and "not empty" in res.stderr

    mp = mounter.mount([mounter.s3_entry("/data", f"s3://{BUCKET}", read_only=True)])
    res = unifs("mount", str(mp), "--config", str(cfg))
    assert res.returncode == 1 and "already mounted" in res.stderr and f"'unifs umount {mp}'" in res.stderr
    # another file system's mount point: `unifs umount` would refuse it, so it is not advised
    res2 = unifs("mount", "/proc", "--config", str(cfg))
    assert res2.returncode == 1 and "already mounted (proc)" in res2.stderr and "unifs umount" not in res2.stderr

    for r in [res]:
        assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


@pytest.mark.parametrize("stop", ["umount", signal.SIGTERM, signal.SIGINT])
def test_foreground_mount_serves_until_stopped_and_exits_0(mounter, dataset, tmp_path, stop):
    # signals: what systemctl stop, docker stop and Ctrl-C send, a normal stop and not
    # "mounting failed"
    import subprocess
    import sys

    import socket

    cfg = _table(mounter)
    mp = tmp_path / "fg"
    mp.mkdir()
    # as a Type=notify systemd unit runs it: READY=1 once it serves, STOPPING=1 when it stops
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify.sock"))
    notify.settimeout(60)
    proc = subprocess.Popen([sys.executable, "-m", "unifs", "mount", str(mp), "--config", str(cfg),
                             "--foreground"], stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, NOTIFY_SOCKET=str(tmp_path / "notify.sock")))
    try:
        assert notify.recv(256) == b"READY=1"
        assert is_mounted(mp)
        assert os.listdir(mp / "data")
        if stop == "umount":
            unifs("umount", str(mp), check=True)
        else:
            proc.send_signal(stop)
        assert proc.wait(timeout=30) == 0
        err = proc.stderr.read()
        assert "error" not in err and not is_mounted(mp), err
        assert notify.recv(256) == b"STOPPING=1"
    finally:
        notify.close()
        if proc.poll() is None:
            proc.kill()
            subprocess.run(["fusermount", "-uz", str(mp)], capture_output=True)


def _mounted_daemon(mounter, mp) -> tuple:
    """(config, daemon pid) of a fresh background mount at mp."""
    cfg = _table(mounter)
    mp.mkdir()
    unifs("mount", str(mp), "--config", str(cfg), check=True)
    pid = next(s["pid"] for s in json.loads(unifs("status", "--json", check=True).stdout)
               if s["mountpoint"] == str(mp))
    return cfg, pid


def test_sigterm_to_a_background_daemon_unmounts_it(mounter, dataset, tmp_path):
    mp = tmp_path / "bg"
    _, pid = _mounted_daemon(mounter, mp)
    os.kill(pid, signal.SIGTERM)
    assert wait_for(lambda: not pid_alive(pid), timeout=30)
    assert not is_mounted(mp)
    assert str(mp) not in unifs("status", check=True).stdout
    from unifs.mountinfo import log_file
    assert not log_file(str(mp)).exists()  # kept only when the daemon fails


def test_sigterm_with_a_file_being_written_says_what_it_left(mounter, dataset, tmp_path):
    # the daemon unmounted at once, kept the staged file, logged nothing at WARNING and so
    # deleted its log: nobody learnt that a checkpoint was not in the store
    from unifs.mountinfo import log_file

    table = {"mounts": [mounter.s3_entry("/w", f"s3://{BUCKET}/sigterm")],
             "write": {"staging_dir": str(tmp_path / "staging")}}
    mp = tmp_path / "mp"
    mp.mkdir()
    unifs("mount", str(mp), "--config", str(mounter.write_table(table)), check=True)
    pid = next(r["pid"] for r in json.loads(unifs("status", "--json", check=True).stdout)
               if r["mountpoint"] == str(mp))
    f = open(mp / "w/ckpt.bin", "wb")
    f.write(os.urandom(1 << 20))
    f.flush()
    os.kill(pid, signal.SIGTERM)
    assert wait_for(lambda: not pid_alive(pid), timeout=30)
    with pytest.raises(OSError):
        f.close()
    text = log_file(str(mp)).read_text()
    # still open: kept, and not uploaded at the next mount (it said it would be)
    assert "1 file(s) still open for writing (/w/ckpt.bin)" in text and "not uploaded" in text, text
    assert str(tmp_path / "staging") in text and "uploaded when this mount point" not in text, text
    staged = [p for p in (tmp_path / "staging").rglob("*") if p.is_file() and p.stat().st_size == 1 << 20]
    assert len(staged) == 1
    unifs("umount", str(mp))


def test_unknown_fuse_option_and_missing_local_dir_are_explained(tmp_path):
    cfg = tmp_path / "m.yaml"
    cfg.write_text(f"mounts:\n  - path: /l\n    url: file://{tmp_path}/nope\n")
    (tmp_path / "mp").mkdir()
    res = unifs("mount", str(tmp_path / "mp"), "--config", str(cfg))
    assert res.returncode == 1 and "does not exist" in res.stderr and "mount /l" in res.stderr
    (tmp_path / "nope").mkdir()
    res = unifs("mount", str(tmp_path / "mp"), "--config", str(cfg), "-o", "bogus_opt")
    assert res.returncode == 1 and "unknown option" in res.stderr and "bogus_opt" in res.stderr
    assert not is_mounted(tmp_path / "mp")
    for bad in ("max_threads=0", "max_threads=many"):  # 0 mounted a daemon with no FUSE threads
        res = unifs("mount", str(tmp_path / "mp"), "--config", str(cfg), "-o", bad)
        assert res.returncode != 0 and f"-o {bad}" in res.stderr and "at least 1" in res.stderr, res.stderr
        assert not is_mounted(tmp_path / "mp")


def test_mount_through_a_symlink(mounter, dataset, tmp_path):
    cfg = _table(mounter)
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    unifs("mount", str(tmp_path / "link"), "--config", str(cfg), check=True)
    assert os.listdir(tmp_path / "link") == ["data"]
    res = unifs("mount", str(tmp_path / "link"), "--config", str(cfg))
    assert res.returncode == 1 and "already mounted" in res.stderr
    unifs("umount", str(tmp_path / "link"), check=True)
    assert not is_mounted(tmp_path / "real")


def test_demo_reads_and_writes_through_its_own_mount():
    # what `make demo` runs: its own server, upload, mount, read every file, write a checkpoint
    res = unifs("demo", "--files", "40", timeout=300)
    assert res.returncode == 0, res.stderr
    assert "Checksums: all 41 files match" in res.stdout
    assert "holds exactly those bytes" in res.stdout
    work = res.stdout.split("working in ", 1)[1].split()[0]
    assert not os.path.exists(work)  # nothing of the demo outlives it


def test_demo_keep_leaves_a_live_server_and_mount():
    # --keep said "Left running" while the S3 server had been stopped at exit
    import re
    import shutil
    import subprocess
    import sys

    res = unifs("demo", "--files", "5", "--keep", timeout=300)
    assert res.returncode == 0, res.stderr
    work = res.stdout.split("working in ", 1)[1].split()[0]
    mp = os.path.join(work, "mnt")
    pid = int(re.search(r"kill (\d+)", res.stdout).group(1))
    try:
        assert pid_alive(pid) and is_mounted(mp)
        with open(os.path.join(mp, "checkpoints/after-keep.bin"), "wb") as f:
            f.write(b"still served")  # close() returns once the object is in the store
        unifs("umount", mp, check=True)
        again = re.search(r"\(set -a; .*\)", res.stdout).group(0)  # the command it printed
        env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
        subprocess.run(["bash", "-c", again], check=True, capture_output=True, timeout=120, env=env)
        assert open(os.path.join(mp, "checkpoints/after-keep.bin"), "rb").read() == b"still served"
        assert "DEMO_S3_SECRET=" not in res.stdout
    finally:
        if is_mounted(mp):
            unifs("umount", "--force", mp)
        if pid_alive(pid):
            os.killpg(pid, signal.SIGKILL)  # its own session; weed's graceful stop takes seconds
            wait_for(lambda: not pid_alive(pid), timeout=20)
        shutil.rmtree(work, ignore_errors=True)


def test_unusable_staging_dir_fails_the_mount_in_one_line(mounter, dataset, tmp_path):
    from conftest import SCRATCH

    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    cfg = mounter.write_table({"mounts": [mounter.s3_entry("/w", f"s3://{SCRATCH}/st")],
                               "write": {"staging_dir": str(blocker)}, "cache": {"dir": str(tmp_path / "c")}})
    mp = tmp_path / "mp-st"
    mp.mkdir()
    res = unifs("mount", str(mp), "--config", str(cfg))
    assert res.returncode == 1
    assert len(res.stderr.strip().splitlines()) == 1 and "write.staging_dir" in res.stderr, res.stderr
    assert unifs("status").returncode == 0


def test_mount_and_umount_succeed_whatever_happens_to_their_output(mounter, dataset, tmp_path):
    # `unifs mount ... > /dev/full` exited 1 while the mount was live
    import subprocess
    import sys

    cfg = _table(mounter)
    mp = tmp_path / "out"
    mp.mkdir()
    for args in (["mount", str(mp), "--config", str(cfg)], ["umount", str(mp)]):
        with open("/dev/full", "w") as full:
            res = subprocess.run([sys.executable, "-m", "unifs", *args], stdout=full, stderr=subprocess.PIPE,
                                 text=True, timeout=120)
        assert res.returncode == 0 and res.stderr == "", res.stderr
        assert is_mounted(mp) == (args[0] == "mount")


def test_a_hung_daemon_is_reported_and_force_unmounted(mounter, dataset, tmp_path):
    # a stopped (or deadlocked) daemon: every command that touched its mount waited forever,
    # also for the other mounts' status; only fusermount -uz got out
    mp = tmp_path / "hung"
    _, pid = _mounted_daemon(mounter, mp)
    os.kill(pid, signal.SIGSTOP)
    try:
        rows = json.loads(unifs("status", "--json", check=True, timeout=30).stdout)
        assert next(r["state"] for r in rows if r["mountpoint"] == str(mp)) == "hung"
        assert "does not answer" in unifs("status", check=True, timeout=30).stdout
        res = unifs("cache", "stats", str(mp / "data"), timeout=60)
        assert res.returncode == 1 and "does not answer" in res.stderr, res.stderr
        healthy = tmp_path / "healthy"
        _mounted_daemon(mounter, healthy)
        res = unifs("cache", "stats", timeout=60)  # every mount: the healthy one still shows
        assert res.returncode == 1 and str(healthy) in res.stdout and "does not answer" in res.stderr, res
        for path in (mp, mp / "data"):
            res = unifs("cache", "clear", str(path), timeout=30)
            assert res.returncode == 1 and "does not answer" in res.stderr, res.stderr
        res = unifs("warmup", str(mp / "data"), timeout=30)  # it read on forever
        assert res.returncode == 1 and "does not answer" in res.stderr, res.stderr
        unifs("umount", str(healthy), check=True)
        res = unifs("umount", str(mp), timeout=30)
        assert res.returncode == 1 and "--force" in res.stderr and is_mounted(mp), res.stderr
        res = unifs("umount", "--force", str(mp), timeout=60)
        assert res.returncode == 0 and "hung" in res.stdout, res.stderr
        assert not is_mounted(mp)
        assert wait_for(lambda: not pid_alive(pid), timeout=30)
    finally:
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)


def test_a_daemon_waiting_on_a_stalled_store_is_busy_and_force_stops_it_cleanly(mounter, seaweed, tmp_path):
    # every FUSE thread waiting out a store call: the daemon answered no statvfs within 3 s,
    # so status said "hung", umount refused, and umount --force killed it (SIGKILL), leaving
    # files its applications had closed orphaned instead of pending
    import threading

    from faultproxy import FaultProxy, upstream_port

    from conftest import SCRATCH

    seaweed.put_many(SCRATCH, {f"busy/f{i:03d}": b"x" * 3000 for i in range(40)})
    opts = seaweed.mount_options()
    upstream = upstream_port(opts)
    with FaultProxy(upstream) as proxy:
        entry = {"path": "/s", "url": f"s3://{SCRATCH}/busy", "read_only": True, "prefetch": False,
                 "options": dict(opts, endpoint_url=opts["endpoint_url"].replace(str(upstream), str(proxy.port)))}
        cfg = mounter.write_table({"mounts": [entry], "store": {"timeout": "20s", "retries": 0}})
        mp = tmp_path / "busy"
        mp.mkdir()
        unifs("mount", str(mp), "--config", str(cfg), check=True)
        pid = next(s["pid"] for s in json.loads(unifs("status", "--json", check=True).stdout)
                   if s["mountpoint"] == str(mp))
        try:
            names = sorted(os.listdir(mp / "s"))
            proxy.get_delay = 60
            errors = []

            def read(name):
                try:
                    (mp / "s" / name).read_bytes()
                except OSError as e:
                    errors.append(e.errno)
            readers = [threading.Thread(target=read, args=(n,), daemon=True) for n in names]
            for t in readers:
                t.start()
            assert wait_for(lambda: proxy.in_flight >= 10, timeout=10), proxy.in_flight
            rows = json.loads(unifs("status", "--json", check=True, timeout=30).stdout)
            assert next(r["state"] for r in rows if r["mountpoint"] == str(mp)) == "busy"
            res = unifs("umount", "--force", str(mp), timeout=120)
            assert res.returncode == 0 and "stopped its daemon" in res.stdout, (res.stdout, res.stderr)
            assert "killed" not in res.stdout
            assert not is_mounted(mp)
            assert wait_for(lambda: not pid_alive(pid), timeout=60)
            for t in readers:
                t.join(60)
            assert errors and set(errors) <= {errno.ENOTCONN, errno.ECONNABORTED, errno.EIO}, errors
        finally:
            proxy.get_delay = 0
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)
            if is_mounted(mp):
                unifs("umount", "--force", str(mp))


@pytest.mark.parametrize("writable,mode", [(True, "ram"), (False, "ram"), (False, "tiered")])
def test_remount_while_a_lazily_unmounted_daemon_still_serves(mounter, dataset, tmp_path, writable, mode):
    # `umount --lazy` detaches the mount; its daemon serves open files until they close. A new
    # mount of the same point must not share that daemon's staging directory (both would resume
    # and upload the same files), and the old daemon's exit must not remove the new one's
    # state file, control socket or log
    from unifs.mountinfo import log_file, state_file

    entry = mounter.s3_entry("/data", f"s3://{BUCKET}", read_only=not writable)
    table = {"mounts": [entry], "write": {"staging_dir": str(tmp_path / "staging")},
             "cache": {"mode": mode, "dir": str(tmp_path / "cache"), "ram": "64MiB", "disk": "256MiB"}}
    cfg = mounter.write_table(table)
    mp = tmp_path / "mp"
    mp.mkdir()
    unifs("mount", str(mp), "--config", str(cfg), check=True)
    old = json.loads(unifs("status", "--json", check=True).stdout)
    old_pid = next(r["pid"] for r in old if r["mountpoint"] == str(mp))
    held = open(mp / "data/images/class_0/img_00000.jpg", "rb")
    try:
        unifs("umount", "--lazy", str(mp), check=True)
        assert not is_mounted(mp) and pid_alive(old_pid)
        # still serving `held`: status names it (it said "unmounted, pid ?")
        rows = json.loads(unifs("status", "--json", check=True).stdout)
        assert [(r["state"], r["pid"]) for r in rows if r["mountpoint"] == str(mp)] == [("detached", old_pid)], rows
        assert "detached by a lazy unmount" in unifs("status", check=True).stdout
        res = unifs("mount", str(mp), "--config", str(cfg))
        if writable or mode == "tiered":  # the disk tier's directory is the old daemon's too
            assert res.returncode != 0 and not is_mounted(mp)
            assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr
            held_dir = "staging directory" if writable else "cache directory"
            assert held_dir in res.stderr and f"pid {old_pid}" in res.stderr, res.stderr
            held.close()
            assert wait_for(lambda: not pid_alive(old_pid), timeout=20)
            unifs("mount", str(mp), "--config", str(cfg), check=True)
        else:
            assert res.returncode == 0, res.stderr
            held.close()
            assert wait_for(lambda: not pid_alive(old_pid), timeout=20)
    finally:
        held.close()
    rows = json.loads(unifs("status", "--json", check=True).stdout)
    row = next(r for r in rows if r["mountpoint"] == str(mp))
    assert row["pid"] not in (None, old_pid) and pid_alive(row["pid"])
    assert state_file(str(mp)).with_suffix(".sock").exists() and log_file(str(mp)).exists()
    assert unifs("cache", "stats", str(mp)).returncode == 0  # the control socket answers
    unifs("umount", str(mp), check=True)


def test_allow_other_lets_other_users_read_but_not_change(mounter, dataset, tmp_path):
    # allow_other without default_permissions: the kernel checked nothing, so any local user
    # could delete or overwrite objects with the daemon's credentials
    import subprocess
    import tempfile

    from conftest import SCRATCH

    obj = f"s3://{SCRATCH}/others"
    mounter.seaweed.put_many(SCRATCH, {"others/a.txt": b"root's data"})
    cfg = mounter.write_table({"mounts": [mounter.s3_entry("/w", obj)],
                               "write": {"staging_dir": str(tmp_path / "staging")}})
    mp = tempfile.mkdtemp(prefix="unifs-allow-other-")  # reachable by other users (not under 0700 tmp dirs)
    os.chmod(mp, 0o755)
    try:
        unifs("mount", mp, "--config", str(cfg), "-o", "allow_other", check=True)
        # plain shell tools as user nobody (this interpreter may live where nobody cannot reach)
        script = ('test "$(cat a.txt)" = "root'"'"'s data" || exit 9; '
                  'rm -f a.txt 2>/dev/null && exit 1; (echo x > a.txt) 2>/dev/null && exit 2; '
                  '(echo x > new.txt) 2>/dev/null && exit 3; mkdir d 2>/dev/null && exit 4; exit 0')
        res = subprocess.run(["/bin/sh", "-c", script], cwd=os.path.join(mp, "w"), user=65534, group=65534,
                             extra_groups=[], capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, (res.returncode, res.stderr)
        assert sorted(os.listdir(os.path.join(mp, "w"))) == ["a.txt"]
        with open(os.path.join(mp, "w/a.txt"), "ab") as f:  # the owner still writes
            f.write(b"!")
        unifs("umount", mp, check=True)
        import obstore
        assert bytes(obstore.get(mounter.seaweed.obstore(SCRATCH), "others/a.txt").bytes()) == b"root's data!"
    finally:
        if is_mounted(mp):
            unifs("umount", "--force", mp)
        os.rmdir(mp)


def test_two_mounts_of_one_point_at_once_do_not_stack(mounter, dataset, tmp_path):
    # both passed the "already mounted" check while the store was slow to answer, and both
    # mounted: stacked mounts sharing one state file and staging directory
    import subprocess
    import sys

    from faultproxy import FaultProxy, upstream_port

    opts = mounter.seaweed.mount_options()
    upstream = upstream_port(opts)
    with FaultProxy(upstream, get_delay=1.5) as proxy:
        entry = mounter.s3_entry("/data", f"s3://{BUCKET}")
        entry["options"] = dict(opts, endpoint_url=opts["endpoint_url"].replace(str(upstream), str(proxy.port)))
        cfg = mounter.write_table({"mounts": [entry], "write": {"staging_dir": str(tmp_path / "staging")}})
        mp = tmp_path / "mp"
        mp.mkdir()
        cmd = [sys.executable, "-m", "unifs", "mount", str(mp), "--config", str(cfg)]
        procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(3)]
        results = [(p.wait(timeout=120), p.stderr.read()) for p in procs]
        with open("/proc/self/mountinfo") as f:
            stacked = [line for line in f if line.split()[4] == str(mp)]
        assert len(stacked) == 1, results
        assert sorted(rc for rc, _ in results) == [0, 1, 1], results
        for rc, err in results:
            if rc:
                assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
                assert "being mounted by another unifs daemon" in err or "already mounted" in err, err
        unifs("umount", str(mp), check=True)


def test_a_lazily_unmounted_daemon_ending_while_the_next_one_starts(mounter, dataset, tmp_path):
    # the next daemon writes its state file only once mounted: an old daemon ending before that
    # took the shared log (and control socket) for its own and removed them
    import subprocess
    import sys

    from faultproxy import FaultProxy, upstream_port
    from unifs.mountinfo import log_file, state_file

    mp = tmp_path / "mp"
    mp.mkdir()
    fast = mounter.write_table({"mounts": [mounter.s3_entry("/data", f"s3://{BUCKET}", read_only=True)]})
    unifs("mount", str(mp), "--config", str(fast), check=True)
    old_pid = next(r["pid"] for r in json.loads(unifs("status", "--json", check=True).stdout)
                   if r["mountpoint"] == str(mp))
    held = open(mp / "data/images/class_0/img_00000.jpg", "rb")
    unifs("umount", "--lazy", str(mp), check=True)
    opts = mounter.seaweed.mount_options()
    upstream = upstream_port(opts)
    with FaultProxy(upstream, get_delay=2.0) as proxy:  # the next mount's store checks take seconds
        entry = mounter.s3_entry("/data", f"s3://{BUCKET}", read_only=True)
        entry["options"] = dict(opts, endpoint_url=opts["endpoint_url"].replace(str(upstream), str(proxy.port)))
        slow = mounter.write_table({"mounts": [entry]})
        starting = subprocess.Popen([sys.executable, "-m", "unifs", "mount", str(mp), "--config", str(slow)],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(1.0)
        held.close()  # the old daemon ends now, while the next one checks its store
        assert wait_for(lambda: not pid_alive(old_pid), timeout=20)
        out, err = starting.communicate(timeout=120)
        assert starting.returncode == 0, err
        assert log_file(str(mp)).exists() and state_file(str(mp)).with_suffix(".sock").exists()
        assert unifs("cache", "stats", str(mp)).returncode == 0
        unifs("umount", str(mp), check=True)


def test_umount_names_a_mount_inside_the_mount_point(tmp_path):
    import subprocess

    store = tmp_path / "store"
    (store / "inner").mkdir(parents=True)
    cfg = tmp_path / "m.yaml"
    cfg.write_text(f"mounts:\n  - path: /l\n    url: file://{store}\n"
                   f"write: {{staging_dir: {tmp_path / 'staging'}}}\ncache: {{dir: {tmp_path / 'cache'}}}\n")
    mp = tmp_path / "mp"
    mp.mkdir()
    unifs("mount", str(mp), "--config", str(cfg), check=True)
    inner = mp / "l" / "inner"
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(inner)], check=True)
        res = unifs("umount", str(mp))
        assert res.returncode == 1 and f"{inner} is mounted inside it" in res.stderr, res.stderr
    finally:
        subprocess.run(["umount", str(inner)], capture_output=True)
    unifs("umount", str(mp), check=True)


@pytest.mark.parametrize("which", ["cache", "staging"])
def test_cache_and_staging_dirs_other_users_can_swap_are_refused(mounter, dataset, tmp_path, which):
    # a root daemon followed a symlink another user put in place of its cache subdirectory,
    # made the target 0700 and wrote blocks into it
    import pwd
    import shutil

    nobody = pwd.getpwnam("nobody")
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    os.chown(theirs, nobody.pw_uid, nobody.pw_gid)
    mine = tmp_path / "mine"
    entry = mounter.s3_entry("/d", f"s3://{BUCKET}", read_only=which == "cache")
    cache = {"mode": "tiered", "dir": str(mine / "cache"), "disk": "64MiB"}
    write = {"staging_dir": str(mine / "staging")}

    def mount(root):
        if which == "cache":
            cache["dir"] = str(root)
        else:
            write["staging_dir"] = str(root)
        cfg = mounter.write_table({"mounts": [entry], "cache": cache, "write": write})
        mp = tmp_path / "mp"
        mp.mkdir(exist_ok=True)
        return mp, unifs("mount", str(mp), "--config", str(cfg))
    mp, res = mount(theirs)
    assert res.returncode == 1 and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert "other users can change" in res.stderr and str(theirs) in res.stderr, res.stderr
    # further up: anyone may rename ww/deep away and put a tree of their own in its place
    ww = tmp_path / "ww"
    ww.mkdir()
    os.chmod(ww, 0o777)
    mp, res = mount(ww / "deep" / which)
    assert res.returncode == 1 and "other users can change" in res.stderr, res.stderr
    assert f"inside {ww}," in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert not (ww / "deep").exists()  # nothing made on the way to a refusal
    (ww / "real").mkdir()
    os.symlink(ww / "real", tmp_path / "link")  # the same, spelled through a link
    mp, res = mount(tmp_path / "link" / which)
    assert res.returncode == 1 and f"inside {ww}," in res.stderr, res.stderr
    # a group-writable directory further up (/var/local is 2775 root:staff) is the group's
    grp = tmp_path / "grp"
    grp.mkdir()
    os.chmod(grp, 0o2775)
    mp, res = mount(grp / "deep" / which)
    assert res.returncode == 0, res.stderr
    unifs("umount", str(mp), check=True)
    # a root of our own, whose per-mount subdirectory was replaced by a link
    mp, res = mount(mine / which)
    assert res.returncode == 0, res.stderr
    unifs("umount", str(mp), check=True)
    sub = next(p for p in (mine / which).iterdir() if p.is_dir())
    shutil.rmtree(sub)
    victim = tmp_path / "victim"
    victim.mkdir(mode=0o755)
    os.chmod(victim, 0o755)
    sub.symlink_to(victim)
    mp, res = mount(mine / which)
    assert res.returncode == 1 and "not a plain directory" in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert stat.S_IMODE(victim.stat().st_mode) == 0o755 and list(victim.iterdir()) == []
