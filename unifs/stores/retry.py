"""Bounded retries with exponential backoff for store calls (tenacity)."""

from __future__ import annotations

import logging

from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential_jitter

from unifs.stores.errormap import normalise
from unifs.errors import AccessDenied, ObjectChanged, ObjectNotFound, StoreError, StoreRejected, StoreUnavailable

log = logging.getLogger("unifs.store")

_FINAL = (ObjectNotFound, AccessDenied, ObjectChanged, StoreRejected, FileNotFoundError, PermissionError,
          IsADirectoryError, NotADirectoryError, ValueError, TypeError)


def _transient(exc: BaseException) -> bool:
    if isinstance(exc, _FINAL):
        return False
    if isinstance(exc, StoreError):
        return isinstance(exc, StoreUnavailable)
    return isinstance(exc, Exception)


def call_store(retries: int, what: str, fn, *args, **kwargs):
    """fn(*args, **kwargs) with the backend's exceptions normalised and transient ones retried."""
    for attempt in retrying(retries, what):
        with attempt:
            try:
                return fn(*args, **kwargs)
            except Exception as e:  # noqa: BLE001 - every backend error is normalised
                raise normalise(e, what) from e
    raise AssertionError("unreachable")


def retrying(retries: int, what: str) -> Retrying:
    def _log(state):
        log.warning("%s failed (attempt %d of %d): %s; retrying", what, state.attempt_number,
                    retries + 1, state.outcome.exception())

    return Retrying(
        stop=stop_after_attempt(retries + 1),
        wait=wait_exponential_jitter(multiplier=0.2, max=5.0),
        retry=retry_if_exception(_transient),
        before_sleep=_log,
        reraise=True,
    )
