"""errno mapping through the mount: ENOENT, ENOTDIR, EISDIR, EACCES, EROFS."""

from __future__ import annotations

import errno
import os

import pytest

from conftest import BUCKET, LIST_ONLY, assert_every_change_is_erofs, errno_of


_errno_of = errno_of


def test_enoent(data_mount, dataset):
    root = data_mount / "data"
    assert _errno_of(os.stat, root / "no/such/file") == errno.ENOENT
    assert _errno_of(open, root / "images/nope.jpg", "rb") == errno.ENOENT
    assert _errno_of(os.listdir, root / "missing-dir") == errno.ENOENT
    assert _errno_of(os.stat, data_mount / "not-a-mount") == errno.ENOENT


def test_enotdir_and_eisdir(data_mount, dataset):
    root = data_mount / "data"
    assert _errno_of(os.listdir, root / "shards/big.bin") == errno.ENOTDIR
    assert _errno_of(os.stat, root / "shards/big.bin/child") == errno.ENOTDIR
    assert _errno_of(open, root / "images", "rb") == errno.EISDIR


def test_erofs_on_every_change(data_mount, dataset):
    root = data_mount / "data"
    f = root / "images/class_0/img_00000.jpg"
    assert_every_change_is_erofs(root, f)
    # nothing changed in the store
    assert len(os.listdir(root / "extra")) == 20


def test_eacces_when_the_store_refuses_reads(mounter, dataset):
    # a SeaweedFS identity allowed to list but not to read: the store itself answers 403
    entry = {"path": "/d", "url": f"s3://{BUCKET}/extra", "read_only": True,
             "options": {"endpoint_url": mounter.seaweed.endpoint, "key": LIST_ONLY["access_key"],
                         "secret": LIST_ONLY["secret_key"]}}
    mp = mounter.mount([entry])
    names = os.listdir(mp / "d")
    assert len(names) == 20
    with open(mp / "d" / names[0], "rb") as f:
        assert _errno_of(f.read) == errno.EACCES


@pytest.mark.parametrize("option, value, words", [
    ("secret", "definitely-wrong", ["credentials refused"]),
    # a typo: s3fs' TypeError, said in the mount table's terms
    ("endpoint_ur1", "http://x", ["options.endpoint_ur1 is not an option of s3fs", "did you mean endpoint_url?"]),
])
def test_a_bad_option_fails_mount_with_one_line(mounter, dataset, tmp_path, option, value, words):
    from conftest import unifs

    opts = dict(mounter.seaweed.mount_options(), **{option: value})
    cfg = mounter.write_table({"mounts": [{"path": "/d", "url": f"s3://{BUCKET}", "options": opts}]})
    mp = tmp_path / "mp-bad"
    mp.mkdir()
    res = unifs("mount", str(mp), "--config", str(cfg))
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "TypeError" not in lines[0], res.stderr
    assert "mount /d" in lines[0] and all(w in lines[0] for w in words), lines[0]
    assert "definitely-wrong" not in res.stderr
    assert not os.path.ismount(mp)


def test_missing_bucket_and_unreachable_store_fail_mount(mounter, dataset, tmp_path):
    from conftest import unifs

    cfg = mounter.write_table({"mounts": [mounter.s3_entry("/d", "s3://no-such-bucket-here")]})
    (tmp_path / "m1").mkdir()
    res = unifs("mount", str(tmp_path / "m1"), "--config", str(cfg))
    assert res.returncode != 0 and "no-such-bucket-here" in res.stderr and "does not exist" in res.stderr

    dead = dict(mounter.seaweed.mount_options(), endpoint_url="http://127.0.0.1:9")
    cfg = mounter.write_table({"mounts": [{"path": "/d", "url": f"s3://{BUCKET}", "options": dead},
                                          {"path": "/e", "url": "memory://x"}],
                               "store": {"timeout": "2s", "connect_timeout": "1s", "retries": 1}})
    (tmp_path / "m2").mkdir()
    res = unifs("mount", str(tmp_path / "m2"), "--config", str(cfg))
    assert res.returncode != 0
    assert len(res.stderr.strip().splitlines()) == 1 and "mount /d" in res.stderr, res.stderr
    assert "cannot connect to 127.0.0.1:9" in res.stderr, res.stderr  # not the client's own wording

    # a web server that is not there is not a missing page
    cfg = mounter.write_table({"mounts": [{"path": "/w", "url": "http://127.0.0.1:9/data/", "read_only": True}]})
    (tmp_path / "m3").mkdir()
    res = unifs("mount", str(tmp_path / "m3"), "--config", str(cfg))
    assert res.returncode != 0 and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert "cannot connect to 127.0.0.1:9" in res.stderr and "not found" not in res.stderr, res.stderr
    from unifs.mountinfo import state_file
    for m in ("m1", "m2", "m3"):  # a failed mount leaves no lock file behind (hundreds piled up)
        assert not state_file(str(tmp_path / m)).with_suffix(".mounting").exists(), m


