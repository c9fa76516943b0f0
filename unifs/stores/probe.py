"""One TCP connect to a store's endpoint before the first request of a mount, so a wrong
endpoint fails `unifs mount` at once with one line naming host and port, the same for every
store, not after a client's own retries (or with its own wording of "connection refused")."""

from __future__ import annotations

import socket
from urllib.parse import urlsplit

from unifs.errors import StoreUnavailable


def probe_endpoint(url: str, timeout: float) -> None:
    parts = urlsplit(url)
    host, port = parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
    if not host:
        return
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as e:
        reason = e.strerror or type(e).__name__
        raise StoreUnavailable(f"cannot connect to {host}:{port} ({reason})") from None
