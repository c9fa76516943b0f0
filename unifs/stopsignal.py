"""A clean stop on SIGTERM, SIGINT and SIGHUP (systemctl stop, docker stop, Ctrl-C).

libfuse's own handlers end the request loop too, but fuse_main then returns an error code
(8 on libfuse 3.14), which a caller cannot tell from a broken mount: every normal stop was
reported as "mounting failed" with exit status 1. Here the signals are blocked in every thread
and taken by one thread with sigwait, which ends the loop with fuse_exit: fuse_main returns 0,
unmounts and calls destroy as before. A second signal exits at once (staged files stay for the
next mount).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from typing import Callable, Optional

log = logging.getLogger("unifs.daemon")

STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}


class SignalStop:
    def __init__(self, mountpoint: str):
        """Call before any other thread starts: threads inherit the blocked set, and a thread
        that does not block the signals would get them (and die by SIGTERM's default)."""
        self.mountpoint = mountpoint
        self.signalled: Optional[int] = None
        self._exit: Optional[Callable[[], None]] = None
        self._lock = threading.Lock()
        signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        threading.Thread(target=self._wait, name="unifs-signals", daemon=True).start()

    def bind(self, session_exit: Optional[Callable[[], None]]) -> None:
        """The running loop's exit (from FUSE's INIT); a signal that came before stops it now."""
        with self._lock:
            self._exit = session_exit
            early = self.signalled is not None
        if early:
            self._stop()

    def _wait(self) -> None:
        while True:
            sig = signal.sigwait(STOP_SIGNALS)
            with self._lock:
                again = self.signalled is not None
                self.signalled = sig
                bound = self._exit is not None
            name = signal.Signals(sig).name
            if again:
                log.warning("%s again: exiting now without unmounting cleanly", name)
                os._exit(128 + sig)
            if not bound:
                # still starting (checking the stores, which may take a timeout): nothing is
                # mounted yet, so there is nothing to clean up
                log.info("%s before %s was mounted: exiting", name, self.mountpoint)
                os._exit(128 + sig)
            log.info("%s: unmounting %s", name, self.mountpoint)
            self._stop()

    def _stop(self) -> None:
        self._exit()
        # the loop's threads wait in read() on /dev/fuse: one request wakes one to see the exit
        threading.Thread(target=_poke, args=(self.mountpoint,), name="unifs-stop", daemon=True).start()


def _poke(mountpoint: str) -> None:
    try:
        os.statvfs(mountpoint)
    except OSError:
        pass
