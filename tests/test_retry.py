"""call_store: one attempt without tenacity, then bounded retries of transient failures only."""

import pytest

from unifs.errors import ObjectNotFound, StoreUnavailable
from unifs.stores.retry import call_store


class Flaky:
    def __init__(self, failures):
        self.failures = list(failures)
        self.calls = 0

    def __call__(self, value):
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        return value


def test_a_first_success_is_one_call():
    fn = Flaky([])
    assert call_store(3, "read k", fn, b"data") == b"data"
    assert fn.calls == 1


def test_transient_failures_are_retried_until_success():
    fn = Flaky([ConnectionResetError("reset"), TimeoutError("slow")])
    assert call_store(3, "read k", fn, 7) == 7
    assert fn.calls == 3


def test_a_final_error_is_not_retried_and_keeps_its_cause():
    cause = FileNotFoundError("k")
    fn = Flaky([cause])
    with pytest.raises(ObjectNotFound) as info:
        call_store(3, "read k", fn, 1)
    assert fn.calls == 1
    assert info.value.__cause__ is cause


@pytest.mark.parametrize("retries", [0, 1])
def test_retries_are_bounded(retries):
    fn = Flaky([ConnectionResetError("reset")] * 5)
    with pytest.raises(StoreUnavailable):
        call_store(retries, "read k", fn, 1)
    assert fn.calls == retries + 1


def test_the_mount_check_does_not_retry_a_timeout_even_after_other_failures():
    from unifs.errors import StoreTimedOut
    from unifs.stores.retry import call_store_first

    fn = Flaky([ConnectionResetError("reset"), TimeoutError("slow"), TimeoutError("slow")])
    with pytest.raises(StoreTimedOut) as info:
        call_store_first(3, "list b", 2.0, fn, 1)
    assert fn.calls == 2
    assert "no answer within 2 s" in info.value.strerror


@pytest.mark.parametrize("retries", [0, 1, 2])
def test_the_mount_check_retries_other_transient_failures_within_bounds(retries):
    from unifs.stores.retry import call_store_first

    fn = Flaky([ConnectionResetError("reset")] * 5)
    with pytest.raises(StoreUnavailable):
        call_store_first(retries, "list b", 2.0, fn, 1)
    assert fn.calls == retries + 1
    ok = Flaky([ConnectionResetError("reset")])
    assert call_store_first(1, "list b", 2.0, ok, 5) == 5 and ok.calls == 2


def test_a_rust_client_panic_is_a_refusal_not_a_crash():
    # pyo3's PanicException derives from BaseException: it passed every `except Exception`
    # and ended the daemon with a Rust backtrace and a Python traceback
    from unifs.errors import StoreRejected

    class PanicException(BaseException):
        pass

    def boom():
        raise PanicException("request valid: InvalidUri(InvalidUriChar)\nbacktrace ...")
    with pytest.raises(StoreRejected) as e:
        call_store(3, "list s3://x", boom)
    assert "list s3://x" in str(e.value) and "InvalidUri" in str(e.value) and "backtrace" not in str(e.value)

    def interrupted():
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        call_store(3, "list s3://x", interrupted)


def test_a_call_timing_out_on_every_attempt_makes_the_next_calls_fail_at_once():
    import errno
    import threading
    import time

    from unifs.errors import StoreStalled, StoreTimedOut
    from unifs.stores.retry import Breaker

    b = Breaker(window=0.3)
    stalled = Flaky([StoreTimedOut("read a: timed out")] * 2)
    with pytest.raises(StoreTimedOut):
        call_store(1, "read a", stalled, 1, breaker=b)
    assert stalled.calls == 2
    never = Flaky([])
    with pytest.raises(StoreStalled) as e:
        call_store(3, "read b", never, 1, breaker=b)
    assert never.calls == 0 and e.value.errno == errno.EIO and "read b" in e.value.strerror
    # after the window one call tries the store; the others still fail at once meanwhile
    time.sleep(0.35)
    entered, release = threading.Event(), threading.Event()

    def slow_success(v):
        entered.set()
        release.wait(5)
        return v
    t = threading.Thread(target=lambda: call_store(1, "probe", slow_success, 1, breaker=b))
    t.start()
    assert entered.wait(5)
    with pytest.raises(StoreStalled):
        call_store(1, "read c", never, 1, breaker=b)
    release.set()
    t.join()
    assert call_store(1, "read d", never, 7, breaker=b) == 7  # the store answered: closed


def test_an_answer_from_the_store_closes_the_breaker_and_other_failures_do_not_open_it():
    from unifs.errors import StoreTimedOut
    from unifs.stores.retry import Breaker

    b = Breaker(window=0.05)
    with pytest.raises(StoreUnavailable):  # refused at once (a stopped server): nothing queues
        call_store(1, "read a", Flaky([StoreUnavailable("refused")] * 2), 1, breaker=b)
    assert call_store(0, "read b", Flaky([]), 2, breaker=b) == 2
    with pytest.raises(StoreTimedOut):
        call_store(0, "read c", Flaky([StoreTimedOut("timed out")]), 1, breaker=b)
    import time
    time.sleep(0.06)
    with pytest.raises(ObjectNotFound):  # the probe: the store answers, with a "no such object"
        call_store(1, "read d", Flaky([ObjectNotFound("gone")]), 1, breaker=b)
    assert call_store(0, "read e", Flaky([]), 3, breaker=b) == 3


def test_a_retry_in_flight_stops_once_another_call_found_the_store_stalled():
    from unifs.errors import StoreStalled, StoreTimedOut
    from unifs.stores.retry import Breaker

    b = Breaker(window=30)

    class TripsMeanwhile:
        calls = 0

        def __call__(self, v):
            self.calls += 1
            if self.calls == 1:  # another call times out on all attempts during this one's first
                with pytest.raises(StoreTimedOut):
                    call_store(0, "other", Flaky([StoreTimedOut("timed out")]), 1, breaker=b)
                raise StoreTimedOut("timed out")
            return v
    fn = TripsMeanwhile()
    with pytest.raises(StoreStalled):
        call_store(3, "read a", fn, 1, breaker=b)
    assert fn.calls == 1
