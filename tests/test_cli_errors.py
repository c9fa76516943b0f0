"""Bad command-line input: one line naming what is wrong, a non-zero exit, no traceback, and
no secret in anything printed or logged."""

from __future__ import annotations

import os

import pytest

from conftest import unifs

TABLE = "mounts:\n  - path: /m\n    url: memory://cli-errors\n"


def _one_line_error(res, *fragments):
    assert res.returncode != 0, res.stdout
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    assert all(f in lines[0] for f in fragments), lines[0]


@pytest.fixture
def setup(tmp_path):
    cfg = tmp_path / "m.yaml"
    cfg.write_text(TABLE + f"cache: {{dir: {tmp_path / 'cache'}}}\nwrite: {{staging_dir: {tmp_path / 'st'}}}\n")
    mp = tmp_path / "mp"
    mp.mkdir()
    return cfg, mp


@pytest.mark.parametrize("opt", ["foreground", "nothreads", "subtype=other", "fsname=x", "raw_fi"])
def test_options_unifs_sets_itself_are_refused(setup, opt):
    cfg, mp = setup
    _one_line_error(unifs("mount", str(mp), "-c", str(cfg), "-o", f"ro,{opt}"), f"-o {opt.split('=')[0]}")


def test_cache_or_staging_inside_the_mount_point_is_refused(tmp_path):
    mp = tmp_path / "mp"
    mp.mkdir()
    for key, value in (("cache", f"{{dir: {mp / 'cache'}}}"), ("write", f"{{staging_dir: {mp / 'st'}}}")):
        cfg = tmp_path / f"{key}.yaml"
        cfg.write_text(TABLE + f"{key}: {value}\n")
        _one_line_error(unifs("mount", str(mp), "-c", str(cfg)), "inside the mount point")
        assert os.listdir(mp) == []  # nothing created there either


def test_bad_log_file_and_empty_config_name(setup, tmp_path):
    cfg, mp = setup
    _one_line_error(unifs("mount", str(mp), "-c", str(cfg), "--log-file", str(tmp_path)), "--log-file", "directory")
    _one_line_error(unifs("mount", str(mp), "-c", str(cfg), "--log-file", "/proc/nope/x.log"), "--log-file")
    _one_line_error(unifs("mount", str(mp), "-c", ""), "--config")
    _one_line_error(unifs("config", "check", "-c", ""), "--config")


def test_warmup_needs_at_least_one_thread(tmp_path):
    res = unifs("warmup", str(tmp_path), "--threads", "0")
    assert res.returncode == 2 and "--threads" in res.stderr and "Traceback" not in res.stderr


def test_a_client_error_carrying_a_token_does_not_print_it(setup, tmp_path):
    """gcsfs checks an access token given as `token:` against Google's tokeninfo endpoint and
    puts the token, in the URL, into its error. Neither the message nor the log may show it."""
    _, mp = setup
    cfg = tmp_path / "gcs.yaml"
    secret = "ya29.UNIFS_TEST_TOKEN_VALUE_4711"
    cfg.write_text(f"mounts:\n  - path: /g\n    url: gs://some-bucket\n    options: {{token: '{secret}'}}\n"
                   f"store: {{timeout: 3s, connect_timeout: 2s, retries: 0}}\n")
    log = tmp_path / "daemon.log"
    res = unifs("mount", str(mp), "-c", str(cfg), "--log-file", str(log), timeout=180)
    assert res.returncode != 0
    assert secret not in res.stderr and secret not in res.stdout
    text = log.read_text() if log.exists() else ""
    assert secret not in text and "UNIFS_TEST_TOKEN" not in text


def test_an_option_obstore_cannot_take_is_named(setup, tmp_path):
    _, mp = setup
    cfg = tmp_path / "o.yaml"
    cfg.write_text("mounts:\n  - path: /s\n    url: s3://bkt\n    client: obstore\n"
                   "    options: {endpoint: 'http://127.0.0.1:9'}\n")
    _one_line_error(unifs("mount", str(mp), "-c", str(cfg)), "'endpoint'", "endpoint_url")


