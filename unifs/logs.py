"""Logging setup. Third-party clients stay at WARNING: their debug output can
carry request headers, and credentials must never reach a log."""

from __future__ import annotations

import logging
import os
import re
from logging.handlers import RotatingFileHandler
from typing import Optional

_NOISY = ("botocore", "aiobotocore", "s3fs", "fsspec", "urllib3", "azure", "adlfs", "gcsfs",
          "google", "asyncio", "obstore", "mfusepy", "fuse")


LOG_FILE_BYTES = 64 << 20  # then one older file (.1): the default log lives on /run, in RAM


class _PrivateRotatingFile(RotatingFileHandler):
    """Appends to a 0600 file (also one it makes at a rollover), kept to LOG_FILE_BYTES plus one
    older file: at debug level a long-running daemon's log grew in tmpfs without bound."""

    def _open(self):
        fd = os.open(self.baseFilename, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        return os.fdopen(fd, "a", encoding=self.encoding, errors=self.errors)


def setup_logging(level: str = "info", log_file: Optional[str] = None) -> None:
    lvl = getattr(logging, str(level).upper(), logging.INFO)
    if log_file:
        os.makedirs(os.path.dirname(os.path.abspath(log_file)), exist_ok=True)
        # a file name that is not UTF-8 (surrogateescape) must not turn a warning into a traceback
        handler: logging.Handler = _PrivateRotatingFile(log_file, maxBytes=LOG_FILE_BYTES, backupCount=1,
                                                        encoding="utf-8", errors="backslashreplace")
        os.chmod(log_file, 0o600)
    else:
        handler = logging.StreamHandler()
    handler.setFormatter(_ScrubbingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler, WARNINGS]
    root.setLevel(lvl)
    for name in _NOISY:
        logging.getLogger(name).setLevel(max(lvl, logging.WARNING))


class _WarningCount(logging.Handler):
    """How many warnings and errors this process logged: a daemon that logged none may remove
    its log at a clean unmount; one that did keeps it, for the operator."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1


WARNINGS = _WarningCount()


class _ScrubbingFormatter(logging.Formatter):
    """Every line, tracebacks included, without the mount table's secret values: client
    libraries put credentials into their error messages (a token in a URL, a key file)."""

    def format(self, record: logging.LogRecord) -> str:
        from unifs.config import scrub

        return scrub(super().format(record))

    def formatMessage(self, record: logging.LogRecord) -> str:
        # file names come from users: one with a newline in it would start a forged log line
        record.message = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", record.message)
        return super().formatMessage(record)


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