class _Silent:
    """A server that accepts connections and never answers (a wrong port behind a proxy, a hung
    service): the case a connect timeout does not catch."""

    def __init__(self):
        import socket
        import threading

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.accepted = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        try:
            while True:
                self.accepted.append(self.sock.accept()[0])
        except OSError:
            pass  # closed

    def close(self):
        self.sock.close()
        for c in self.accepted:
            c.close()


@pytest.mark.parametrize("url,options", [
    ("s3://bucket", {"key": "k", "secret": "s"}),
    ("s3://bucket", {"key": "k", "secret": "s", "client": "fsspec"}),
    ("gs://bucket", {"token": "anon"}),
], ids=["s3-obstore", "s3-s3fs", "gcs"])
def test_a_store_that_never_answers_fails_mount_after_one_timeout(mounter, tmp_path, url, options):
    from conftest import unifs

    silent = _Silent()
    try:
        opts = dict(options, endpoint_url=f"http://127.0.0.1:{silent.port}")
        client = opts.pop("client", None)
        entry = {"path": "/d", "url": url, "options": opts, **({"client": client} if client else {})}
        cfg = mounter.write_table({"mounts": [entry], "store": {"timeout": "2s", "retries": 3}})
        (tmp_path / "m").mkdir()
        res = unifs("mount", str(tmp_path / "m"), "--config", str(cfg))
        assert res.returncode != 0
        assert len(res.stderr.strip().splitlines()) == 1, res.stderr
        assert "mount /d" in res.stderr and "no answer within 2 s" in res.stderr, res.stderr
        # the endpoint probe's connection and one attempt: a timeout at mount is not retried
        # (3 retries of 2 s each made it 8 s; with the defaults, two minutes)
        assert len(silent.accepted) <= 2, len(silent.accepted)
    finally:
        silent.close()


def test_a_stop_signal_while_the_mount_waits_on_its_store_exits_at_once(mounter, tmp_path):
    # Ctrl-C (or systemctl stop) while `unifs mount` waits for a store that does not answer:
    # nothing is mounted yet, so the daemon goes at once instead of after the store timeout
    import signal
    import subprocess
    import sys
    import time

    silent = _Silent()
    try:
        opts = {"key": "k", "secret": "s", "endpoint_url": f"http://127.0.0.1:{silent.port}"}
        cfg = mounter.write_table({"mounts": [{"path": "/d", "url": "s3://bucket", "options": opts}],
                                   "store": {"timeout": "60s"}})
        (tmp_path / "m").mkdir()
        proc = subprocess.Popen([sys.executable, "-m", "unifs", "mount", str(tmp_path / "m"), "--config", str(cfg),
                                 "--foreground"], stderr=subprocess.PIPE, text=True)
        try:
            assert wait_for_accept(silent)  # the mount check is waiting on the store now
            started = time.monotonic()
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=20) == 128 + signal.SIGINT
            assert time.monotonic() - started < 10
            assert "Traceback" not in proc.stderr.read()
        finally:
            if proc.poll() is None:
                proc.kill()
    finally:
        silent.close()


def wait_for_accept(silent, timeout=30.0) -> bool:
    from conftest import wait_for

    return wait_for(lambda: len(silent.accepted) >= 2, timeout=timeout)


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_stopping_unifs_mount_while_its_daemon_starts_stops_the_daemon(mounter, tmp_path, sig):
    import signal
    import subprocess
    import sys

    from conftest import is_mounted, wait_for

    silent = _Silent()
    try:
        opts = {"key": "k", "secret": "s", "endpoint_url": f"http://127.0.0.1:{silent.port}"}
        cfg = mounter.write_table({"mounts": [{"path": "/d", "url": "s3://bucket", "options": opts}],
                                   "store": {"timeout": "60s"}})
        mp = tmp_path / "m"
        mp.mkdir()
        launcher = subprocess.Popen([sys.executable, "-m", "unifs", "mount", str(mp), "--config", str(cfg)],
                                    stderr=subprocess.PIPE, text=True)
        assert wait_for_accept(silent)  # its daemon waits on the store now
        daemons = subprocess.run(["pgrep", "-f", f"unifs mount {mp} --foreground"], capture_output=True,
                                 text=True).stdout.split()
        assert len(daemons) == 1, daemons
        launcher.send_signal(getattr(signal, sig))
        assert launcher.wait(timeout=20) != 0
        assert "Traceback" not in launcher.stderr.read()
        assert wait_for(lambda: subprocess.run(["kill", "-0", daemons[0]], capture_output=True).returncode != 0,
                        timeout=15)
        assert not is_mounted(mp)
    finally:
        silent.close()
        subprocess.run(["pkill", "-KILL", "-f", f"unifs mount {tmp_path / 'm'} --foreground"], capture_output=True)


