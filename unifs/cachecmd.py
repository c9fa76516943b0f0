"""`unifs cache stats`, `unifs cache clear` and `unifs warmup`: talk to live daemons."""

from __future__ import annotations

import os
import posixpath
import stat
import threading
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Callable, Optional

from unifs import control, mountinfo
from unifs.errors import UserError
from unifs.paths import under
from unifs.units import format_size


def _daemons() -> dict[str, str]:
    """mountpoint -> control socket of every live unifs mount."""
    out = {}
    for st in mountinfo.all_states():
        mp, sock = st.get("mountpoint"), st.get("control_socket")
        if mp and sock and mountinfo.pid_alive(st.get("pid")) and os.path.exists(sock):
            out[mp] = sock
    return out


STATS_TIMEOUT_S = 10.0  # a stopped daemon: say so rather than wait


def locate(path: str) -> tuple[str, str, str]:
    """(mountpoint, socket, path inside the mount) for a path at or below a live unifs mount."""
    daemons = _daemons()
    real = os.path.abspath(path)
    # realpath lstats every component, which inside a hung mount never returns: a path that
    # names a mount lexically needs none (a mount holds no symlinks)
    if not any(under(real, mp) for mp in daemons):
        real = os.path.realpath(path)
    for mp in sorted(daemons, key=len, reverse=True):
        if under(real, mp):
            return mp, daemons[mp], "/" if real == mp else "/" + os.path.relpath(real, mp)
    for live in mountinfo.mounted():
        mp = live.mountpoint
        if live.fstype == mountinfo.FSTYPE and under(real, mp) and mountinfo.probe(mp) == "stale":
            raise UserError(f"{path} is on the stale mount {mp} of a dead daemon: 'unifs mount' it again "
                            f"(or 'unifs umount {mp}')")
    raise UserError(f"{path} is not inside a live unifs mount (see 'unifs status')")


def stats(mountpoint: Optional[str] = None) -> dict[str, dict]:
    """mountpoint -> the daemon's stats, or {"error": why} for a daemon that does not answer
    (one hung daemon must not hide the others' stats)."""
    daemons = _daemons()
    if mountpoint is not None:
        mp, sock, _ = locate(mountpoint)
        daemons = {mp: sock}
    if not daemons:
        raise UserError("no live unifs mounts")
    out = {}
    for mp, sock in daemons.items():
        try:
            out[mp] = control.request(sock, "stats", timeout=STATS_TIMEOUT_S)
        except UserError as e:
            out[mp] = {"error": f"{mp}: {e}"}
    return out


def live_mountpoints() -> list[str]:
    """UserError when there is none: a script clearing the cache must not take that for done."""
    found = sorted(_daemons())
    if not found:
        raise UserError("no live unifs mounts")
    return found


def _ratio(hits: int, misses: int) -> str:
    total = hits + misses
    return f"{100.0 * hits / total:.1f}%" if total else "-"


def format_stats(mp: str, s: dict) -> list[str]:
    lines = [mp]
    cache = s.get("cache")
    if cache is None:
        lines.append("  block cache: off (every mount has cache: none)")
    for tier in ("ram", "disk"):
        t = (cache or {}).get(tier)
        if t is None:
            continue
        lines.append(f"  {tier:<4} {format_size(t['bytes'])} of {format_size(t['limit'])} in {t['blocks']} blocks; "
                     f"hit ratio {_ratio(t['hits'], t['misses'])} ({t['hits']} hits, {t['misses']} misses); "
                     f"{t['evictions']} evictions; {t['corrupt']} corrupt blocks dropped"
                     + (f"; {t['write_errors']} blocks could not be written (see the daemon's log)"
                        if t.get("write_errors") else "")
                     + (f"; {t['delete_errors']} block files could not be removed (see the daemon's log)"
                        if t.get("delete_errors") else ""))
    ra = s["readahead"]
    lines.append(f"  read-ahead {format_size(ra['used'])} in use, peak {format_size(ra['peak'])} "
                 f"of {format_size(ra['limit'])}")
    served = (cache or {}).get("mounts", {})
    for m in sorted(set(served) | set(s["store_reads"])):
        io = s["store_reads"].get(m, {"gets": 0, "bytes": 0})
        c = served.get(m, {})
        lines.append(f"  {m:<20} from store {format_size(io['bytes'])} in {io['gets']} GETs; "
                     f"from cache {format_size(c.get('bytes_from_cache', 0))}")
    if s.get("staged_files"):
        lines.append(f"  {s['staged_files']} file(s) staged for upload (see 'unifs status')")
    return lines


def clear(path: str) -> str:
    mp, sock, inner = locate(path)
    # a hung daemon would hang the lexists below, and the request for its full timeout
    if mountinfo.probe(mp) == "hung":
        raise UserError(f"the daemon of {mp} does not answer; see 'unifs status'")
    # a path the mount says does not exist may be a stale "not found" the user wants dropped
    # (an object put into the store since): fine while its directory exists
    if inner != "/" and not os.path.lexists(path) and not os.path.isdir(os.path.dirname(os.path.abspath(path))):
        raise UserError(f"{path}: no such file or directory")
    control.request(sock, "clear", path=inner or "/")
    where = mp + (inner if inner != "/" else "")
    return f"cleared cached blocks and metadata of {path}" + (f" ({where})" if where != path else "")


