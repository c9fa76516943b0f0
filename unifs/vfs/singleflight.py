"""Concurrent callers asking for the same key share one call."""

from __future__ import annotations

import threading
from concurrent.futures import Future
from typing import Callable, Hashable, TypeVar

T = TypeVar("T")


class SingleFlight:
    def __init__(self):
        self._lock = threading.Lock()
        self._calls: dict[Hashable, Future] = {}

    def do(self, key: Hashable, fn: Callable[[], T]) -> T:
        with self._lock:
            fut = self._calls.get(key)
            leader = fut is None
            if leader:
                fut = Future()
                self._calls[key] = fut
        if not leader:
            return fut.result()
        try:
            result = fn()
        except BaseException as e:
            fut.set_exception(e)
            raise
        else:
            fut.set_result(result)
            return result
        finally:
            with self._lock:
                self._calls.pop(key, None)
