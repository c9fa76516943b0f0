"""Peer FUSE mounts that read_bench.py measures side by side with unifs.

One small class per peer. `start(mountpoint)` mounts (and returns self once the
mount answers), `stop()` unmounts with `fusermount -u` (`-uz` if that fails)
and ends the process it started, by PID. Both may be called again: every
start gets fresh temporary directories (config, cache), so each mount starts
cold; stop removes them. `root` is the directory holding the bucket's keys.

  rclone-full  `rclone mount` with `--vfs-cache-mode full` (on-disk file cache)
  rclone-off   `rclone mount` with `--vfs-cache-mode off`
  s3fs         s3fs-fuse without a local cache
  s3fs-cache   s3fs-fuse with `use_cache=DIR`
  passthrough  the minimal mfusepy passthrough of benchmarks/passthrough_bench.py
               over a local directory with the same files (the Python FUSE ceiling)

rclone and s3fs use their default tuning otherwise, as a user would type them.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Optional

PEERS = ("rclone-full", "rclone-off", "s3fs", "s3fs-cache", "passthrough")
MOUNT_TIMEOUT = 30.0


def is_mounted(mountpoint: str) -> bool:
    real = os.path.realpath(mountpoint)
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == real for line in f)


def proc_cpu_seconds(pid: Optional[int]) -> float:
    """User + system CPU seconds of a process so far (all threads)."""
    if not pid:
        return float("nan")
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(") ", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


def _tail(path: Path, lines: int = 10) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class S3Target:
    """Where the bucket is: an S3 endpoint on 127.0.0.1 and its credentials."""

    def __init__(self, endpoint: str, access_key: str, secret_key: str, bucket: str):
        self.endpoint, self.access_key, self.secret_key, self.bucket = endpoint, access_key, secret_key, bucket


class PeerMount:
    name = ""
    binary: Optional[str] = None

    def __init__(self, workdir: Path):
        self.workdir = Path(workdir)
        self.proc: Optional[subprocess.Popen] = None
        self.mountpoint: Optional[str] = None
        self.tmp: Optional[Path] = None

    # --- what read_bench uses
    @classmethod
    def missing(cls) -> Optional[str]:
        """Why this peer cannot run here (None: it can)."""
        if cls.binary and not shutil.which(cls.binary):
            return f"'{cls.binary}' not found on PATH"
        return None

    @property
    def root(self) -> str:
        return self.mountpoint

    @property
    def pid(self) -> Optional[int]:
        return self.proc.pid if self.proc else None

    def cpu_seconds(self) -> float:
        return proc_cpu_seconds(self.pid)

    def warm_dirs(self) -> Optional[list]:
        """Local files this peer's server reads, to put back into the page cache after a drop
        (None: the S3 server's data, like unifs)."""
        return None

    def start(self, mountpoint) -> "PeerMount":
        raise NotImplementedError

    def stop(self) -> None:
        if self.mountpoint:
            for flags in ("-u", "-uz"):
                if not is_mounted(self.mountpoint):
                    break
                subprocess.run(["fusermount", flags, self.mountpoint], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, check=False)
                time.sleep(0.1)
        if self.proc is not None:
            self._end(self.proc)
            self.proc = None
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None
        self.mountpoint = None

    def __enter__(self) -> "PeerMount":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- helpers
    @staticmethod
    def _end(proc: subprocess.Popen) -> None:
        """The server exits by itself once unmounted; otherwise SIGTERM, then SIGKILL, by PID."""
        for sig, wait in ((None, 10.0), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            if sig is not None:
                try:
                    os.kill(proc.pid, sig)
                except ProcessLookupError:
                    pass
            try:
                proc.wait(timeout=wait)
                return
            except subprocess.TimeoutExpired:
                continue

    def _fresh_tmp(self) -> Path:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f"{self.name}-", dir=self.workdir))
        return self.tmp

    def _launch(self, mountpoint, cmd: list, env: Optional[dict] = None) -> "PeerMount":
        """Start a foreground FUSE server, return once the mount is in /proc and answers."""
        self.mountpoint = os.path.realpath(mountpoint)
        os.makedirs(self.mountpoint, exist_ok=True)
        log = self.tmp / "server.log"
        try:
            with open(log, "wb") as out:
                self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                             env=env, start_new_session=True)
            deadline = time.monotonic() + MOUNT_TIMEOUT
            while not is_mounted(self.mountpoint):
                if self.proc.poll() is not None:
                    raise RuntimeError(f"{self.name}: {cmd[0]} exited with {self.proc.returncode}: {_tail(log)}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{self.name}: no mount after {MOUNT_TIMEOUT:.0f} s: {_tail(log)}")
                time.sleep(0.05)
            os.listdir(self.mountpoint)  # returns once the FUSE server answers
        except BaseException:
            self.stop()
            raise
        return self


