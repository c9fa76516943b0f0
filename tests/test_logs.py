"""The daemon's log: one line per record, whatever names users give their files."""

from __future__ import annotations

import contextlib
import logging

from unifs.logs import setup_logging


@contextlib.contextmanager
def _daemon_logging(log_file):
    """The daemon's log setup, undone afterwards (pytest's own handlers come back)."""
    before = logging.getLogger().handlers[:], logging.getLogger().level
    try:
        setup_logging("info", str(log_file))
        yield logging.getLogger("unifs.test")
    finally:
        for h in logging.getLogger().handlers:
            if isinstance(h, logging.FileHandler):
                h.close()
        logging.getLogger().handlers[:], level = before
        logging.getLogger().setLevel(level)


def test_a_file_name_cannot_forge_a_log_line(tmp_path):
    log_file = tmp_path / "d.log"
    with _daemon_logging(log_file) as log:
        name = "run/x\n2026-01-01 00:00:00,000 ERROR unifs: forged\r\x1b[2J"
        log.info("%s: uploaded 4 bytes", name)
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("upload of %s failed", "a\tb")
    lines = log_file.read_text().splitlines()
    assert lines[0].endswith(r"unifs.test: run/x\x0a2026-01-01 00:00:00,000 ERROR unifs: forged\x0d\x1b[2J: uploaded 4 bytes")
    assert lines[1].endswith(r"upload of a\x09b failed")
    assert lines[2] == "Traceback (most recent call last):"  # tracebacks keep their lines
    assert lines[-1] == "ValueError: boom"


def test_a_file_name_that_is_not_utf8_is_logged(tmp_path, capsys):
    # FUSE hands such a name over decoded with surrogateescape; writing it to the log raised,
    # and the logging module printed a traceback of ~70 lines instead of the warning
    log_file = tmp_path / "d.log"
    with _daemon_logging(log_file) as log:
        log.warning("%s: cannot upload", b"ckpt/\xe9t\xe9".decode("utf-8", "surrogateescape"))
    assert log_file.read_text().splitlines()[0].endswith(r"unifs.test: ckpt/\udce9t\udce9: cannot upload")
    assert "Logging error" not in capsys.readouterr().err


def test_the_log_file_stays_private_and_bounded(tmp_path, monkeypatch):
    # the default log lives on /run (RAM): at debug level a long run grew it without bound
    import os
    import stat

    import unifs.logs as logs

    monkeypatch.setattr(logs, "LOG_FILE_BYTES", 10_000)
    log_file = tmp_path / "d.log"
    before = logging.getLogger().handlers[:], logging.getLogger().level
    old_umask = os.umask(0o022)
    try:
        setup_logging("info", str(log_file))
        for i in range(1000):
            logging.getLogger("unifs.test").info("line %d %s", i, "x" * 50)
    finally:
        os.umask(old_umask)
        for h in logging.getLogger().handlers:
            if isinstance(h, logging.FileHandler):
                h.close()
        logging.getLogger().handlers[:], level = before
        logging.getLogger().setLevel(level)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["d.log", "d.log.1"], files
    for p in tmp_path.iterdir():
        assert stat.S_IMODE(p.stat().st_mode) == 0o600, p
        assert p.stat().st_size <= 10_000 + 200
    assert "line 999 " in log_file.read_text()
