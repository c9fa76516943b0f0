"""Live-mount bookkeeping: /proc mount table, per-mount state files, mount point checks."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from unifs import pidlock
from unifs.errors import UserError

FSTYPE = "fuse.unifs"


def state_dir() -> Path:
    chosen = os.environ.get("UNIFS_RUN_DIR") or None  # empty is unset: Path("") is the cwd
    if chosen is not None and not os.path.isabs(chosen):
        # the command line and the daemon it starts (cwd /) would read it differently
        raise UserError(f"UNIFS_RUN_DIR={chosen!r} is not an absolute path")
    if chosen is not None:
        base = Path(chosen)
    elif os.geteuid() == 0:
        base = Path("/run/unifs")
    else:
        runtime = os.environ.get("XDG_RUNTIME_DIR")
        base = Path(runtime) / "unifs" if runtime else Path.home() / ".cache" / "unifs" / "run"
    try:
        existed = base.is_dir()
        base.mkdir(mode=0o700, parents=True, exist_ok=True)
        if chosen is None or not existed:
            os.chmod(base, 0o700)  # a directory unifs names or made itself
        else:
            _check_chosen_run_dir(base)
    except OSError as e:
        if not base.is_dir():
            # readers (status, cache stats) then find no mounts; `mount` reports this
            raise RunDirMissing(f"cannot create the run directory {base} ({e.strerror}); set UNIFS_RUN_DIR "
                                "or XDG_RUNTIME_DIR to a writable directory") from None
    return base


class RunDirMissing(UserError):
    """No run directory could be made: nothing was mounted from here either."""


def _check_chosen_run_dir(base: Path) -> None:
    """UNIFS_RUN_DIR names an existing directory: made private if it is the user's own and
    holds nothing but unifs' files (`mkdir` and systemd's RuntimeDirectory= make it 0755);
    refused otherwise, never tightened: UNIFS_RUN_DIR=/tmp (or /run, or .) made the host's
    directory 0700."""
    st = os.stat(base)
    mode = stat.S_IMODE(st.st_mode)
    if st.st_uid != os.geteuid():
        raise UserError(f"UNIFS_RUN_DIR {base} belongs to uid {st.st_uid}; unifs keeps its state files "
                        "there: name a directory of its own (it is created with mode 700)")
    if not mode & 0o077:
        return
    foreign = [n for n in os.listdir(base) if not n.startswith("mount-")]
    if mode & 0o022 or st.st_mode & stat.S_ISVTX or foreign:
        raise UserError(f"UNIFS_RUN_DIR {base} is shared (mode {mode:o}"
                        + (f", holds {foreign[0]!r}" if foreign else "") + "); unifs keeps its state files "
                        "there: name a directory of its own (it is created with mode 700)")
    os.chmod(base, 0o700)


def _unescape(field: str) -> str:
    # /proc/self/mountinfo escapes space, tab, newline and backslash as octal
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 3 < len(field) + 0 and field[i + 1:i + 4].isdigit():
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


@dataclass
class LiveMount:
    mountpoint: str
    fstype: str
    source: str
    device: str = ""  # "major:minor", which also names a FUSE mount's /sys/class/bdi entry


def mounted() -> list[LiveMount]:
    out = []
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return out
    for line in lines:
        left, _, right = line.partition(" - ")
        lf, rf = left.split(), right.split()
        if len(lf) < 5 or len(rf) < 2:
            continue
        out.append(LiveMount(_unescape(lf[4]), rf[0], _unescape(rf[1]), lf[2]))
    return out


def find_mount(mountpoint: str) -> Optional[LiveMount]:
    found = None
    for m in mounted():
        if m.mountpoint == mountpoint:
            found = m  # the last one is the top of the stack
    return found


def normalise_mountpoint(path: str) -> str:
    """Absolute path without resolving through the mount itself (it may be stale or hung:
    even an lstat of a mount point asks its daemon)."""
    if not path.strip():
        raise UserError("the mount point is an empty name; give a directory")
    p = os.path.abspath(os.path.expanduser(path))
    parent, name = os.path.split(p)
    try:
        listed = os.path.join(os.path.realpath(parent), name)
        if any(m.mountpoint == listed for m in mounted()):
            return listed
        if os.path.islink(p):
            return os.path.realpath(p)  # mounts are listed under the real path
        return os.path.join(os.path.realpath(parent), name)
    except OSError:
        return p


HUNG_AFTER_S = 3.0


def probe(mountpoint: str, timeout: float = HUNG_AFTER_S) -> str:
    """"live", "stale" (the daemon is gone), "busy" (its file system requests wait, on a
    stalled store, but the daemon answers on its control socket) or "hung" (no answer at
    all: stopped, deadlocked). Never blocks longer than timeout + CONTROL_PING_S."""
    state = read_state(mountpoint)
    if state and state.get("pid") and not pid_alive(state["pid"]):  # pid None: a record of files left
        return "stale"
    box: list = []

    def ask():
        try:
            # statvfs always reaches the daemon; a stat of the root may come from the kernel cache
            os.statvfs(mountpoint)
            box.append("live")
        except OSError as e:
            box.append("stale" if e.errno in (errno.ENOTCONN, errno.ECONNABORTED) else "live")
    # a daemon thread: a call stuck on a hung daemon must not keep this process alive
    t = threading.Thread(target=ask, name="unifs-probe", daemon=True)
    t.start()
    t.join(timeout)
    if box:
        return box[0]
    # every FUSE thread may be waiting out a store call's timeouts and retries: a daemon that
    # answers otherwise is working, and stopping it as hung (SIGKILL) left the files its
    # applications had closed orphaned instead of pending
    return "busy" if _control_answers(mountpoint) else "hung"


CONTROL_PING_S = 2.0


def _control_answers(mountpoint: str) -> bool:
    from unifs import control
    from unifs.errors import UserError

    try:
        control.request(str(state_file(mountpoint).with_suffix(".sock")), "ping", timeout=CONTROL_PING_S)
        return True
    except (UserError, ValueError):
        return False


def is_stale(mountpoint: str) -> bool:
    """True when the FUSE daemon behind a mount point is gone."""
    return probe(mountpoint) == "stale"


def abort_connection(live: "LiveMount") -> bool:
    """Abort a FUSE connection (fusectl): every request waiting on its daemon fails with
    ENOTCONN, so a hung mount can be unmounted. Mounts fusectl if it is not (needs root)."""
    minor = live.device.partition(":")[2]
    conns = Path("/sys/fs/fuse/connections")
    if not minor or not conns.is_dir():
        return False
    if not (conns / minor).exists():
        import subprocess
        subprocess.run(["mount", "-t", "fusectl", "none", str(conns)], capture_output=True, timeout=10)
    try:
        (conns / minor / "abort").write_text("1")
        return True
    except OSError:
        return False


def check_mountpoint(mountpoint: str, nonempty: bool = False) -> None:
    live = find_mount(mountpoint)
    if live is not None and is_stale(mountpoint):
        how = f"'unifs umount {mountpoint}'" if live.fstype == FSTYPE else f"'fusermount -uz {mountpoint}'"
        raise UserError(f"mount point {mountpoint} has a stale mount ({live.fstype}) from a dead daemon; "
                        f"run {how} first")
    if live is not None:
        how = f"'unifs umount {mountpoint}'" if live.fstype == FSTYPE else f"'umount {mountpoint}'"
        raise UserError(f"mount point {mountpoint} is already mounted ({live.fstype}); unmount it first "
                        f"with {how}, or choose another directory")
    if not os.path.lexists(mountpoint):
        raise UserError(f"mount point {mountpoint} does not exist (create it with: mkdir -p {mountpoint})")
    if not os.path.isdir(mountpoint):
        raise UserError(f"mount point {mountpoint} is not a directory")
    if not nonempty:
        try:
            entries = os.listdir(mountpoint)
        except PermissionError:
            raise UserError(f"mount point {mountpoint} is not readable by this user") from None
        if entries:
            raise UserError(f"mount point {mountpoint} is not empty; use an empty directory "
                            "or pass -o nonempty to mount over its contents")
    if not os.access(mountpoint, os.W_OK) and os.geteuid() != 0:
        raise UserError(f"mount point {mountpoint} is not writable by this user")


def check_dev_fuse() -> None:
    try:
        fd = os.open("/dev/fuse", os.O_RDWR)
        os.close(fd)
    except FileNotFoundError:
        raise UserError("/dev/fuse is not available: install fuse3 and libfuse2 (apt-get install fuse3 "
                        "libfuse2) or, in a container, run with --device /dev/fuse --cap-add SYS_ADMIN") from None
    except PermissionError:
        raise UserError("/dev/fuse is not accessible to this user: add the user to the 'fuse' group "
                        "or run as root") from None
    except OSError as e:
        raise UserError(f"/dev/fuse cannot be opened: {e.strerror}") from None


def state_file(mountpoint: str) -> Path:
    digest = hashlib.sha1(mountpoint.encode()).hexdigest()[:16]
    return state_dir() / f"mount-{digest}.json"


def mountpoint_dir(root: str, mountpoint: str) -> str:
    """root's subdirectory for one mount point (staging, disk cache): two daemons never
    share one, nor resume or evict each other's files."""
    digest = hashlib.sha256(os.path.realpath(mountpoint).encode()).hexdigest()[:16]
    return os.path.join(root, digest)