class Rclone(PeerMount):
    """`rclone mount remote:bucket MP --vfs-cache-mode MODE [--read-only] [extra...]`, config and
    cache dir fresh per mount, AWS_CA_BUNDLE removed from its environment."""

    binary = "rclone"

    def __init__(self, workdir: Path, target: S3Target, cache_mode: str, read_only: bool = True,
                 extra: tuple = (), name: str = ""):
        self.name = name or f"rclone-{cache_mode}"
        super().__init__(workdir)
        self.target = target
        self.cache_mode = cache_mode
        self.read_only = read_only
        self.extra = list(extra)

    def start(self, mountpoint) -> "Rclone":
        tmp = self._fresh_tmp()
        conf = tmp / "rclone.conf"
        conf.write_text("[bench]\ntype = s3\nprovider = SeaweedFS\n"
                        f"access_key_id = {self.target.access_key}\n"
                        f"secret_access_key = {self.target.secret_key}\n"
                        f"endpoint = {self.target.endpoint}\nforce_path_style = true\n")
        os.chmod(conf, 0o600)
        env = dict(os.environ)
        env.pop("AWS_CA_BUNDLE", None)  # Debian's rclone 1.60 fails with LoadCustomCABundleError otherwise
        cmd = [shutil.which(self.binary), "mount", f"bench:{self.target.bucket}", os.path.realpath(mountpoint),
               "--config", str(conf), "--cache-dir", str(tmp / "cache"), "--vfs-cache-mode", self.cache_mode,
               *(["--read-only"] if self.read_only else []), *self.extra]
        return self._launch(mountpoint, cmd, env)


class S3fsFuse(PeerMount):
    """`s3fs BUCKET MP -f -o url=...,use_path_request_style,passwd_file=F,ro[,use_cache=DIR]`."""

    binary = "s3fs"

    def __init__(self, workdir: Path, target: S3Target, use_cache: bool):
        self.name = "s3fs-cache" if use_cache else "s3fs"
        super().__init__(workdir)
        self.target = target
        self.use_cache = use_cache

    def start(self, mountpoint) -> "S3fsFuse":
        tmp = self._fresh_tmp()
        pw = tmp / "passwd"
        pw.write_text(f"{self.target.access_key}:{self.target.secret_key}\n")
        os.chmod(pw, 0o600)
        opts = f"url={self.target.endpoint},use_path_request_style,passwd_file={pw},ro"
        if self.use_cache:
            (tmp / "cache").mkdir()
            opts += f",use_cache={tmp / 'cache'}"
        cmd = [shutil.which(self.binary), self.target.bucket, os.path.realpath(mountpoint), "-f", "-o", opts]
        return self._launch(mountpoint, cmd)


class Passthrough(PeerMount):
    """passthrough_bench.py's mfusepy passthrough (kernel_cache, 60 s attr/entry timeouts) over a
    local directory holding the same keys as the bucket, on the libfuse unifs mounts with
    (libfuse 3 where installed: the ceiling is the same binding and library)."""

    name = "passthrough"

    def __init__(self, workdir: Path, source: Path):
        super().__init__(workdir)
        self.source = Path(source)
        self._mount = None

    @classmethod
    def missing(cls) -> Optional[str]:
        if importlib.util.find_spec("mfusepy") is None:
            return "mfusepy is not installed"
        return None

    def warm_dirs(self):
        return [self.source]

    def start(self, mountpoint) -> "Passthrough":
        import passthrough_bench as pt  # benchmarks/ is on sys.path when read_bench.py runs

        tmp = self._fresh_tmp()
        self.mountpoint = os.path.realpath(mountpoint)
        os.makedirs(self.mountpoint, exist_ok=True)
        import ctypes.util

        libfuse3 = None if os.environ.get("FUSE_LIBRARY_NAME") == "fuse" else ctypes.util.find_library("fuse3")
        if libfuse3:  # as unifs.daemon.select_libfuse chooses; libfuse 3 takes no max_read
            variant = pt.Variant(self.name, "mfusepy", options=pt.COMMON_OPTIONS, libfuse=libfuse3)
        else:
            variant = pt.Variant(self.name, "mfusepy", options=f"{pt.COMMON_OPTIONS},max_read=131072")
        mount = pt.Mount(variant, str(self.source), self.mountpoint, str(tmp / "server.log"))
        try:
            mount.__enter__()  # cleans up after itself if the mount does not come up
        except BaseException:
            self.proc = mount.proc
            self.stop()
            raise
        self._mount, self.proc = mount, mount.proc
        if libfuse3:  # the same kernel read-ahead (so the same READ request size) as unifs mounts with
            from unifs import bdi
            from unifs.config import ReadSettings

            bdi.set_read_ahead(self.mountpoint, ReadSettings().kernel_read_ahead)
        return self

    def stop(self) -> None:
        if self._mount is not None:
            try:
                self._mount.__exit__(None, None, None)  # unmount, wait, kill by PID
            finally:
                self._mount = None
        super().stop()


def make_peers(names: list, workdir: Path, target: S3Target, local_source: Optional[Path]) -> list:
    out = []
    for name in names:
        if name == "rclone-full":
            out.append(Rclone(workdir, target, "full"))
        elif name == "rclone-off":
            out.append(Rclone(workdir, target, "off"))
        elif name == "s3fs":
            out.append(S3fsFuse(workdir, target, use_cache=False))
        elif name == "s3fs-cache":
            out.append(S3fsFuse(workdir, target, use_cache=True))
        elif name == "passthrough":
            out.append(Passthrough(workdir, local_source))
        else:
            raise ValueError(f"unknown peer {name!r} (known: {', '.join(PEERS)})")
    return out


def split_installed(names: list, say) -> tuple[list, dict]:
    """(the peers of names that can run here, {name: why not} for the others, each said)."""
    ok, skipped = [], {}
    for name in names:
        why = peer_class(name).missing()
        if why:
            skipped[name] = why
            say(f"peer {name} skipped: {why}")
        else:
            ok.append(name)
    return ok, skipped


def peer_class(name: str):
    return {"rclone-full": Rclone, "rclone-off": Rclone, "s3fs": S3fsFuse, "s3fs-cache": S3fsFuse,
            "passthrough": Passthrough}[name]
