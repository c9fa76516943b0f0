"""Mount lifecycle: serve in the foreground, start a background daemon, unmount, status.

The background mode re-executes `unifs mount --foreground` in a new session
instead of letting libfuse fork: store clients (fsspec's event loop thread,
obstore's runtime) do not survive a fork, so the daemon builds them itself.
The parent waits on a status pipe and returns only once the mount is live.
"""

from __future__ import annotations

import json
import logging
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional

from unifs.config import STDIN, MountTable, describe_table, redact_url, scrub
from unifs.control import ControlServer
from unifs.errors import StoreError, UserError
from unifs.logs import WARNINGS, setup_logging
from unifs.paths import under
from unifs.stopsignal import SignalStop
from unifs import bdi, mountinfo
from unifs.vfs.staging import NOT_WAITED_FOR, pending_files

STDIN_LABEL = "(standard input)"  # the state file's config of a table read from a pipe

log = logging.getLogger("unifs.daemon")

READY_TIMEOUT = 300.0


# -o options unifs sets itself: a user value would break the daemon or hide the mount from
# `unifs status` and `unifs umount` (they find unifs mounts by their file system type)
_RESERVED_OPTIONS = {"foreground": "use --foreground", "raw_fi": "", "nothreads": "", "debug": "use --log-level debug",
                     "subtype": "", "fsname": "", "f": "use --foreground", "d": "use --log-level debug",
                     "s": ""}


def parse_fuse_options(opts: tuple[str, ...]) -> dict:
    out: dict = {}
    for group in opts:
        for item in group.split(","):
            item = item.strip()
            if not item:
                continue
            k, eq, v = item.partition("=")
            if k == "max_threads" and not (re.fullmatch(r"[0-9]+", v) and int(v) >= 1):
                raise UserError(f"-o max_threads={v}: needs a whole number of threads, at least 1")
            if k in _RESERVED_OPTIONS:
                hint = _RESERVED_OPTIONS[k]
                raise UserError(f"-o {k}: set by unifs itself, not a mount option{'; ' + hint if hint else ''}")
            out[k] = v if eq else True
    return out


def check_local_dirs(mountpoint: str, table: MountTable) -> None:
    """The cache and staging directories must not live inside the mount point: the mount
    would hide them from the daemon itself."""
    mp = os.path.realpath(mountpoint)
    live = [m for m in mountinfo.mounted() if m.fstype == mountinfo.FSTYPE]
    for name, d in (("cache.dir", table.cache.dir), ("write.staging_dir", table.write.staging_dir)):
        real = os.path.realpath(d)
        if under(real, mp):
            raise UserError(f"{name} {d} is inside the mount point {mountpoint}; the mount would hide it "
                            "from unifs: choose a directory outside it")
        # another unifs mount: every block or staged file would be an upload to its store
        inside = [m.mountpoint for m in live if under(real, m.mountpoint)]
        if inside:
            raise UserError(f"{name} {d} is inside the unifs mount {max(inside, key=len)}: it must be a local "
                            "directory; choose one outside every unifs mount")
    for m in table.mounts:
        if m.url.split("://", 1)[0] in ("file", "local"):
            from fsspec.implementations.local import LocalFileSystem

            root = os.path.realpath(LocalFileSystem._strip_protocol(m.url))
            # holding the mount point it would show itself inside itself without end, inside it
            # the mount hides it from the daemon: either way a lookup waited on the daemon's own
            # FUSE answer (a reader stuck in D state, unkillable)
            if under(mp, root):
                raise UserError(f"mount {m.path} ({m.url}): the directory holds the mount point {mountpoint}; "
                                "choose a directory that does not contain it")
            if under(root, mp):
                raise UserError(f"mount {m.path} ({m.url}): the directory is inside the mount point {mountpoint}; "
                                "the mount would hide it: choose a directory outside it")


def check_log_file(log_file: str) -> None:
    if os.path.isdir(log_file):
        raise UserError(f"--log-file {log_file} is a directory; give a file name")
    parent = os.path.dirname(log_file) or "."
    if not os.path.isdir(parent):
        raise UserError(f"--log-file {log_file}: directory {parent} does not exist")
    try:
        with open(log_file, "ab"):
            pass
    except OSError as e:
        raise UserError(f"--log-file {log_file}: cannot write it ({e.strerror})") from None