def test_output_into_a_closed_pipe_or_a_full_disk_is_no_internal_error(tmp_path):
    import subprocess
    import sys

    cfg = tmp_path / "m.yaml"
    cfg.write_text("mounts:\n  - path: /a\n    url: memory://x\n")
    r, w = os.pipe()
    os.close(r)  # `unifs config check | head -0`: the reader is gone before anything is written
    try:
        res = subprocess.run([sys.executable, "-m", "unifs", "config", "check", "--config", str(cfg)],
                             stdout=w, stderr=subprocess.PIPE, text=True, timeout=60)
    finally:
        os.close(w)
    assert res.returncode == 141 and res.stderr == "", res.stderr
    for args in (["config", "check", "--config", str(cfg)], ["--help"]):
        with open("/dev/full", "w") as full:
            res = subprocess.run([sys.executable, "-m", "unifs", *args],
                                 stdout=full, stderr=subprocess.PIPE, text=True, timeout=60)
        assert res.returncode == 1 and res.stderr.strip() == \
            "unifs: error: cannot write the output: No space left on device", res.stderr


def test_mistakes_around_the_mount_are_named(setup, tmp_path):
    cfg, mp = setup
    _one_line_error(unifs("mount", str(mp), "-c", str(cfg), "--log-file", str(tmp_path / "no/such/x.log")),
                          "--log-file", "does not exist")
    assert not (tmp_path / "no").exists()  # not created behind the user's back
    _one_line_error(unifs("mount", "", "-c", str(cfg)), "mount point", "empty")
    (tmp_path / "afile").write_text("x")
    table = tmp_path / "t.yaml"
    table.write_text(TABLE + f"cache: {{mode: tiered, dir: {tmp_path / 'afile'}}}\n"
                     f"write: {{staging_dir: {tmp_path / 'st'}}}\n")
    _one_line_error(unifs("mount", str(mp), "-c", str(table)), "cache.dir", "not a directory")
    table.write_text(TABLE + "cache: {mode: disk, disk: 0}\n")
    _one_line_error(unifs("config", "check", "-c", str(table)), "cache.mode", "cache.disk is 0")
    table.write_text(TABLE + "cache: {ram: 100TiB}\n")
    _one_line_error(unifs("config", "check", "-c", str(table)), "cache.ram", "more than this machine's memory")
    assert os.listdir(mp) == []


def test_an_unexpected_os_error_is_one_internal_error_line(monkeypatch):
    # the full-disk case must not let every other OSError escape as a traceback
    from click.testing import CliRunner

    from unifs import cli, daemon

    def denied():
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(daemon, "status", denied)
    res = CliRunner().invoke(cli.main, ["status"])
    assert res.exit_code == 2 and res.output.startswith("unifs: internal error: PermissionError"), res.output


def test_run_directory_from_the_environment_is_checked_not_taken_over(tmp_path):
    """UNIFS_RUN_DIR empty (the cwd), relative, or a shared directory: never made 0700 (the
    daemon runs in /, which an empty value made private)."""
    here = tmp_path / "here"
    shared = tmp_path / "shared"
    here.mkdir(mode=0o755)
    shared.mkdir()
    os.chmod(here, 0o755)
    os.chmod(shared, 0o1777)
    env = dict(os.environ, UNIFS_RUN_DIR="")
    assert unifs("status", env=env, cwd=here).returncode == 0
    assert oct(os.stat(here).st_mode & 0o7777) == oct(0o755)
    _one_line_error(unifs("status", env=dict(os.environ, UNIFS_RUN_DIR="run"), cwd=here),
                    "UNIFS_RUN_DIR", "absolute")
    _one_line_error(unifs("status", env=dict(os.environ, UNIFS_RUN_DIR=str(shared))), "UNIFS_RUN_DIR",
                    str(shared), "1777")
    assert oct(os.stat(shared).st_mode & 0o7777) == oct(0o1777)
    fresh = tmp_path / "fresh" / "run"
    assert unifs("status", env=dict(os.environ, UNIFS_RUN_DIR=str(fresh))).returncode == 0
    assert oct(os.stat(fresh).st_mode & 0o777) == oct(0o700)
    # made by `mkdir` or systemd's RuntimeDirectory= (0755, empty): taken and made private;
    # one holding other files is someone else's directory
    own = tmp_path / "own"
    own.mkdir()
    os.chmod(own, 0o755)
    assert unifs("status", env=dict(os.environ, UNIFS_RUN_DIR=str(own))).returncode == 0
    assert oct(os.stat(own).st_mode & 0o777) == oct(0o700)
    (here / "notes.txt").write_text("x")
    _one_line_error(unifs("status", env=dict(os.environ, UNIFS_RUN_DIR=str(here))), "UNIFS_RUN_DIR",
                    "notes.txt")
    assert oct(os.stat(here).st_mode & 0o7777) == oct(0o755)


