"""Bounded retries with exponential backoff for store calls (tenacity)."""

from __future__ import annotations

import logging
import random

from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential_jitter

from unifs.stores.errormap import normalise
from unifs.errors import (AccessDenied, ObjectChanged, ObjectNotFound, StoreError, StoreRejected, StoreTimedOut,
                          StoreUnavailable)

log = logging.getLogger("unifs.store")

_FINAL = (ObjectNotFound, AccessDenied, ObjectChanged, StoreRejected, FileNotFoundError, PermissionError,
          IsADirectoryError, NotADirectoryError, ValueError, TypeError)


def _transient(exc: BaseException) -> bool:
    if isinstance(exc, _FINAL):
        return False
    if isinstance(exc, StoreError):
        return isinstance(exc, StoreUnavailable)
    return isinstance(exc, Exception)


def is_transient(exc: BaseException, what: str = "") -> bool:
    """Whether a backend's exception is worth another attempt (a 5xx, a timeout, a reset)."""
    return _transient(normalise(exc, what) if isinstance(exc, Exception) else exc)


def backoff_s(attempt: int) -> float:
    """Seconds to wait before retry number `attempt` (1, 2, ...), for the retry loops unifs puts
    into the clients (gcsfs upload requests, the Azure SDK's policy)."""
    return min(5.0, 0.2 * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)


def call_store(retries: int, what: str, fn, *args, **kwargs):
    """fn(*args, **kwargs) with the backend's exceptions normalised and transient ones retried."""
    return _attempts(retries, what, _transient, fn, args, kwargs)


def call_store_first(retries: int, what: str, timeout_s: float, fn, *args, **kwargs):
    """call_store for the first call of a mount: a timeout is final. A wrong endpoint that accepts
    connections and never answers (a proxy, a firewall, the wrong service) otherwise failed
    `unifs mount` only after (retries + 1) x timeout, two minutes with the defaults."""
    try:
        return _attempts(retries, what, _transient_but_no_timeout, fn, args, kwargs)
    except StoreTimedOut as e:
        raise StoreTimedOut(f"{e.strerror}: no answer within {timeout_s:g} s (store: timeout); is "
                            "the endpoint right?") from e


def _transient_but_no_timeout(exc: BaseException) -> bool:
    return _transient(exc) and not isinstance(exc, StoreTimedOut)


def _attempts(retries: int, what: str, transient, fn, args, kwargs):
    # The first attempt runs without tenacity: its per-call setup cost about as much Python time
    # as a cached small read (cold small files make one call each); failures go through it.
    try:
        return fn(*args, **kwargs)
    except Exception as e:  # noqa: BLE001 - every backend error is normalised
        first = _normalised(e, what)
    except BaseException as e:
        raise _panic(e, what)
    if retries <= 0 or not transient(first):
        raise first
    failed = [first]
    for attempt in retrying(retries, what, transient):
        with attempt:
            if failed:  # the attempt made above, counted and waited for by tenacity
                raise failed.pop()
            try:
                return fn(*args, **kwargs)
            except Exception as e:  # noqa: BLE001
                raise _normalised(e, what)
            except BaseException as e:
                raise _panic(e, what)
    raise AssertionError("unreachable")


def _panic(exc: BaseException, what: str) -> BaseException:
    """A Rust client's panic (pyo3's PanicException derives from BaseException, so it passed
    every `except Exception` and ended the daemon with a traceback): a refusal naming the
    call. KeyboardInterrupt and SystemExit stay what they are."""
    if type(exc).__name__ != "PanicException":
        return exc
    first = (str(exc).strip().splitlines() or [""])[0]
    return StoreRejected(f"{what}: the store client failed: {first[:200]}")


def _normalised(exc: Exception, what: str) -> BaseException:
    out = normalise(exc, what)
    if out is not exc:
        out.__cause__ = exc
    return out


def retrying(retries: int, what: str, transient=_transient) -> Retrying:
    def _log(state):
        log.warning("%s failed (attempt %d of %d): %s; retrying", what, state.attempt_number,
                    retries + 1, state.outcome.exception())

    return Retrying(
        stop=stop_after_attempt(retries + 1),
        wait=wait_exponential_jitter(multiplier=0.2, max=5.0),
        retry=retry_if_exception(transient),
        before_sleep=_log,
        reraise=True,
    )