NEGATIVE_TIMEOUT_S = 1.0


NEAR_STORE_S = 0.010  # a round trip below this: a store on this host or next to it
NEAR_THREADS, FAR_THREADS = 10, 16


def fuse_kwargs(table: MountTable, user_opts: dict, round_trip: Optional[float] = None) -> dict:
    """round_trip: the slowest store's answer to a listing at mount (seconds), None if unknown."""
    ttl = min(m.metadata_ttl for m in table.mounts)
    kw = {
        "fsname": "unifs",
        "subtype": "unifs",
        "attr_timeout": ttl,
        "entry_timeout": ttl,
        # the daemon keeps negative lookups for the TTL itself (cheap to ask, and `unifs cache
        # clear` drops them); a kernel negative entry cannot be dropped through libfuse's
        # high-level API, so an object put in the store would stay ENOENT after a clear
        "negative_timeout": min(ttl, NEGATIVE_TIMEOUT_S),
    }
    libfuse3 = _libfuse_major() == 3
    if libfuse3:
        # libfuse 3 serves at most 10 requests at once by default (libfuse 2: no limit), so
        # reads waiting on a slow store queue (32 readers of files that take 50 ms each, stub
        # file system: 196 files/s with 10, 617 with 64). More threads cost the daemon CPU on
        # fast requests, whose callbacks all want the GIL (warm 100 KiB files, 8 readers,
        # SeaweedFS, seven alternating rounds: 9,900-16,700 files/s with 10, 7,900-10,200 with
        # 16; cold the same): a store that answers within NEAR_STORE_S keeps libfuse's 10, a
        # farther one (or one not timed) gets 16. -o max_threads=N sets it.
        near = round_trip is not None and round_trip < NEAR_STORE_S
        kw["max_threads"] = NEAR_THREADS if near else FAR_THREADS
    else:
        kw.update({"max_read": 131072, "big_writes": True, "max_write": 1 << 20,
                   "atomic_o_trunc": True})  # open(O_TRUNC) arrives as one call, not open + truncate
    if all(m.read_only for m in table.mounts):
        kw["ro"] = True  # the kernel refuses every change before it reaches the daemon
    for k, v in user_opts.items():
        if libfuse3 and k in _LIBFUSE2_ONLY:
            log.info("-o %s: not a libfuse 3 option (it behaves that way already); ignored", k)
            continue
        kw[k] = v
    if libfuse3 and "max_idle_threads" not in kw:
        # libfuse 3.14 sets its "unset" value and then logs "Ignoring invalid max threads value
        # 4294967295" at every mount; as many idle threads as threads is what unset means
        kw["max_idle_threads"] = kw.get("max_threads", 10)
    if kw.get("allow_other"):
        # without it the kernel checks no permissions at all: every local user could delete and
        # overwrite objects with the daemon's credentials. With it, the modes unifs shows
        # (0644 files, 0755 directories, owned by the daemon's user or -o uid/gid) hold.
        kw["default_permissions"] = True
    return kw


# libfuse 2 options that libfuse 3 refuses as unknown, because it always behaves that way
_LIBFUSE2_ONLY = {"nonempty", "big_writes", "max_read", "atomic_o_trunc", "large_read", "max_write"}


def select_libfuse() -> None:
    """libfuse 3 where installed, before mfusepy is first imported (it binds the library then).
    It answers readdirplus (an `ls -l` of 20,000 objects in a third of the time), takes 1 MiB
    writes and reads, and mounting over a non-empty directory needs no option. FUSE_LIBRARY_PATH
    or FUSE_LIBRARY_NAME, when set, choose instead (FUSE_LIBRARY_NAME=fuse for libfuse 2)."""
    import ctypes.util

    if "mfusepy" in sys.modules or os.environ.get("FUSE_LIBRARY_PATH") or os.environ.get("FUSE_LIBRARY_NAME"):
        return
    if ctypes.util.find_library("fuse3"):
        os.environ["FUSE_LIBRARY_NAME"] = "fuse3"