def log_file(mountpoint: str) -> Path:
    return state_file(mountpoint).with_suffix(".log")


class _MountingLock:
    def __init__(self, fd: int, path: Path):
        self.fd: Optional[int] = fd
        self.path = path

    def release(self) -> None:
        """Removed while held (a run dir left clean): a daemon that opened it meanwhile finds,
        once it gets the lock, that the file is no longer the one at the path, and tries again."""
        fd, self.fd = self.fd, None
        if fd is not None:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
            os.close(fd)


def lock_mounting(mountpoint: str) -> _MountingLock:
    """Held by a daemon from its checks of the mount point until it is mounted: two `unifs
    mount` of one point at once (a slow store makes the window seconds long) both passed the
    "already mounted" check and stacked two mounts sharing one state file and staging dir."""
    path = state_file(mountpoint).with_suffix(".mounting")
    for _ in range(20):
        try:
            fd = pidlock.take(path)
        except pidlock.Busy as e:
            raise UserError(f"{mountpoint} is being mounted by another unifs daemon (pid {e.holder}); wait "
                            "for it, or stop it") from None
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return _MountingLock(fd, path)
        os.close(fd)  # removed by the daemon that held it: take the new one
    raise UserError(f"{mountpoint}: could not take its mount lock {path}")


def write_state(mountpoint: str, data: dict) -> None:
    path = state_file(mountpoint)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def _load_state(path: Path) -> Optional[dict]:
    """A state file's record; None for one that is unreadable or not a record (a damaged or
    foreign file broke `unifs status` for every mount)."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) and isinstance(doc.get("mountpoint"), str) else None


def read_state(mountpoint: str) -> Optional[dict]:
    return _load_state(state_file(mountpoint))


def all_states() -> list[dict]:
    out = []
    try:
        base = state_dir()
    except RunDirMissing:
        return []  # nothing was mounted from here
    for p in sorted(base.glob("mount-*.json")):
        doc = _load_state(p)
        if doc is not None:
            out.append(doc)
    return out


def remove_state(mountpoint: str, owner: Optional[int] = None) -> None:
    """The state file and the control socket (a dead daemon leaves its socket behind; its log
    stays, to tell why it died). With `owner`, only if the state is that daemon's: a daemon
    unmounted lazily ends after the next daemon of its mount point has written its own."""
    if owner is not None and owned_by_other(mountpoint, owner):
        return
    paths = [state_file(mountpoint)]
    if owner is None:  # a daemon removes its own socket (ControlServer.stop), not a successor's
        paths.append(state_file(mountpoint).with_suffix(".sock"))
    for path in paths:
        try:
            path.unlink()
        except FileNotFoundError:
            pass


def open_elsewhere(path: str) -> bool:
    """Some other process has path open (a daemon of the same mount point that shares its log
    file name, or the `unifs mount` starting one)."""
    me = str(os.getpid())
    try:
        target = os.path.realpath(path)
        pids = [d for d in os.listdir("/proc") if d.isdigit() and d != me]
    except OSError:
        return False
    return any(target in (open_files(pid) or ()) for pid in pids)


def open_files(pid) -> Optional[list[str]]:
    """What the descriptors of process `pid` point at (/proc/PID/fd links: paths, "socket:[N]"),
    or None where /proc does not tell (gone, another user's, not Linux)."""
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return None
    out = []
    for fd in fds:
        try:
            out.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            continue  # closed meanwhile
    return out


def owned_by_other(mountpoint: str, pid: int) -> bool:
    """The mount point's state file names another daemon than `pid`."""
    other = (read_state(mountpoint) or {}).get("pid")
    return bool(other) and other != pid


def pid_alive(pid: Optional[int]) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        # a zombie counts as dead
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][:1] != "Z"
    except OSError:
        return True
