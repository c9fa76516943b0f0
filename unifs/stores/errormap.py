"""Map any backend's exception to one of the normalised store errors.

Stores disagree (s3fs raises PermissionError, adlfs an HttpResponseError with
status 403, obstore its own classes); the file system only sees these four.
"""

from __future__ import annotations

import errno
import os
import re

from unifs.config import redact_url, scrub
from unifs.errors import (AccessDenied, ObjectChanged, ObjectNotFound, StoreError, StoreRejected, StoreTimedOut,
                          StoreUnavailable)


_STATUS_IN_TEXT = re.compile(r"status code: (\d{3})|\b(\d{3}) (?:Forbidden|Not Found|Unauthorized|Precondition Failed)")


def _chain(exc: BaseException, limit: int):
    """exc and the exceptions it was raised from, at most `limit` of them."""
    while exc is not None and limit > 0:
        yield exc
        exc = exc.__cause__ or exc.__context__
        limit -= 1


def _status(exc: BaseException):
    # s3fs wraps botocore's ClientError in a plain OSError: look down the cause chain
    return next((st for st in map(_own_status, _chain(exc, 5)) if st), None)


def _own_status(exc: BaseException):
    if type(exc).__module__.startswith("aiohttp.http_exceptions"):
        # aiohttp's parser errors (a body cut short: ContentLengthError under a
        # ClientPayloadError) carry code=400 as if the server had said so: a broken
        # connection, not a refusal
        return None
    for attr in ("status_code", "status", "code"):
        v = getattr(exc, attr, None)
        if isinstance(v, int):
            return v
    resp = getattr(exc, "response", None)
    if isinstance(resp, dict):
        return resp.get("ResponseMetadata", {}).get("HTTPStatusCode")
    if isinstance(exc, OSError) and str(exc).startswith("Forbidden: "):
        return 403  # gcsfs raises a plain OSError for HTTP 403
    # obstore's GenericError only carries the status in its message
    m = _STATUS_IN_TEXT.search(str(exc))
    if m:
        return int(m.group(1) or m.group(2))
    return None


_XML_CODE = re.compile(r"<Code>([^<]+)</Code>")


def _concise(exc: BaseException, status) -> str:
    """A short reason: HTTP status and the store's error code, not a whole request dump."""
    text = str(exc)
    code = _XML_CODE.search(text)
    if status and code:
        return f"HTTP {status} {code.group(1)}"
    az_code = getattr(exc, "error_code", None)  # azure-core's HttpResponseError
    if status and isinstance(az_code, str) and az_code:
        return f"HTTP {status} {az_code}"
    if status:
        return f"HTTP {status}"
    first = text.splitlines()[0] if text else type(exc).__name__
    return scrub(first)[:200]


def _auth_hiccup(exc: BaseException) -> bool:
    """A credentials refresh that failed for a passing reason (the metadata server or token
    endpoint did not answer): gcsfs reports it as HTTP 401, but it is no refusal."""
    return any(getattr(e, "retryable", False) is True or type(e).__name__ == "TransportError"
               for e in _chain(exc, 6))


_NO_CONNECTION = ("error sending request", "connection refused", "cannot connect to host",
                  "name or service not known", "failed to lookup address", "dns error")


def _no_connection(exc: BaseException) -> bool:
    """The request never reached a server (refused, unresolvable host): obstore (reqwest),
    aiohttp and the standard library each say it their own way."""
    for e in _chain(exc, 6):
        if isinstance(e, ConnectionRefusedError) or type(e).__name__ == "ClientConnectorError":
            return True
        low = str(e).lower()
        if any(m in low for m in _NO_CONNECTION):
            return True
    return False


_LOCAL_FINAL = {errno.ENAMETOOLONG, errno.ENOTDIR, errno.EISDIR, errno.EEXIST, errno.ENOTEMPTY, errno.ENOSPC,
                errno.EROFS, errno.ELOOP, errno.EXDEV, errno.EINVAL}


def normalise(exc: BaseException, what: str) -> StoreError:
    if isinstance(exc, StoreError):
        return exc
    name = type(exc).__name__
    status = _status(exc)
    text = _concise(exc, status)
    if isinstance(exc, FileNotFoundError) or name in ("NotFoundError", "NoSuchKey", "NoSuchBucket") \
            or status == 404:
        return ObjectNotFound(f"{what}: not found")
    if isinstance(exc, OSError) and isinstance(exc.errno, int) and exc.errno in (errno.ENOENT,):
        return ObjectNotFound(f"{what}: not found")
    if name in ("PreconditionError",) or status in (412, 416):
        # 416: a range inside the size seen at open is past the end now: the object shrank.
        # Asked before the local errnos below: s3fs turns both into a plain EINVAL
        return ObjectChanged(f"{what}: object changed in the store while open; reopen it")
    if type(exc) in (OSError, IsADirectoryError, NotADirectoryError, FileExistsError) \
            and exc.errno in _LOCAL_FINAL:
        # a local file system (file://) answers these the same way every time: no retry, and
        # the caller sees the real errno (ENAMETOOLONG, not EIO after the retries)
        err = StoreRejected(f"{redact_url(what)}: {os.strerror(exc.errno)}")
        err.errno = exc.errno
        return err
    if status == 401 and _auth_hiccup(exc):
        return StoreUnavailable(f"{what}: refreshing the store credentials failed ({text}); retried")
    if isinstance(exc, PermissionError) or name in ("PermissionDeniedError", "UnauthenticatedError") \
            or status in (401, 403):
        return AccessDenied(f"{what}: access denied by the store ({text})")
    if "NoSuchBucket" in str(exc):
        return ObjectNotFound(f"{what}: bucket not found")
    # 409 is a conflict of the moment more often than a refusal (S3 OperationAborted, an Azure
    # lease held by another client, a container being deleted): retried, not given up
    if isinstance(status, int) and 400 <= status < 500 and status not in (408, 409, 429):
        # the store refuses this request as such (KeyTooLongError, InvalidArgument ...): no retry helps
        return StoreRejected(f"{redact_url(what)}: rejected by the store ({text})")
    if isinstance(exc, (TypeError, ValueError)) or name in ("InvalidPathError", "ProfileNotFound"):
        return StoreRejected(f"{redact_url(what)}: {name}: {text}")
    if isinstance(exc, TimeoutError) or "Timeout" in name or "kind: Timeout" in str(exc):  # obstore: HttpError
        return StoreTimedOut(f"{what}: timed out ({text})")
    if _no_connection(exc):
        return StoreUnavailable(f"{redact_url(what)}: cannot connect to the store (is the endpoint "
                                "right and the server up?)")
    return StoreUnavailable(f"{redact_url(what)}: {name}: {text}")