def test_a_damaged_state_file_does_not_break_status(tmp_path):
    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    (run / "mount-0000.json").write_text("[1, 2]")
    (run / "mount-0001.json").write_text('{"pid": 1}')
    res = unifs("status", env=dict(os.environ, UNIFS_RUN_DIR=str(run)))
    assert res.returncode == 0 and "Traceback" not in res.stderr and "error" not in res.stderr, res.stderr


def test_cache_or_staging_inside_another_unifs_mount_is_refused(mounter, tmp_path):
    # accepted, every cache block became an upload to that mount's store (its fixed modes
    # also passed the 0700 check)
    (tmp_path / "store").mkdir()
    other = mounter.mount([{"path": "/w", "url": f"file://{tmp_path / 'store'}"}]) / "w"
    mp = tmp_path / "mp"
    mp.mkdir()
    for key, value in (("cache", f"{{dir: {other / 'cache'}}}"), ("write", f"{{staging_dir: {other / 'st'}}}")):
        cfg = tmp_path / f"{key}.yaml"
        cfg.write_text(TABLE + f"{key}: {value}\n")
        _one_line_error(unifs("mount", str(mp), "-c", str(cfg)), "inside the unifs mount", str(other.parent))
    assert os.listdir(tmp_path / "store") == []


def test_staging_inside_the_cache_dir_is_refused(tmp_path):
    # `rm -rf` of the disposable cache dir would take pending uploads with it
    cfg = tmp_path / "m.yaml"
    cfg.write_text(TABLE + f"cache: {{dir: {tmp_path / 'c'}}}\nwrite: {{staging_dir: {tmp_path / 'c/st'}}}\n")
    _one_line_error(unifs("config", "check", "-c", str(cfg)), "staging_dir", "inside cache.dir")


def test_cache_commands_with_nothing_mounted_say_so(tmp_path):
    env = dict(os.environ, UNIFS_RUN_DIR=str(tmp_path / "run"))
    for args in (("cache", "clear"), ("cache", "stats")):
        _one_line_error(unifs(*args, env=env), "no live unifs mounts")


@pytest.mark.parametrize("where", ["parent", "itself", "inside"])
def test_a_local_directory_holding_the_mount_point_is_refused(tmp_path, where):
    # it showed itself inside itself without end (or the mount hid it from the daemon): a
    # lookup waited on the daemon's own FUSE answer and the reader hung in D state, unkillable
    mp = tmp_path / "mnt"
    mp.mkdir()
    (mp / "sub").mkdir()
    url = f"file://{ {'parent': tmp_path, 'itself': mp, 'inside': mp / 'sub'}[where]}"
    cfg = tmp_path / "m.yaml"
    cfg.write_text(f"mounts:\n  - path: /home\n    url: {url}\n    read_only: true\n"
                   f"cache: {{dir: {tmp_path / 'c'}}}\nwrite: {{staging_dir: {tmp_path / 's'}}}\n")
    res = unifs("mount", str(mp), "-c", str(cfg), "-o", "nonempty")
    _one_line_error(res, "mount /home", "inside the mount point" if where == "inside" else "holds the mount point")


def test_every_problem_of_a_table_is_one_prefixed_line(tmp_path):
    # the s3 option problems came as one message: only its first line said "unifs: error:"
    cfg = tmp_path / "m.yaml"
    cfg.write_text("mounts:\n  - path: /a\n    url: s3://x\n    options: {sas_token: x, my_token: y, credentials: z}\n")
    res = unifs("config", "check", "-c", str(cfg))
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 1 and len(lines) == 3 and all(ln.startswith("unifs: error: ") for ln in lines), lines
    cfg.write_text("mounts:\n  - path: 5\n    url: memory://x\n    read_only: maybe\n")
    res = unifs("config", "check", "-c", str(cfg))
    assert "path: must be text" in res.stderr and "read_only: must be true or false" in res.stderr, res.stderr
    cfg.write_text("mounts:\n  - path: /données\n    url: memory://x\n")
    assert "/données" in unifs("config", "check", "-c", str(cfg), check=True).stdout