def _libfuse_major() -> int:
    select_libfuse()
    import mfusepy

    return mfusepy.fuse_version_major


def _service_account_problem(info: dict) -> str:
    """What google-auth says of a service account key (a field it misses, a key it cannot
    read), in one line."""
    try:
        from google.oauth2 import service_account

        service_account.Credentials.from_service_account_info(info)
    except Exception as e:  # noqa: BLE001 - only for the message
        text = " ".join(str(e).split()) or type(e).__name__
        return text[:200]
    return "it was not accepted"


def _credentials_file_problem(entry, exc: Exception) -> Optional[str]:
    """gcsfs reads a credentials file named by `token` and fails with a bare KeyError on the
    field it misses ("KeyError: 'refresh_token'")."""
    token = (entry.options or {}).get("token")
    if isinstance(token, str) and token == "cloud" and not str(exc).strip():
        return ("options.token 'cloud' takes credentials from the Google Compute Engine metadata "
                "server, which did not give any (not on Google Cloud?)")
    if isinstance(exc, (KeyError, ValueError)) and isinstance(token, str) and os.path.isfile(token):
        missing = f" (it has no {exc.args[0]!r})" if isinstance(exc, KeyError) and exc.args else ""
        try:
            with open(token, encoding="utf-8") as f:
                info = json.load(f)
            if isinstance(info, dict) and info.get("type") == "service_account":
                lacks = [k for k in ("private_key", "client_email") if not info.get(k)]
                # both there: gcsfs could not use the key and went on to read it as a user's file
                missing = f" (a service account key without {' and '.join(map(repr, lacks))})" if lacks \
                    else f" (a service account key google-auth refuses: {_service_account_problem(info)})"
        except (OSError, ValueError):
            pass
        return (f"options.token names a file that holds no usable credentials{missing}: give a "
                "service account key file or an authorized-user file from gcloud")
    return None


def _open_mounts(table: MountTable):
    from unifs.namespace import Mount
    from unifs.stores import open_store

    mounts = []
    for entry in table.mounts:
        try:
            store = open_store(entry, table.store)
        except UserError:
            raise
        except Exception as e:  # noqa: BLE001 - backend constructors raise anything
            first = str(e).splitlines()[0] if str(e) else ""
            raise UserError(f"mount {entry.path} ({redact_url(entry.url)}): "
                            + (_option_problem(entry.url, first) or _credentials_file_problem(entry, e) or
                               f"cannot create the store client: {type(e).__name__}"
                               + (f": {first}" if first else " (the client gave no reason)"))) from None
        mounts.append(Mount(entry, store))

    def _check(m):
        try:
            m.store.check()
            started = time.monotonic()  # again, timed: the first call also sets up the client
            m.store.check()
            return time.monotonic() - started
        except StoreError as e:
            reason = _option_problem(m.entry.url, e.strerror) or e.strerror
            if e.errno == 13:
                reason = f"credentials refused by the store ({e.strerror})"
            raise UserError(f"mount {m.path} ({redact_url(m.entry.url)}): {reason}") from None

    with ThreadPoolExecutor(max(1, min(8, len(mounts)))) as pool:
        round_trip = max(f.result() for f in [pool.submit(_check, m) for m in mounts])
    return mounts, round_trip


def _option_problem(url: str, message: str) -> Optional[str]:
    """A client's TypeError for an option it does not take, said in terms of the mount table."""
    from unifs.config import unknown_option_hint

    m = re.search(r"unexpected keyword argument '(\w+)'", message or "")
    return unknown_option_hint(url.split("://", 1)[0].lower(), m.group(1)) if m else None