def test_a_broken_gcs_credentials_file_is_named(tmp_path):
    # gcsfs failed with a bare "KeyError: 'refresh_token'"
    from conftest import unifs

    bad = tmp_path / "creds.json"
    bad.write_text('{"type": "authorized_user", "client_id": "x"}')
    cfg = tmp_path / "m.yaml"
    cfg.write_text(f"mounts:\n  - path: /g\n    url: gs://bucket/x\n    options:\n      token: {bad}\n"
                   "      endpoint_url: http://127.0.0.1:9\n")
    (tmp_path / "mp").mkdir()
    res = unifs("mount", str(tmp_path / "mp"), "--config", str(cfg))
    assert res.returncode == 1 and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert "options.token" in res.stderr and "no usable credentials" in res.stderr and "refresh_token" in res.stderr
    # a service account key without its private key was "no 'refresh_token'" too
    bad.write_text('{"type": "service_account", "client_email": "a@b.iam.gserviceaccount.com"}')
    res = unifs("mount", str(tmp_path / "mp"), "--config", str(cfg))
    assert res.returncode == 1 and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert "service account key without 'private_key'" in res.stderr, res.stderr
    # and one whose key is garbage blamed a missing 'refresh_token'
    bad.write_text('{"type": "service_account", "client_email": "a@b.iam.gserviceaccount.com", "private_key": '
                   '"-----BEGIN PRIVATE KEY-----\\nGARBAGE\\n-----END PRIVATE KEY-----\\n", "project_id": "p", '
                   '"token_uri": "https://oauth2.googleapis.com/token"}')
    res = unifs("mount", str(tmp_path / "mp"), "--config", str(cfg))
    assert res.returncode == 1 and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert "service account key google-auth refuses" in res.stderr and "refresh_token" not in res.stderr, res.stderr
    assert "GARBAGE" not in res.stderr
    # token: cloud off Google Cloud was "cannot create the store client: ValueError: " and nothing
    cfg.write_text("mounts:\n  - path: /g\n    url: gs://bucket/x\n    options:\n      token: cloud\n"
                   "      endpoint_url: http://127.0.0.1:9\n")
    res = unifs("mount", str(tmp_path / "mp"), "--config", str(cfg))
    assert res.returncode == 1 and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert "metadata server" in res.stderr, res.stderr


def test_a_failed_lookup_is_not_asked_of_the_store_again_at_once(mounter, dataset, tmp_path):
    # the kernel follows a failed revalidation of a name it knew with a fresh lookup: with the
    # store down a stat of a known file took two rounds of timeouts and retries
    import threading
    import time

    from conftest import SCRATCH
    from faultproxy import FaultProxy, upstream_port

    mounter.seaweed.put_many(SCRATCH, {"lookup-twice/f": b"1"})
    opts = mounter.seaweed.mount_options()
    upstream = upstream_port(opts)
    broken = threading.Event()

    def rule(method, path, headers):
        return 503 if broken.is_set() and "lookup-twice" in path else None
    with FaultProxy(upstream, rule=rule) as proxy:
        entry = mounter.s3_entry("/d", f"s3://{SCRATCH}/lookup-twice", read_only=True, metadata_ttl="1s",
                                 options=dict(opts, endpoint_url=opts["endpoint_url"].replace(
                                     str(upstream), str(proxy.port))))
        mp = mounter.mount([entry], extra={"store": {"timeout": "2s", "connect_timeout": "1s", "retries": 1}})
        assert os.stat(mp / "d/f").st_size == 1
        time.sleep(1.5)
        broken.set()
        assert errno_of(os.stat, mp / "d/never-seen") == errno.EIO
        one_lookup = len(proxy.failed)
        assert one_lookup > 0
        assert errno_of(os.stat, mp / "d/f") == errno.EIO  # known to the kernel: revalidated first
        assert len(proxy.failed) == 2 * one_lookup, proxy.failed
        assert errno_of(os.stat, mp / "d/f") == errno.EIO  # at once again: no new requests
        assert len(proxy.failed) == 2 * one_lookup, proxy.failed
