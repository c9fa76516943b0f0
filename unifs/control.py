"""A live daemon's control socket: `unifs cache stats` and `unifs cache clear` talk to it.

One JSON request per connection, one JSON answer. The socket sits in the run
directory (0700) with mode 0600, so only the mounting user can use it.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import socketserver
import threading
from typing import Callable

from unifs.errors import UserError

log = logging.getLogger("unifs.control")


class _Handler(socketserver.StreamRequestHandler):
    def handle(self):
        try:
            req = json.loads(self.rfile.readline(65536) or b"{}")
            answer = self.server.dispatch(req)
        except OSError as e:  # a file the daemon cannot touch: the user's to fix, no traceback
            why = f"{e.strerror or e}" + (f": {e.filename}" if e.filename else "")
            log.warning("control request %r failed: %s", req.get("cmd"), why)
            answer = {"error": why}
        except Exception as e:  # noqa: BLE001 - answered, never fatal for the daemon
            log.exception("control request failed")
            answer = {"error": f"{type(e).__name__}: {e}"}
        self.wfile.write(json.dumps(answer).encode() + b"\n")


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


class ControlServer:
    def __init__(self, path: str, handlers: dict[str, Callable[[dict], dict]]):
        self.path = path
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        old = os.umask(0o177)
        try:
            self.server = _Server(path, _Handler)
        finally:
            os.umask(old)
        self.inode = os.stat(path).st_ino
        self.server.dispatch = self._dispatch
        self.handlers = handlers
        self.thread = threading.Thread(target=self.server.serve_forever, name="unifs-control", daemon=True)

    def _dispatch(self, req: dict) -> dict:
        fn = self.handlers.get(req.get("cmd"))
        if fn is None:
            return {"error": f"unknown command {req.get('cmd')!r}"}
        return fn(req)

    def start(self) -> "ControlServer":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        try:
            if os.stat(self.path).st_ino == self.inode:  # not a later daemon's socket
                os.unlink(self.path)
        except FileNotFoundError:
            pass


def request(sock_path: str, cmd: str, timeout: float = 30.0, **args) -> dict:
    """Send one command to a daemon's control socket; UserError if it does not answer."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(sock_path)
            s.sendall(json.dumps({"cmd": cmd, **args}).encode() + b"\n")
            buf = b""
            while not buf.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
    except OSError as e:
        raise UserError(f"the daemon's control socket {sock_path} does not answer: {e.strerror or e}") from None
    answer = json.loads(buf or b"{}")
    if "error" in answer:
        raise UserError(f"the daemon refused '{cmd}': {answer['error']}")
    return answer
