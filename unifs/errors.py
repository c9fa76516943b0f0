"""Exceptions shared by the layers.

`UserError` is anything a user can fix (bad config, bad mount point, refused
credentials); the CLI prints its message as one line and exits non-zero.
Store errors are normalised so the file system can map them to one errno
whatever the backend.
"""

import errno


class UserError(Exception):
    """A problem the user can fix; str(e) is the one-line message."""


class ConfigError(UserError):
    """The mount table is invalid; `problems` holds one line per problem."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


class StoreError(OSError):
    """A store call failed; `errno` says how the file system should report it."""

    def __init__(self, err: int, message: str):
        super().__init__(err, message)


class ObjectNotFound(StoreError):
    def __init__(self, message: str = "no such object"):
        super().__init__(errno.ENOENT, message)


class AccessDenied(StoreError):
    def __init__(self, message: str = "access denied by the store"):
        super().__init__(errno.EACCES, message)


class ObjectChanged(StoreError):
    """The object changed under an open handle (ETag no longer matches)."""

    def __init__(self, message: str = "object changed in the store while open; reopen it"):
        super().__init__(errno.ESTALE, message)


class StoreUnavailable(StoreError):
    """Unreachable, timed out or failing after retries."""

    def __init__(self, message: str = "store unavailable"):
        super().__init__(errno.EIO, message)


class StoreTimedOut(StoreUnavailable):
    """No answer within the call's timeout."""


class StoreStalled(StoreTimedOut):
    """Not tried: another call of the same store timed out on every attempt a moment ago."""


class StoreRejected(StoreError):
    """A failure no retry can fix (bad option, unparseable key): EIO at once."""

    def __init__(self, message: str = "store rejected the request"):
        super().__init__(errno.EIO, message)


def object_root_error(size) -> StoreError:
    what = f"an object ({size} bytes)" if size is not None else "an object"
    return StoreError(errno.ENOTDIR, f"the URL names {what}, not a directory: mount the directory "
                                     "that holds it (its parent prefix) instead")