def _tune_malloc() -> None:
    """Two glibc arenas instead of 8 per core, so fetch threads do not each keep their own
    heap of freed blocks; and a fixed 2 MiB mmap threshold, so a block of 2 MiB or more (the
    default block is 4 MiB) is mapped on its own and returned to the system when the RAM tier
    drops it, instead of leaving a hole in a heap shared with small files' blocks.

    Measured with benchmarks/rss_bench.py (256 MiB RAM tier, 1 GiB + 2,000 x 100 KiB, 8 readers)
    and alternating cold reads of 1 GiB: peak RSS 427-438 MiB against 462-491 with the dynamic
    threshold, at the same throughput (680-767 vs 686-736 MiB/s) and daemon CPU. A 64 KiB
    threshold peaked at 370 MiB but mapped every receive buffer afresh: cold 1 GiB reads fell to
    558-625 MiB/s at 1.6-1.9 daemon CPU-s (vs 1.1-1.2), small files 10% slower."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(-8, 2)  # M_ARENA_MAX
        libc.mallopt(-3, 2 << 20)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass  # not glibc


def serve(mountpoint: str, table: MountTable, config_path: Path, user_opts: dict,
          status_fd: Optional[int] = None, log_path: Optional[str] = None) -> None:
    """Mount and serve until unmounted (blocks). Raises UserError before mounting."""
    stopper = SignalStop(mountpoint)  # first: blocks the stop signals for every later thread
    select_libfuse()
    from unifs.fuse_ops import FuseOps, UnifsFUSE, session_exit
    from unifs.namespace import Namespace
    from unifs.vfs import FileSystem

    starting = mountinfo.lock_mounting(mountpoint)  # until mounted: two mounts at once would stack
    try:
        mountinfo.check_mountpoint(mountpoint, nonempty=bool(user_opts.get("nonempty")))
        mountinfo.check_dev_fuse()
        _tune_malloc()
        mounts, round_trip = _open_mounts(table)
        staging = mountinfo.mountpoint_dir(table.write.staging_dir, mountpoint)
        _check_earlier_staging(mountpoint, staging)
        cache = open_cache(table, mountpoint)
        fs = FileSystem(Namespace(mounts), table.read, table.write, staging, cache, table.cache.mode)
        control_path = str(mountinfo.state_file(mountpoint).with_suffix(".sock"))
        control = ControlServer(control_path, {
            "stats": lambda req: fs.stats(),
            "ping": lambda req: {"pid": os.getpid()},
            "clear": lambda req: {"mounts": fs.clear_cache(req.get("path") or "/")},
        }).start()
        metrics_server = None
        if table.metrics.listen:
            from unifs import metrics

            try:
                metrics_server = metrics.serve(table.metrics.listen, fs.stats)
            except BaseException:
                control.stop()
                raise
            log.info("metrics at %s", metrics.url(table.metrics.listen))
    except BaseException:
        starting.release()  # a failed mount (store refused, bad directory) leaves no lock file
        raise

    def ready():
        mountinfo.write_state(mountpoint, {
            "mountpoint": mountpoint, "pid": os.getpid(), "config": STDIN_LABEL if str(config_path) == STDIN else os.path.abspath(str(config_path)),
            "log_file": log_path, "started": time.time(), "staging_dir": staging,
            "control_socket": control_path, "cache_dir": cache.disk.directory if cache and cache.disk else None,
            "mounts": describe_table(table)["mounts"],
        })
        log.info("mounted %s with %d store mount(s)", mountpoint, len(mounts))
        starting.release()
        sd_notify("READY=1")  # Type=notify: units ordered after this one start once it serves
        # runs inside FUSE's INIT, whose reply lowers the kernel's read-ahead to what libfuse
        # offers (128 KiB): raise it once the reply is in, which a statfs waits for
        threading.Thread(target=after_init, name="unifs-after-init", daemon=True).start()

    def after_init():
        if table.read.kernel_read_ahead:
            try:
                os.statvfs(mountpoint)
            except OSError:
                pass
            bdi.set_read_ahead(mountpoint, table.read.kernel_read_ahead)
        if status_fd is not None:
            try:
                os.write(status_fd, b"ready\n")
                os.close(status_fd)
            except OSError:
                pass

    kwargs = fuse_kwargs(table, user_opts, round_trip)
    log.info("slowest store answered in %.1f ms; FUSE threads: %s", 1e3 * round_trip,
             kwargs.get("max_threads", "libfuse's default"))
    try:
        UnifsFUSE(FuseOps(fs, ready, on_init=lambda: stopper.bind(session_exit())), mountpoint,
                  raw_fi=True, foreground=True, nothreads=False, **kwargs)
    except RuntimeError as e:
        if stopper.signalled is not None:
            log.info("stopped by %s", signal.Signals(stopper.signalled).name)
            return
        raise UserError(f"mounting {mountpoint} failed (libfuse error {e}); see the log for libfuse's reason") \
            from None
    finally:
        starting.release()
        sd_notify("STOPPING=1")
        control.stop()
        if metrics_server is not None:
            metrics_server.shutdown()
        retire_state(mountpoint, owner=os.getpid())
    log.info("unmounted %s", mountpoint)


def sd_notify(message: str) -> None:
    """Tell systemd (a Type=notify unit's NOTIFY_SOCKET) how the daemon is doing."""
    import socket

    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return
    if addr.startswith("@"):
        addr = "\0" + addr[1:]  # an abstract socket
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.connect(addr)
            s.sendall(message.encode())
    except OSError as e:
        log.warning("cannot notify systemd at %s: %s", os.environ.get("NOTIFY_SOCKET"), e.strerror)


def open_cache(table: MountTable, mountpoint: str):
    """The block cache for this mount point, or None when every mount has cache: none."""
    from unifs.cache import BlockCache

    c = table.cache
    modes = {m.cache or c.mode for m in table.mounts}
    if modes == {"none"}:
        return None
    needs_disk = bool(modes & {"disk", "tiered"}) and c.disk > 0
    directory = mountinfo.mountpoint_dir(c.dir, mountpoint) if needs_disk else None
    mode = c.mode if needs_disk or c.mode in ("none", "ram") else "ram"
    if directory is not None and os.path.exists(c.dir) and not os.path.isdir(c.dir):
        raise UserError(f"cache.dir {c.dir} is not a directory")
    try:
        # a root it creates is private too (private_directory, once the path is checked)
        return BlockCache(c.block_size, c.ram, c.disk if needs_disk else 0, directory, mode)
    except OSError as e:
        raise UserError(f"cache.dir {c.dir}: cannot use {directory}: {e.strerror}") from None


def start_background(mountpoint: str, config_path: Path, opts: tuple[str, ...], log_level: str,
                     log_file: Optional[str], config_text: Optional[str] = None) -> str:
    """Start the daemon; return its log path once the mount is live, or raise UserError.
    config_text: the table, handed over on the daemon's standard input instead of its file."""
    log_path = log_file or str(mountinfo.log_file(mountpoint))
    r, w = os.pipe()
    cmd = [sys.executable, "-m", "unifs", "mount", mountpoint, "--foreground",
           "--config", STDIN if config_text is not None else str(config_path.resolve()),
           "--log-level", log_level, "--log-file", log_path, "--status-fd", str(w)]
    for o in opts:
        cmd += ["-o", o]
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    log_start = Path(log_path).stat().st_size if Path(log_path).exists() else 0
    # libfuse reports its own failures on stderr: keep them in the daemon's log
    with open(os.devnull, "rb") as devnull, open(log_path, "ab") as logf:
        os.chmod(log_path, 0o600)
        env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}  # the unit's main process is this one
        proc = subprocess.Popen(cmd, stdin=devnull if config_text is None else subprocess.PIPE,
                                stdout=logf, stderr=logf, pass_fds=(w,), start_new_session=True, cwd="/",
                                env=env)
    os.close(w)
    if config_text is not None:
        try:
            proc.stdin.write(config_text.encode())
        except OSError:
            pass  # it died at once: its status says why
        finally:
            try:
                proc.stdin.close()
            except OSError:
                pass
    deadline = time.monotonic() + READY_TIMEOUT
    msg = b""

    def stop_starting(signum, frame):
        # `unifs mount` stopped while its daemon starts (Ctrl-C, a service manager's SIGTERM):
        # the daemon must not go on to mount with nobody told (stopped below, once)
        raise KeyboardInterrupt
    previous = signal.signal(signal.SIGTERM, stop_starting)
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([r], [], [], 0.5)
            if ready:
                chunk = os.read(r, 4096)
                msg += chunk
                if not chunk or msg.endswith(b"\n"):
                    break
            if proc.poll() is not None and not ready:
                break
    except KeyboardInterrupt:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # Ctrl-C reaches only this process: its own session
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
        raise
    finally:
        os.close(r)
        signal.signal(signal.SIGTERM, previous)
    if msg.startswith(b"ready"):
        return log_path
    if time.monotonic() < deadline and proc.poll() is None:
        try:  # the status pipe closed: the daemon is on its way out
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
    if msg.startswith(b"error:"):
        text = msg[len(b"error:"):].decode(errors="replace").strip()
        _reap(proc, log_path, log_start)
        if "libfuse error" in text:
            reason = _libfuse_reason(log_path, log_start)
            text = f"mounting {mountpoint} failed: {reason}" if reason else f"{text} ({log_path})"
        raise UserError(text)
    if proc.poll() is None:
        proc.kill()
        _reap(proc, log_path, log_start)
        raise UserError(f"the unifs daemon did not mount {mountpoint} within {READY_TIMEOUT:.0f} s; "
                        f"see {log_path}")
    err = _reap(proc, log_path, log_start)
    raise UserError(f"the unifs daemon exited before mounting {mountpoint}: "
                    f"{err or 'no message'} (log: {log_path})")


