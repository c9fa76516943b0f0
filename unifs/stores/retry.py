"""Bounded retries with exponential backoff for store calls (tenacity)."""

from __future__ import annotations

import logging
import random
import threading
import time
from typing import Callable, Optional

from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential_jitter

from unifs.stores.errormap import normalise
from unifs.errors import (AccessDenied, ObjectChanged, ObjectNotFound, StoreError, StoreRejected, StoreStalled,
                          StoreTimedOut, StoreUnavailable)

log = logging.getLogger("unifs.store")

_FINAL = (ObjectNotFound, AccessDenied, ObjectChanged, StoreRejected, StoreStalled, FileNotFoundError, PermissionError,
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


class Breaker:
    """Fails a store's calls at once for a while after one of them timed out on every attempt.
    libfuse runs a few threads (10 for a store on this host) and the kernel hands them requests
    in order: with the store stalled (a stopped server, a link dropping packets) each thread
    waited out its call's timeouts and retries, and every request behind them, even one the
    cache could answer, waited for as many rounds as there were readers ahead of it (81 s for a
    cached file behind 60 readers, with 5 s timeouts). After the window one call at a time tries
    the store again; any answer from the store closes the breaker."""

    def __init__(self, window: float):
        self.window = window
        self._until = 0.0  # 0: closed
        self._probing = False
        self.trips = 0
        self._why = ""
        self._lock = threading.Lock()

    def check(self, what: str) -> int:
        """Raises StoreStalled while open; else the trips so far, for stop_retrying."""
        if not self._until:
            return self.trips
        with self._lock:
            if not self._until:
                return self.trips
            if time.monotonic() >= self._until and not self._probing:
                self._probing = True  # this call finds out whether the store is back
                return self.trips
            raise StoreStalled(f"{what}: not tried, the store did not answer a moment ago ({self._why})")

    def stop_retrying(self, what: str, trips: int) -> None:
        """Between the attempts of a call: another call found the store stalled meanwhile."""
        if self.trips != trips and self._until and time.monotonic() < self._until:
            raise StoreStalled(f"{what}: not tried again, the store did not answer a moment ago ({self._why})")

    def trip(self, exc: BaseException) -> None:
        with self._lock:
            self.trips += 1
            self._until = time.monotonic() + self.window
            self._probing = False
            self._why = getattr(exc, "strerror", None) or str(exc)

    def reset(self) -> None:
        if self._until:
            with self._lock:
                self._until, self._probing = 0.0, False


def breaker_for(timeout: float) -> Breaker:
    """A stalled store is asked again after its timeout, at most 5 s, by one call: only that
    call's FUSE thread waits on it, and a store back from an outage is used again soon."""
    return Breaker(max(1.0, min(timeout, 5.0)))


def call_store(retries: int, what: str, fn, *args, breaker: Optional[Breaker] = None, **kwargs):
    """fn(*args, **kwargs) with the backend's exceptions normalised and transient ones retried."""
    if breaker is None:
        return _attempts(retries, what, _transient, fn, args, kwargs)
    trips = breaker.check(what)
    try:
        out = _attempts(retries, what, _transient, fn, args, kwargs,
                        before_retry=lambda: breaker.stop_retrying(what, trips))
    except StoreStalled:
        raise
    except StoreTimedOut as e:
        breaker.trip(e)
        raise
    except BaseException:
        breaker.reset()  # the store answered (a refusal, no such object): it is not stalled
        raise
    breaker.reset()
    return out


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


def _attempts(retries: int, what: str, transient, fn, args, kwargs,
              before_retry: Optional[Callable[[], None]] = None):
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
            if before_retry is not None:
                before_retry()
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
