"""`unifs demo`: a local S3 server, a sample image dataset, a mount, and every file read through it."""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml
from tqdm import tqdm

from unifs.config import parse_table, redact
from unifs.errors import UserError

BUCKET = "datasets"
PREFIX = "imagenet-sample"
MOUNT_PATH = "/imagenet"
CLASSES = 10
READ_THREADS = 8
UPLOAD_BATCH = 64  # bounds memory: images are generated and uploaded a batch at a time
_SHIFT = [bytes((i + s) & 255 for i in range(256)) for s in range(256)]  # translate() tables: +s mod 256

MOUNT_TABLE = """\
# The unifs demo mount table. No credentials in this file: each ${{VAR}} is
# resolved from the environment of `unifs mount`.
mounts:
  - path: {path}
    url: s3://{bucket}/{prefix}
    read_only: true
    options:
      endpoint_url: {endpoint}
      key: ${{DEMO_S3_KEY}}
      secret: ${{DEMO_S3_SECRET}}
  - path: /checkpoints
    url: s3://{bucket}/checkpoints
    options:
      endpoint_url: {endpoint}
      key: ${{DEMO_S3_KEY}}
      secret: ${{DEMO_S3_SECRET}}
# the demo keeps its block cache and upload staging in its own work directory
cache:
  dir: {work}/cache
write:
  staging_dir: {work}/staging
"""


def _png(width: int, height: int, rng: random.Random) -> bytes:
    """An RGB PNG: a gradient with per-image colours and low-bit noise."""
    r0, g0, b0, step = rng.randrange(256), rng.randrange(256), rng.randrange(256), rng.randrange(1, 4)
    base = bytes(v for x in range(width) for v in ((r0 + x) & 255, (g0 + 2 * x) & 255, (b0 - x) & 255))
    mask = int.from_bytes(b"\x1f" * len(base), "big")
    rows = []
    for y in range(height):
        row = int.from_bytes(base.translate(_SHIFT[(y * step) & 255]), "big")
        row ^= int.from_bytes(rng.randbytes(len(base)), "big") & mask
        rows.append(b"\x00" + row.to_bytes(len(base), "big"))  # filter type 0 (None)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    # level 0: file sizes stay close to the raw pixel size, so MiB/s measures a realistic payload
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"".join(rows), 0)) + chunk(b"IEND", b""))


def _generate(n: int, seed: int = 0):
    """Yield (relative path, bytes): n images under train/class_XX/, then labels.csv."""
    rng = random.Random(seed)
    labels = ["path,label"]
    for i in range(n):
        cls = i % CLASSES
        name = f"train/class_{cls:02d}/img_{i:05d}.png"
        labels.append(f"{name},{cls}")
        yield name, _png(rng.randrange(80, 257), rng.randrange(80, 257), rng)
    yield "labels.csv", ("\n".join(labels) + "\n").encode()


@contextlib.contextmanager
def _step(what: str):
    """Turn an unexpected failure into one line naming the step (UNIFS_DEBUG=1 keeps the traceback)."""
    try:
        yield
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001
        if os.environ.get("UNIFS_DEBUG"):
            raise
        first = str(e).splitlines()[0] if str(e) else ""
        raise UserError(f"demo: {what} failed: {type(e).__name__}: {first}") from None