def _libfuse_reason(log_path: str, log_start: int) -> str:
    """libfuse's own complaint ('fuse: unknown option ...') from the daemon's log."""
    try:
        with open(log_path, "rb") as f:
            f.seek(log_start)
            lines = f.read().decode(errors="replace").splitlines()
    except OSError:
        return ""
    found = [ln.strip() for ln in lines if ln.startswith("fuse:")]
    return found[-1] if found else ""


def _reap(proc, log_path: str, log_start: int) -> str:
    """Wait for a failed daemon; return the last line it logged."""
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    try:
        with open(log_path, "rb") as f:
            f.seek(log_start)
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.startswith("Traceback")]
    return lines[-1].strip() if lines else ""


def _fusermount() -> list[str]:
    for name in ("fusermount", "fusermount3"):
        path = shutil.which(name)
        if path:
            return [path, "-u"]
    return ["umount"]


def wait_for_uploads(staging: str, progress: bool = True, poll: float = 0.5) -> None:
    """Block until the daemon has uploaded every pending file (it retries with backoff)."""
    from tqdm import tqdm

    def count():
        return [d for d in pending_files(staging) if d.get("state") not in NOT_WAITED_FOR]

    left = count()
    if not left:
        return
    if not progress:  # no terminal for a bar: still say why this waits
        print(f"unifs: waiting for {len(left)} pending upload(s) to {left[0].get('url', '?')}"
              + (f" (last error: {left[0]['error']})" if left[0].get("error") else "")
              + "; Ctrl-C stops waiting, --force unmounts without them", flush=True)
    else:
        print("unifs: waiting for pending uploads (Ctrl-C stops waiting; 'unifs umount --force' unmounts "
              f"without them, keeping them in {staging})", file=sys.stderr, flush=True)
    total_bytes = sum(int(d.get("size") or 0) for d in left)
    bar = tqdm(total=total_bytes, unit="B", unit_scale=True, disable=not progress,
               desc=f"waiting for {len(left)} pending upload(s)")
    try:
        while left:
            last = left[0]
            if last.get("error"):
                bar.set_postfix_str(f"last error: {last['error'][:60]}", refresh=False)
            time.sleep(poll)
            left = count()
            bar.n = total_bytes - sum(int(d.get("size") or 0) for d in left)
            bar.refresh()
    finally:
        bar.close()


