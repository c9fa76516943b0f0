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
