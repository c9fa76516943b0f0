"""Logging setup. Third-party clients stay at WARNING: their debug output can
carry request headers, and credentials must never reach a log."""

from __future__ import annotations

import logging
import os
import re
from typing import Optional

_NOISY = ("botocore", "aiobotocore", "s3fs", "fsspec", "urllib3", "azure", "adlfs", "gcsfs",
          "google", "asyncio", "obstore", "mfusepy", "fuse")


def setup_logging(level: str = "info", log_file: Optional[str] = None) -> None:
    lvl = getattr(logging, str(level).upper(), logging.INFO)
    if log_file:
        os.makedirs(os.path.dirname(os.path.abspath(log_file)), exist_ok=True)
        handler: logging.Handler = logging.FileHandler(log_file)
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
