"""How backend exceptions map to unifs' store errors where a real emulator cannot produce the
exception: GCS credentials refused or failing to refresh (fake-gcs-server takes no credentials)."""

from __future__ import annotations

from gcsfs.retry import HttpError
from google.auth import exceptions as gauth

from unifs.errors import AccessDenied, StoreUnavailable
from unifs.stores.errormap import normalise


def _refresh_failure(cause: BaseException) -> HttpError:
    """What gcsfs' credentials.maybe_refresh raises when google-auth's refresh fails."""
    try:
        try:
            raise cause
        except BaseException as e:
            raise HttpError({"code": 401, "message": "Invalid Credentials"}) from e
    except HttpError as err:
        return err


def test_a_refresh_that_could_not_reach_the_token_server_is_retried():
    transport = gauth.TransportError("metadata server did not answer")
    try:
        raise gauth.RefreshError("refresh failed") from transport
    except gauth.RefreshError as refresh:
        err = _refresh_failure(refresh)
    assert isinstance(normalise(err, "stat x"), StoreUnavailable)
    assert isinstance(normalise(_refresh_failure(gauth.RefreshError("busy", retryable=True)), "stat x"),
                      StoreUnavailable)


def test_refused_credentials_stay_access_denied():
    err = _refresh_failure(gauth.RefreshError("invalid_grant: account deleted"))
    assert isinstance(normalise(err, "stat x"), AccessDenied)
    assert isinstance(normalise(HttpError({"code": 401, "message": "Invalid Credentials"}), "stat x"),
                      AccessDenied)


def test_gcs_forbidden_is_access_denied():
    # gcsfs' validate_response raises a plain OSError for HTTP 403
    assert isinstance(normalise(OSError("Forbidden: b/o\nno storage.objects.get access"), "read o"),
                      AccessDenied)


def test_an_azure_conflict_is_retried_and_names_its_code():
    # Azurite's MemoryExtentStoreAtSizeLimit or a lease held by another client: was "rejected by
    # the store (HTTP 409)", never retried, with no hint of the reason
    from azure.core.exceptions import HttpResponseError

    from unifs.errors import StoreRejected

    err = HttpResponseError(message="There is currently a lease on the blob")
    err.status_code = 409
    err.error_code = "LeaseIdMissing"
    out = normalise(err, "upload a.bin")
    assert isinstance(out, StoreUnavailable) and "HTTP 409 LeaseIdMissing" in out.strerror, out.strerror
    bad = HttpResponseError(message="bad")
    bad.status_code = 400
    bad.error_code = "InvalidBlobOrBlock"
    out = normalise(bad, "upload a.bin")
    assert isinstance(out, StoreRejected) and "HTTP 400 InvalidBlobOrBlock" in out.strerror, out.strerror


def test_a_response_cut_short_is_a_broken_connection_not_a_refusal():
    # aiohttp's ContentLengthError carries code=400: a GCS upload whose response was cut
    # was "rejected by the store (HTTP 400), not retried" and never reached the store
    import aiohttp
    from aiohttp import http_exceptions

    for cause in (http_exceptions.ContentLengthError("Not enough data to satisfy content length header."),
                  http_exceptions.TransferEncodingError("Not enough data to satisfy transfer length header.")):
        try:
            try:
                raise cause
            except http_exceptions.HttpProcessingError as e:
                raise aiohttp.ClientPayloadError("Response payload is not completed") from e
        except aiohttp.ClientPayloadError as e:
            err = normalise(e, "upload ckpt/model.pt")
        assert isinstance(err, StoreUnavailable), err
        assert "400" not in str(err) and "rejected" not in str(err)
    err = normalise(aiohttp.ServerDisconnectedError(), "list data")
    assert isinstance(err, StoreUnavailable)