def clean_stale_mount(mountpoint: str) -> Optional[str]:
    """A unifs mount whose daemon died (a crash, an OOM kill) serves nothing but ENOTCONN:
    unmount it as `unifs umount` would, so that a restart (of a container, of a unit) mounts
    again instead of failing on it every time. Its files not in the store stay in the staging
    directory, for this mount to upload. Returns the report, or None if there was none."""
    live = mountinfo.find_mount(mountpoint)
    if live is None or live.fstype != mountinfo.FSTYPE or mountinfo.probe(mountpoint) != "stale":
        return None
    return unmount(mountpoint)


def unmount(mountpoint: str, lazy: bool = False, timeout: float = 30.0, force: bool = False,
            progress: bool = True) -> str:
    """Unmount; handles a dead daemon's stale mount. Returns a one-line report.
    Waits for pending uploads first unless force (the staged files then stay put)."""
    live = mountinfo.find_mount(mountpoint)
    state = mountinfo.read_state(mountpoint)
    pid = state.get("pid") if state else None
    if live is None:
        if state is not None:
            retire_state(mountpoint)
        raise UserError(f"{mountpoint} is not mounted")
    if live.fstype != mountinfo.FSTYPE:
        raise UserError(f"{mountpoint} is mounted by {live.fstype}, not by unifs")
    health = mountinfo.probe(mountpoint)  # "stale" also when the state's daemon is gone
    stale = health == "stale"
    staging = (state or {}).get("staging_dir")
    if health == "hung" and not force and not lazy:
        raise UserError(f"the daemon of {mountpoint} (pid {pid}) does not answer; 'unifs umount --force "
                        f"{mountpoint}' aborts its FUSE connection (open files get errors), unmounts and "
                        "stops it" + (f"; files not yet uploaded stay in {staging}" if staging else ""))
    # a busy daemon's requests wait on a stalled store: they fail too, and the daemon, which
    # still runs, stops as on SIGTERM (closed files recorded pending, not orphaned)
    stops = health == "busy" and force
    if force and health in ("hung", "busy"):
        mountinfo.abort_connection(live)  # requests stuck in the daemon fail, so the unmount can go
        lazy = True
    if staging and health in ("live", "busy") and not force:
        try:
            wait_for_uploads(staging, progress)
        except KeyboardInterrupt:
            raise UserError(f"interrupted; {mountpoint} is still mounted and keeps retrying its uploads "
                            f"(use --force to unmount anyway; staged files stay in {staging})") from None
    cmd = _fusermount()
    if lazy or stale:
        cmd = cmd + ["-z"] if cmd[0] != "umount" else ["umount", "-l"]
    res = subprocess.run(cmd + [mountpoint], capture_output=True, text=True)
    if res.returncode != 0:
        why = (res.stderr or res.stdout).strip().splitlines()
        why_line = why[-1] if why else f"exit {res.returncode}"
        if "busy" in why_line.lower():
            inner = [m.mountpoint for m in mountinfo.mounted()
                     if m.mountpoint.startswith(mountpoint.rstrip("/") + "/")]
            if inner:
                raise UserError(f"{mountpoint} is busy: {inner[0]} is mounted inside it; unmount that first")
            raise UserError(f"{mountpoint} is busy (files open or a shell inside it); close them, "
                            "or use 'unifs umount --lazy' to detach now")
        raise UserError(f"unmounting {mountpoint} failed: {why_line}")
    if pid and mountinfo.pid_alive(pid) and (not (lazy and not stale) or stops):
        # (a lazy detach leaves the daemon serving the files still open; it exits after them)
        end = time.monotonic() + timeout
        while mountinfo.pid_alive(pid) and time.monotonic() < end:
            time.sleep(0.05)
        if mountinfo.pid_alive(pid):
            os.kill(pid, signal.SIGTERM)
    if health == "hung" and force and pid and mountinfo.pid_alive(pid):
        os.kill(pid, signal.SIGKILL)  # stopped or stuck: SIGTERM would not be seen
    if lazy and not stale and health != "hung" and not stops and pid and mountinfo.pid_alive(pid):
        # still serving its open files, and retires its state itself when it exits: `unifs
        # status` lists it as detached (it showed "unmounted, pid ?" while it ran on)
        mountinfo.write_state(mountpoint, {**(state or {}), "mountpoint": mountpoint, "detached": True})
    else:
        retire_state(mountpoint)
    report = f"unmounted {mountpoint}" + (" (stale mount of a dead daemon)" if stale else "") + \
        (f" (aborted the connection of its hung daemon, pid {pid}, and killed it)" if health == "hung" and force
         else f" (detached; its daemon, pid {pid}, does not answer)" if health == "hung"
         else f" (its requests waited on a store that does not answer: aborted them and stopped its daemon, "
              f"pid {pid})" if stops else "")
    # its open files will never be uploaded now
    gone = stale or (health == "hung" and force) or (stops and not mountinfo.pid_alive(pid))
    left = pending_files(staging, daemon_dead=gone) if staging else []
    if left:
        report += (f"; {len(left)} file(s) not in the store are kept in {staging} "
                   "(pending ones upload at the next mount of this mount point whose table still maps them)")
    return report