def _unifs(*args: str, env=None) -> subprocess.Popen:
    # a new session: Ctrl-C must not kill `unifs mount` halfway, leaving a daemon that mounts after cleanup
    return subprocess.Popen([sys.executable, "-m", "unifs", *args], env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def _failure(proc: subprocess.Popen) -> str:
    """Wait for a `unifs` subprocess: '' if it succeeded, else its last message line."""
    out, err = proc.communicate()
    if proc.returncode == 0:
        return ""
    lines = [ln for ln in (err + out).splitlines() if ln.strip()]
    return lines[-1].removeprefix("unifs: error: ").strip() if lines else f"exit status {proc.returncode}"


def _hash_file(path: str) -> tuple[str, int, str]:
    h, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
    return path, size, h.hexdigest()


def _read_all(root: str, expected: dict[str, str]) -> tuple[int, int, float, list[str]]:
    """Walk and read everything under root; return files, bytes, seconds and problems."""
    t0 = time.monotonic()
    problems, nbytes, seen = [], 0, set()
    walk = os.walk(root, onerror=lambda e: problems.append(f"cannot list {e.filename}: {e.strerror}"))
    paths = [os.path.join(d, f) for d, _, files in walk for f in files]
    with ThreadPoolExecutor(READ_THREADS) as pool, \
            tqdm(total=len(paths), unit="file", desc="reading through the mount") as bar:
        futures = [pool.submit(_hash_file, p) for p in paths]
        try:
            for fut in futures:
                try:
                    path, size, digest = fut.result()
                except OSError as e:
                    problems.append(f"cannot read {e.filename}: {e.strerror}")
                else:
                    rel = os.path.relpath(path, root)
                    seen.add(rel)
                    nbytes += size
                    if expected.get(rel) != digest:
                        problems.append(f"{rel}: " + ("sha256 mismatch" if rel in expected else "unexpected file"))
                bar.update()
        except BaseException:
            for fut in futures:  # on Ctrl-C finish only the reads in flight, then unmount
                fut.cancel()
            raise
    problems += [f"{rel}: missing from the mount" for rel in sorted(set(expected) - seen)]
    return len(paths), nbytes, time.monotonic() - t0, problems


def _explain(table_text: str, env: dict, cfg: Path, mp: str, root: str, server) -> None:
    table = parse_table(table_text, str(cfg), env=env)
    shown = [{"path": m.path, "url": m.url, "read_only": m.read_only, "options": redact(m.options)}
             for m in table.mounts]
    classes = sorted(os.listdir(os.path.join(root, "train")))
    images = sorted(os.listdir(os.path.join(root, "train", classes[0])))
    print("\nWhat just happened")
    print(f"  1. A local S3 server (SeaweedFS, pid {server.proc.pid}) started at {server.endpoint}.")
    print(f"  2. The sample images were uploaded to s3://{BUCKET}/{PREFIX}/.")
    print(f"  3. `unifs mount {mp} --config {cfg}`")
    print("     mounted this table. Its key and secret are ${DEMO_S3_KEY} and ${DEMO_S3_SECRET} in the")
    print("     file, filled in from the environment of `unifs mount`: credentials stay out of the file.\n")
    dump = yaml.safe_dump({"mounts": shown}, sort_keys=False)
    print("\n".join("       " + ln for ln in dump.splitlines()))
    print(f"\n  4. Plain open() read every file through {root}:\n")
    print(f"       $ ls {root}\n       {'  '.join(sorted(os.listdir(root)))}")
    print(f"       $ ls {root}/train\n       {'  '.join(classes)}")
    print(f"       $ ls {root}/train/{classes[0]} | head -3")
    print("\n".join("       " + n for n in images[:3]))


def _write_checkpoint(mp: str, server) -> str:
    """Write a file through the writable mount and check the store got exactly those bytes."""
    import hashlib

    import obstore

    data = os.urandom(8 << 20)
    path = os.path.join(mp, "checkpoints", "epoch-1.pt")
    with open(path, "wb") as f:
        f.write(data)  # close() returns once the object is in the store
    stored = bytes(obstore.get(server.obstore(BUCKET), "checkpoints/epoch-1.pt").bytes())
    if hashlib.sha256(stored).digest() != hashlib.sha256(data).digest():
        raise UserError(f"demo: FAILED: {path} in the store differs from what was written")
    print(f"Wrote {path} (8 MiB) through the mount; s3://{BUCKET}/checkpoints/epoch-1.pt holds exactly "
          "those bytes (sha256)")
    return path


def run_demo(files: int = 500, keep: bool = False) -> None:
    from unifs.devstores.seaweed import SeaweedS3

    if files < 1:
        raise UserError("demo: --files must be at least 1")
    work = Path(tempfile.mkdtemp(prefix="unifs-demo-"))  # mkdtemp makes it 0700
    mp = str(work / "mnt")
    root = os.path.join(mp, MOUNT_PATH.lstrip("/"))
    server = SeaweedS3(str(work / "seaweed"))
    mounter = None
    kept = False
    try:
        print(f"unifs demo: working in {work}")
        with _step("starting the local S3 server (SeaweedFS)"):
            server.start()
            server.create_bucket(BUCKET)
        print(f"unifs demo: S3 server at {server.endpoint}, bucket '{BUCKET}'")

        expected: dict[str, str] = {}
        total = 0
        with _step("generating and uploading the sample images"), \
                tqdm(total=files + 1, unit="file", desc="generating + uploading") as bar:
            batch: dict[str, bytes] = {}
            for i, (rel, data) in enumerate(_generate(files)):
                expected[rel] = hashlib.sha256(data).hexdigest()
                total += len(data)
                batch[f"{PREFIX}/{rel}"] = data
                if len(batch) == UPLOAD_BATCH or i == files:
                    server.put_many(BUCKET, batch)
                    bar.update(len(batch))
                    batch = {}
        print(f"unifs demo: uploaded {files} PNG images + labels.csv ({total / 2**20:.1f} MiB)")

        cfg = work / "mounts.yaml"
        table_text = MOUNT_TABLE.format(path=MOUNT_PATH, bucket=BUCKET, prefix=PREFIX, endpoint=server.endpoint,
                                        work=work)
        cfg.write_text(table_text)
        os.chmod(cfg, 0o600)
        os.mkdir(mp)
        env = dict(os.environ, DEMO_S3_KEY=server.access_key, DEMO_S3_SECRET=server.secret_key)
        # the daemon's log goes in the work dir so that nothing of the demo outlives it
        mounter = _unifs("mount", mp, "--config", str(cfg), "--log-file", str(work / "unifs.log"), env=env)
        why = _failure(mounter)
        if why:
            raise UserError(f"demo: unifs mount failed: {why}")
        print(f"unifs demo: mounted {mp}")

        nfiles, nbytes, secs, problems = _read_all(root, expected)
        print(f"\nRead {nfiles} files, {nbytes / 2**20:.1f} MiB ({nbytes} bytes) in {secs:.2f} s: "
              f"{nfiles / secs:.0f} files/s, {nbytes / 2**20 / secs:.1f} MiB/s with {READ_THREADS} threads")
        if problems:
            raise UserError(f"demo: FAILED: {len(problems)} problem(s) reading back the {len(expected)} uploaded "
                            f"files; first: {problems[0]}")
        print(f"Checksums: all {nfiles} files match what was uploaded (sha256)")
        _write_checkpoint(mp, server)
        with _step("describing the mount"):
            _explain(table_text, env, cfg, mp, root, server)
        kept = keep
    finally:
        if kept:
            server.detach()  # it was stopped at exit all the same
            creds = work / "demo.env"  # the credentials, for a mount by hand; never printed
            with open(os.open(creds, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
                f.write(f"DEMO_S3_KEY={server.access_key}\nDEMO_S3_SECRET={server.secret_key}\n")
            print(f"\nLeft running (--keep). To mount it again after an unmount:\n"
                  f"  (set -a; . {creds}; unifs mount {mp} --config {work / 'mounts.yaml'})\n"
                  f"To stop:\n  unifs umount {mp}\n  kill {server.proc.pid}\n  rm -rf {work}")
        else:
            _cleanup(work, mp, server, mounter)


def _cleanup(work: Path, mp: str, server, mounter) -> None:
    from unifs.mountinfo import find_mount

    # a second Ctrl-C must not leave a live mount or a server behind; SIG_IGN is inherited by the children
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        if mounter is not None and mounter.poll() is None:
            try:
                mounter.communicate(timeout=120)
            except subprocess.TimeoutExpired:
                mounter.kill()
                mounter.communicate()
        why = ""
        if find_mount(mp) is not None:
            why = _failure(_unifs("umount", mp)) and _failure(_unifs("umount", "--lazy", mp))
            if why:
                print(f"unifs demo: could not unmount {mp}: {why}", file=sys.stderr)
        server.stop()
        if why:  # rmtree would descend into the mount
            print(f"unifs demo: left {work}; run 'unifs umount {mp}' and remove it", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    finally:
        signal.signal(signal.SIGINT, old)
