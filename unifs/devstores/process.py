"""What the local store servers (SeaweedFS, fake-gcs-server, Azurite) share: free
ports on 127.0.0.1, a start loop that proves the answering process is ours,
and a stop that leaves nothing of the process group behind."""

from __future__ import annotations

import atexit
import os
import random
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Optional

from unifs.mountinfo import open_files


def port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def free_port(low: int = 12000, high: int = 19999) -> int:
    """A free TCP port on 127.0.0.1, below the kernel's ephemeral range (so no
    outgoing connection holds it) and outside the blocks SeaweedS3 picks from."""
    for _ in range(200):
        p = random.randrange(low, high)
        if port_free(p):
            return p
    raise RuntimeError("no free port on 127.0.0.1")


def _listening_inodes(port: int) -> set[str]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if len(f) > 9 and f[3] == "0A" and int(f[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f[9])
    return inodes


def pid_listens(pid: int, port: int) -> Optional[bool]:
    """Whether process `pid` holds the listening socket of `port` (None where
    /proc cannot tell, e.g. not Linux). Proves that whatever answers on the
    port is the process we started, not a neighbour that won a port race."""
    if not Path("/proc/net/tcp").exists():
        return None
    inodes = _listening_inodes(port)
    if not inodes:
        return False
    targets = open_files(pid)
    if targets is None:
        return None
    return any(t.startswith("socket:[") and t[8:-1] in inodes for t in targets)


def stop_process_group(proc: Optional[subprocess.Popen], grace: float) -> None:
    """SIGTERM the process group of `proc` (started with start_new_session),
    SIGKILL it after `grace` seconds."""
    if proc is None:
        return
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
    else:
        # the leader is gone; make sure nothing it started lingers
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class LocalServer:
    """A store server in its own process group on a fresh 127.0.0.1 port.

    Subclasses say how to launch (`_command`), where it logs (`_log_path`) and
    how to ask whether it serves (`_answers`, one request)."""

    name = "server"
    start_timeout = 60.0
    stop_grace = 3.0

    def __init__(self, workdir: str):
        self.workdir = Path(workdir)
        self.proc: Optional[subprocess.Popen] = None
        self.port = 0

    def _pick_port(self) -> int:
        return free_port()

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _log_path(self) -> Path:
        return self.workdir / f"{self.name}.log"

    def _cwd(self) -> Path:
        return self.workdir

    def _answers(self) -> bool:
        raise NotImplementedError

    def restart(self, timeout: Optional[float] = None):
        """Start again on the same port (and data directory) after stop(): clients that
        were configured with the old endpoint reach it again."""
        return self.start(timeout, port=self.port)

    def start(self, timeout: Optional[float] = None, port: int = 0):
        timeout = self.start_timeout if timeout is None else timeout
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = self._log_path()
        log.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            self.port = port or self._pick_port()
            cmd = self._command()
            with open(log, "ab") as out:
                self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                             stdin=subprocess.DEVNULL, cwd=str(self._cwd()),
                                             start_new_session=True)
            atexit.register(self.stop)
            if self._wait_ready(timeout):
                return self
            self.stop()
        raise RuntimeError(f"{self.name} did not start; see {log}:\n{log_tail(log)}")

    def _wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False  # exited, e.g. the port was taken after all
            # only talk to the port once OUR process holds it (a neighbour that won a
            # port race makes the server exit, which the poll above sees)
            if pid_listens(self.proc.pid, self.port) is not False:
                try:
                    if self._answers():
                        return self.proc.poll() is None
                except Exception:  # noqa: BLE001 - not serving yet
                    pass
            time.sleep(0.1)
        return False

    def detach(self) -> None:
        """Leave the server running after this process exits (`unifs demo --keep`)."""
        atexit.unregister(self.stop)

    def stop(self, grace: Optional[float] = None) -> None:
        stop_process_group(self.proc, self.stop_grace if grace is None else grace)
        self.proc = None
        atexit.unregister(self.stop)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