def _status_row(mp: str, st: dict, pid: Optional[int], state: str, pending: list) -> dict:
    # no state: a daemon started with another run directory (another user's, or another
    # UNIFS_RUN_DIR) keeps its pid, table and pending files there
    return {"mountpoint": mp, "pid": pid, "state": state, "config": st.get("config"),
            "log_file": st.get("log_file"), "mounts": st.get("mounts", []),
            "staging_dir": st.get("staging_dir"), "pending": pending, "other_run_dir": not st}


def status() -> list[dict]:
    states = {s.get("mountpoint"): s for s in mountinfo.all_states()}
    rows = []
    for live in mountinfo.mounted():
        if live.fstype != mountinfo.FSTYPE:
            continue
        st = states.pop(live.mountpoint, {})
        health = mountinfo.probe(live.mountpoint)
        staging = st.get("staging_dir")
        rows.append(_status_row(live.mountpoint, st, st.get("pid"), health,
                                pending_files(staging, daemon_dead=health == "stale") if staging else []))
    for mp, st in states.items():
        staging = st.get("staging_dir")
        if mountinfo.pid_alive(st.get("pid")):
            if st.get("detached"):  # by a lazy unmount: serving the files still open
                rows.append(_status_row(mp, st, st.get("pid"), "detached",
                                        pending_files(staging) if staging else []))
            continue  # else starting
        left = pending_files(staging, daemon_dead=True) if staging else []
        if not left:
            mountinfo.remove_state(mp)
            continue
        rows.append(_status_row(mp, st, None, "unmounted", left))
    return rows