def _warn_of_room(mp: str, sock: str, sizes: dict, warn: Callable[[str], None]) -> None:
    """sizes: path inside the mount -> bytes. Warn of files under mp that will not stay warm:
    their mount has no block cache, or they outgrow the tier they land in (its bound now: a
    full disk may have lowered it)."""
    try:
        st = control.request(sock, "stats", timeout=STATS_TIMEOUT_S)
    except UserError:
        return
    cache = st.get("cache")
    if cache is None:
        warn(f"{mp} runs with the block cache off (cache: none): nothing stays warm")
        return
    modes = st.get("cache_modes") or {}
    by_len = sorted(modes, key=len, reverse=True)
    uncached: dict[str, int] = {}
    per_tier = {"ram": 0, "disk": 0}
    for inner, size in sizes.items():
        mount = next((m for m in by_len if under(inner, m)), None)
        mode = modes.get(mount)
        if mode == "none":
            uncached[mount] = uncached.get(mount, 0) + 1
        elif mode is not None:
            per_tier["ram" if mode == "ram" else "disk"] += size
    for mount, n in sorted(uncached.items()):
        warn(f"{mp}{mount} has cache: none: its {n} file(s) are read, but do not stay warm")
    for tier, total in per_tier.items():
        limit = (cache.get(tier) or {}).get("limit")
        if total and limit is not None and total > limit:
            warn(f"{format_size(total)} to warm, but the {tier} tier of {mp} holds {format_size(limit)}: "
                 f"the first files are evicted again (raise cache.{tier})")


def warmup(paths: list[str], threads: int = 16, progress: bool = True,
           warn: Callable[[str], None] = lambda w: None) -> tuple[int, int]:
    """Read every file under paths through the mount, so the daemon caches their blocks
    (RAM and disk tier). Returns (files, bytes); `warn` hears of a cache too small before the
    reads start, while the user can still stop them. A directory that cannot be listed or
    a file that cannot be read is an error at the end (after warming the rest): a warmup that
    silently skipped a directory would leave the cold reads for training."""
    from tqdm import tqdm

    files: list[str] = []
    errors: list[str] = []
    daemons: dict[str, str] = {}
    where: dict[str, tuple[str, str]] = {}  # file -> (mountpoint, path inside the mount)

    def failed(e: OSError) -> None:
        errors.append(f"{e.filename}: {e.strerror}")
    for p in paths:
        mp, sock, inner = locate(p)  # a clear error for a path outside any unifs mount
        if mp not in daemons and mountinfo.probe(mp) == "hung":  # its reads would never return
            raise UserError(f"the daemon of {mp} does not answer; see 'unifs status'")
        daemons[mp] = sock
        try:
            st = os.stat(p)
        except FileNotFoundError:
            raise UserError(f"{p}: no such file or directory") from None
        except OSError as e:
            raise UserError(f"{p}: {e.strerror}") from None
        if stat.S_ISDIR(st.st_mode):
            for d, _, names in os.walk(p, onerror=failed):
                for n in names:
                    f = os.path.join(d, n)
                    files.append(f)
                    where[f] = (mp, posixpath.join(inner, os.path.relpath(f, p)))
        else:
            files.append(p)
            where[p] = (mp, inner)
    sizes = {}
    for f in files:
        try:
            sizes[f] = os.stat(f).st_size
        except OSError as e:
            failed(e)
    total = sum(sizes.values())
    for mp, sock in daemons.items():
        _warn_of_room(mp, sock, {where[f][1]: n for f, n in sizes.items() if where[f][0] == mp}, warn)
    # binary units, as in the summary line ("iB" after tqdm's M, G: MiB, GiB)
    bar = tqdm(total=total, unit="iB", unit_scale=True, unit_divisor=1024, desc=f"warming {len(sizes)} files",
               disable=not progress)
    stop = threading.Event()

    def read(f):
        if stop.is_set():
            return
        fd = os.open(f, os.O_RDONLY)
        try:
            # pages the kernel still holds would answer the reads, and the daemon never see them
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            while not stop.is_set():
                chunk = os.read(fd, 1 << 20)
                if not chunk:
                    break
                bar.update(len(chunk))
            # the daemon's cache has it now; do not crowd out the page cache too
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    pool = ThreadPoolExecutor(threads)
    try:
        futures = {pool.submit(read, f): f for f in sizes}
        for fut in as_completed(futures):
            e = fut.exception()
            if isinstance(e, OSError):
                errors.append(f"{futures[fut]}: {e.strerror}")
            elif e is not None:
                errors.append(f"{futures[fut]}: {e}")
    finally:
        # Ctrl-C: the queued files are dropped and the running reads end after their chunk
        # (leaving the pool's `with` waited for every queued file: a minute and more)
        stop.set()
        pool.shutdown(wait=True, cancel_futures=True)
        bar.close()
    if errors:
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise UserError(f"{errors[0]}{more}: could not be listed or read; the rest was warmed")
    return len(sizes), total