def _check_earlier_staging(mountpoint: str, staging: str) -> None:
    """An earlier daemon of this mount point left files not in the store in another staging
    directory (write.staging_dir changed since): this one would neither upload nor list them,
    and its state would replace the record that names them. Refused, saying where they are."""
    earlier = (mountinfo.read_state(mountpoint) or {}).get("staging_dir")
    if not earlier or os.path.realpath(earlier) == os.path.realpath(staging):
        return
    left = pending_files(earlier, daemon_dead=True)
    if left:
        raise UserError(f"{mountpoint}: {len(left)} file(s) written through an earlier mount are not in the "
                        f"store and wait in {earlier} (write.staging_dir was {os.path.dirname(earlier)}): "
                        "mount with that staging_dir so they upload, or move them away first "
                        "(`unifs status` lists them)")


def retire_state(mountpoint: str, owner: Optional[int] = None) -> None:
    """Drop a mount's state, but keep it (without a pid) while its staging directory holds
    files not in the store: `unifs status` then still names them, and where they are, after
    the mount is gone (a crash, `umount --force`), until a new mount of it uploads them."""
    st = mountinfo.read_state(mountpoint) or {}
    if owner is not None and st.get("pid") not in (None, owner):
        return  # a later daemon of this mount point wrote its own
    staging = st.get("staging_dir")
    left = pending_files(staging, daemon_dead=True) if staging else []
    mountinfo.remove_state(mountpoint, owner)
    if left:
        mountinfo.write_state(mountpoint, {**st, "pid": None})


def run_foreground(mountpoint, table, config_path, opts, log_level, log_file, status_fd) -> None:
    setup_logging(log_level, log_file)
    try:
        serve(mountpoint, table, config_path, parse_fuse_options(opts), status_fd, log_file)
        if log_file and Path(log_file) == mountinfo.log_file(mountpoint) and not WARNINGS.count \
                and not mountinfo.owned_by_other(mountpoint, os.getpid()) \
                and not mountinfo.open_elsewhere(log_file):  # a next daemon of the mount point starting
            # a clean unmount leaves nothing behind in the run dir; a run that logged a warning
            # (a failed upload still pending, a store that refused) keeps its log
            Path(log_file).unlink(missing_ok=True)
            Path(log_file + ".1").unlink(missing_ok=True)  # the older one (unifs.logs)
    except UserError as e:
        if status_fd is not None:
            try:
                os.write(status_fd, b"error:" + scrub(str(e)).encode() + b"\n")
            except OSError:
                pass
        raise
