#!/usr/bin/env python3
"""Training input images/s: a tf.data pipeline and a PyTorch DataLoader over an ImageNet-style
folder of JPEGs, read from local disk, through unifs and through other mounts of the same bucket,
side by side in one run.

The script makes the data set itself (JPEGs of ImageNet's typical size, `train/<class>/*.JPEG`,
a fixed seed), keeps one copy on local disk and uploads one to a local SeaweedFS S3 server,
then, for each source in turn, mounts it afresh, drops the page cache and runs `--epochs` (3) epochs of

    tf.data.Dataset.from_tensor_slices(files).shuffle(...)       (--order shuffled, the default)
      .map(load, num_parallel_calls=P, deterministic=False).batch(B).prefetch(AUTOTUNE)

where `load` is `tf.io.read_file` alone (mode `read`: what the file system delivers) or read +
`decode_jpeg` + resize to 224x224 (mode `decode`: a real input pipeline, bounded by JPEG
decoding on a small machine); and (`--frameworks torch`) the same as a PyTorch

    DataLoader(ImageFiles(files, mode), batch_size=B, shuffle=True, num_workers=W,
               persistent_workers=True)

whose `__getitem__` is `open(path, "rb").read()` (read) or that plus a PIL decode and resize to
224x224 (decode), as a torchvision `ImageFolder` does. Epoch 1 is cold (fresh mount, empty caches, page cache dropped;
the store server's own data files are read back into the page cache, so the store answers
from memory as a well-provisioned one would); the best of the later epochs is "warm".
`local` is the same files on local disk; its epoch 1 reads the disk after the drop. After the timed epochs, an untimed pass reads
every file through the same pipeline and compares its sha256 with the one taken at creation:
a mismatch ends the run with status 3.

    python benchmarks/tf_images/tf_images_bench.py [--images 2000] [--classes 10]
        [--frameworks tf,torch] [--modes read,decode] [--order shuffled|listing] [--batch 64]
        [--parallel 16] [--workers 8]
        [--peers rclone-full,rclone-off,s3fs,s3fs-cache|none] [--json FILE] [--keep]

Needs root (FUSE, drop_caches). Peers that are not installed are skipped and said so.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
BENCH_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(BENCH_DIR))

import yaml  # noqa: E402

from peers import S3Target, is_mounted, make_peers, split_installed  # noqa: E402
from read_bench import CacheControl, Mount, log  # noqa: E402
from unifs.devstores.seaweed import SeaweedS3  # noqa: E402

BUCKET = "imagenet"
MOUNT_PATH = "/imagenet"
S3_PEERS = ("rclone-full", "rclone-off", "s3fs", "s3fs-cache")
MODES = ("read", "decode")
FRAMEWORKS = ("tf", "torch")


class VerificationError(Exception):
    pass


# --------------------------------------------------------------------------- data set


def make_images(n: int, classes: int, seed: int) -> dict[str, bytes]:
    """n JPEGs of 300-450 x 350-500 px, about 110 KiB each (ImageNet's train set averages
    ~110 KB at ~400x350): a smooth random picture plus grain, so they compress like photos."""
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    out = {}
    for i in range(n):
        h, w = int(rng.integers(300, 450)), int(rng.integers(350, 500))
        coarse = rng.integers(0, 256, (h // 16 + 1, w // 16 + 1, 3)).astype(np.float32)
        img = tf.image.resize(coarse[None], (h, w), method="bicubic")[0].numpy()
        img += rng.normal(0, 28, img.shape)
        jpeg = tf.io.encode_jpeg(np.clip(img, 0, 255).astype(np.uint8), quality=90).numpy()
        out[f"train/n{i % classes:08d}/img_{i:06d}.JPEG"] = jpeg
    return out


# --------------------------------------------------------------------------- pipeline


def pipeline(files: list, mode: str, order: str, batch: int, parallel: int, seed: int):
    import tensorflow as tf

    def load_read(path):
        return tf.strings.length(tf.io.read_file(path))

    def load_decode(path):
        img = tf.io.decode_jpeg(tf.io.read_file(path), channels=3)
        return tf.image.resize(img, (224, 224))

    ds = tf.data.Dataset.from_tensor_slices(files)
    if order == "shuffled":
        ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    calls = parallel if parallel > 0 else tf.data.AUTOTUNE
    ds = ds.map(load_read if mode == "read" else load_decode, num_parallel_calls=calls, deterministic=False)
    ds = ds.batch(batch).prefetch(tf.data.AUTOTUNE)
    if parallel > 0:
        # a file system read blocks a thread: without its own pool, tf.data runs about as many
        # reads at once as the machine has cores
        opts = tf.data.Options()
        opts.threading.private_threadpool_size = parallel
        ds = ds.with_options(opts)
    return ds


def epoch(ds) -> tuple[float, int]:
    """(seconds, images) for one pass."""
    n = 0
    t0 = time.perf_counter()
    for b in ds:
        n += int(b.shape[0])
    return time.perf_counter() - t0, n


class ImageFiles:
    """A map-style torch Dataset over image paths, as torchvision's ImageFolder reads them: plain
    open() and read(), then (decode) PIL decode + resize. `sha` returns (path, sha256) for the
    check pass. Defined at module level so DataLoader workers can pickle it."""

    def __init__(self, files: list, mode: str):
        self.files = files
        self.mode = mode

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        with open(self.files[i], "rb") as f:
            data = f.read()
        if self.mode == "read":
            return len(data)
        if self.mode == "sha":
            return self.files[i], hashlib.sha256(data).hexdigest()
        import io

        import numpy as np
        import torch
        from PIL import Image

        img = Image.open(io.BytesIO(data)).convert("RGB").resize((224, 224), Image.BILINEAR)
        return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy())


def _as_list(batch):
    return batch


class EpochOrder:
    """The sampler: a new shuffle each epoch (or listing order), after a first epoch of nothing.
    That empty pass starts the persistent workers, so forking them (about 0.2-0.5 s for 8 here)
    is not counted as reading in the cold epoch."""

    def __init__(self, n: int, shuffle: bool, seed: int):
        import torch

        self.n, self.shuffle = n, shuffle
        self.gen = torch.Generator()
        self.gen.manual_seed(seed)
        self.started = False

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        import torch

        if not self.started:
            self.started = True
            return iter(())
        return iter(torch.randperm(self.n, generator=self.gen).tolist() if self.shuffle else range(self.n))


def torch_loader(files: list, mode: str, order: str, batch: int, workers: int, seed: int):
    """A started DataLoader (workers forked, nothing read yet)."""
    import warnings

    import torch

    # more workers than cores is the point here: they wait on reads, not on the CPU
    warnings.filterwarnings("ignore", message="This DataLoader will create")

    loader = torch.utils.data.DataLoader(
        ImageFiles(files, mode), batch_size=batch, sampler=EpochOrder(len(files), order == "shuffled", seed),
        num_workers=workers, persistent_workers=workers > 0,
        collate_fn=_as_list if mode == "sha" else None)
    if torch_epoch(loader)[1]:
        raise RuntimeError("the DataLoader's start-up pass read images")
    return loader


def torch_epoch(loader) -> tuple[float, int]:
    n = 0
    t0 = time.perf_counter()
    for b in loader:
        n += len(b)
    return time.perf_counter() - t0, n


def verify_torch(root: str, files: list, expected: dict[str, str], who: str, workers: int) -> None:
    """Every file read through a DataLoader's workers (untimed), compared by sha256."""
    seen = 0
    for batch in torch_loader(files, "sha", "listing", 64, workers, 0):
        for path, digest in batch:
            key = os.path.relpath(path, root)
            if digest != expected.get(key):
                raise VerificationError(f"{who} (torch): wrong bytes in {key}")
            seen += 1
    if seen != len(expected):
        raise VerificationError(f"{who} (torch): read {seen} of {len(expected)} files")


def verify(root: str, files: list, expected: dict[str, str], who: str) -> None:
    """Every file read through tf.data (untimed), compared by sha256 with the data set."""
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices(files).map(lambda p: (p, tf.io.read_file(p)),
                                                       num_parallel_calls=8)
    seen = 0
    for path, data in ds:
        key = os.path.relpath(path.numpy().decode(), root)
        if hashlib.sha256(data.numpy()).hexdigest() != expected.get(key):
            raise VerificationError(f"{who}: wrong bytes in {key}")
        seen += 1
    if seen != len(expected):
        raise VerificationError(f"{who}: read {seen} of {len(expected)} files")


def list_files(root: str, fw: str) -> tuple[float, list]:
    """The image paths, listed the framework's way (tf.io.gfile.glob; glob.glob for torch)."""
    pattern = os.path.join(root, "train", "*", "*.JPEG")
    t0 = time.perf_counter()
    if fw == "tf":
        import tensorflow as tf

        files = sorted(tf.io.gfile.glob(pattern))
    else:
        files = sorted(glob.glob(pattern))
    return time.perf_counter() - t0, files


# --------------------------------------------------------------------------- sources


class Local:
    """The data set on local disk: the baseline."""
    name = "local"

    def __init__(self, path: Path):
        self.path = path

    def start(self, mountpoint) -> "Local":
        return self

    def stop(self) -> None:
        pass

    @property
    def root(self) -> str:
        return str(self.path)

    def cpu_seconds(self) -> float:
        return float("nan")

    def warm_dirs(self) -> list:
        return []  # nothing to read back after the drop: epoch 1 reads the disk


class Unifs:
    name = "unifs"

    def __init__(self, workdir: Path, server: SeaweedS3):
        self.workdir = workdir
        self.server = server
        self.mount: Optional[Mount] = None
        self.runs = 0

    def start(self, mountpoint) -> "Unifs":
        self.runs += 1
        cfg = self.workdir / "mounts.yaml"
        cfg.write_text(yaml.safe_dump({
            "mounts": [{"path": MOUNT_PATH, "url": f"s3://{BUCKET}", "read_only": True,
                        "options": self.server.mount_options()}],
            "cache": {"dir": str(self.workdir / f"unifs-cache-{self.runs}")},
            "write": {"staging_dir": str(self.workdir / "unifs-staging")}}))
        self.mount = Mount(Path(mountpoint), cfg).__enter__()
        return self

    def stop(self) -> None:
        if self.mount is not None:
            self.mount.unmount()
            self.mount = None

    @property
    def root(self) -> str:
        return os.path.join(str(self.mount.mp), MOUNT_PATH.strip("/"))

    def cpu_seconds(self) -> float:
        return self.mount.cpu_seconds()

    def warm_dirs(self) -> None:
        return None


def run_source(src, mp: Path, cache: CacheControl, args, expected: dict) -> dict:
    """Every framework and mode, each on a fresh mount: epoch 1 cold, the later ones warm; then
    the bytes checked once per framework. Keys of the result: "tf/read", "torch/decode", ..."""
    out: dict = {}
    for fw in args.frameworks:
        for mode in args.modes:
            src.start(mp)
            try:
                cache.cold(src.warm_dirs())
                glob_s, files = list_files(src.root, fw)
                if len(files) != len(expected):
                    raise VerificationError(f"{src.name}: listed {len(files)} of {len(expected)} images")
                if fw == "tf":
                    ds = pipeline(files, mode, args.order, args.batch, args.parallel, args.seed)
                    run_epoch = lambda: epoch(ds)  # noqa: E731
                else:
                    loader = torch_loader(files, mode, args.order, args.batch, args.workers, args.seed)
                    run_epoch = lambda: torch_epoch(loader)  # noqa: E731
                cpu0 = src.cpu_seconds()
                rates = []
                for e in range(args.epochs):
                    secs, n = run_epoch()
                    if n != len(files):
                        raise VerificationError(f"{src.name}: {fw} epoch {e + 1} yielded {n} of {len(files)} images")
                    rates.append(n / secs)
                    if e == 0:
                        cpu1 = src.cpu_seconds()
                if fw != "tf":
                    del loader  # ends its persistent workers
                if mode == args.modes[0]:
                    if fw == "tf":
                        verify(src.root, files, expected, src.name)
                    else:
                        verify_torch(src.root, files, expected, src.name, args.workers)
                out[f"{fw}/{mode}"] = {"cold_images_s": rates[0], "warm_images_s": max(rates[1:]),
                                       "epochs_images_s": rates, "list_s": glob_s,
                                       "cold_server_cpu_s": cpu1 - cpu0}
                log(f"{src.name:12s} {fw:5s} {mode:6s} cold {rates[0]:8,.0f} images/s  warm "
                    f"{', '.join(f'{r:,.0f}' for r in rates[1:])} images/s  (glob {glob_s:.3f} s)")
            finally:
                src.stop()
    return out


# --------------------------------------------------------------------------- report


def report(results: dict, args, avg_kib: float) -> None:
    names = list(results)
    print(f"\nimages/s, {args.images:,} JPEGs ({avg_kib:.0f} KiB average) in {args.classes} classes, "
          f"order {args.order}, batch {args.batch}, tf parallel {args.parallel or 'AUTOTUNE'}, "
          f"torch workers {args.workers}, {os.cpu_count()} cores")
    rows = [(f"{fw}/{mode}", key, label) for fw in args.frameworks for mode in args.modes
            for key, label in (("cold_images_s", "1 cold"), ("warm_images_s", "warm"))]
    head = f"{'pipeline':14s}{'epoch':10s}" + "".join(f"{n:>13s}" for n in names)
    print(head)
    print("-" * len(head))
    for pipe, key, label in rows:
        print(f"{pipe:14s}{label:10s}" + "".join(
            f"{results[n][pipe][key]:13,.0f}" if pipe in results[n] else f"{'-':>13s}" for n in names))
    if "unifs" not in results:
        return
    others = [n for n in names if n != "unifs"]
    print("\nunifs / other (> 1: unifs faster)")
    print(f"{'pipeline':14s}{'epoch':10s}" + "".join(f"{n:>13s}" for n in others))
    for pipe, key, label in rows:
        print(f"{pipe:14s}{label:10s}" + "".join(
            f"{results['unifs'][pipe][key] / results[n][pipe][key]:12.2f}x" if pipe in results[n]
            else f"{'-':>13s}" for n in others))


def parse_peers(text: Optional[str]) -> list:
    if text is None:
        return list(S3_PEERS)
    if text.strip() == "none":
        return []
    names = [p.strip() for p in text.split(",") if p.strip()]
    bad = [n for n in names if n not in S3_PEERS]
    if bad:
        raise SystemExit(f"tf_images_bench: unknown peer {bad[0]!r} (known: {', '.join(S3_PEERS)}, none)")
    return names


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--frameworks", default="tf,torch", help="comma-separated: tf, torch")
    ap.add_argument("--modes", default="read,decode", help="comma-separated: read, decode")
    ap.add_argument("--order", choices=("shuffled", "listing"), default="shuffled")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=3, help="epoch 1 cold, the best of the others warm")
    ap.add_argument("--parallel", type=int, default=16,
                    help="map() calls in flight and tf.data's private thread pool (0: AUTOTUNE, TF's pool)")
    ap.add_argument("--workers", type=int, default=8,
                    help="DataLoader worker processes (torch); 0 reads in the main process")
    ap.add_argument("--peers", default=None, help=f"comma-separated: {','.join(S3_PEERS)}, or none")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--workdir", help="default: a new temporary directory, removed at the end")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args()
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not args.modes or any(m not in MODES for m in args.modes):
        ap.error(f"--modes takes {', '.join(MODES)}")
    args.frameworks = [f.strip() for f in args.frameworks.split(",") if f.strip()]
    if not args.frameworks or any(f not in FRAMEWORKS for f in args.frameworks):
        ap.error(f"--frameworks takes {', '.join(FRAMEWORKS)}")
    if (args.images < 1 or args.classes < 1 or args.batch < 1 or args.parallel < 0 or args.workers < 0
            or args.epochs < 2):
        ap.error("--images, --classes and --batch must be >= 1, --parallel and --workers >= 0, "
                 "--epochs >= 2")
    peer_names, skipped = split_installed(parse_peers(args.peers), log)

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="unifs-tfimg-"))
    workdir.mkdir(parents=True, exist_ok=True)
    server = SeaweedS3(str(workdir / "seaweed"))
    mountpoints = []
    status = 0
    try:
        t0 = time.perf_counter()
        images = make_images(args.images, args.classes, args.seed)
        expected = {k: hashlib.sha256(v).hexdigest() for k, v in images.items()}
        avg_kib = sum(map(len, images.values())) / len(images) / 1024
        for key, blob in images.items():
            p = workdir / "local" / key
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(blob)
        log(f"made {len(images):,} JPEGs ({avg_kib:.0f} KiB average) in {time.perf_counter() - t0:.1f} s")
        server.start()
        server.create_bucket(BUCKET)
        server.put_many(BUCKET, images)
        del images
        log(f"uploaded to SeaweedFS at {server.endpoint}")
        cache = CacheControl(workdir / "seaweed" / "data", warm_server=True)
        target = S3Target(server.endpoint, server.access_key, server.secret_key, BUCKET)
        sources = [Local(workdir / "local"), Unifs(workdir, server)]
        sources += make_peers(peer_names, workdir / "peers", target, None)
        results = {}
        for src in sources:
            mp = workdir / f"mnt-{src.name}"
            mountpoints.append(str(mp))
            try:
                results[src.name] = run_source(src, mp, cache, args, expected)
            except VerificationError:
                raise
            except Exception as e:  # a peer that fails is reported and left out; unifs failing is fatal
                if src.name in ("local", "unifs"):
                    raise
                log(f"peer {src.name} failed: {e}")
                skipped[src.name] = f"failed: {e}"
        report(results, args, avg_kib)
        if args.json:
            Path(args.json).write_text(json.dumps({
                "config": {k: getattr(args, k) for k in ("images", "classes", "frameworks", "modes", "order",
                                                         "batch", "parallel", "workers", "epochs", "seed")},
                "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                            "python": platform.python_version()},
                "average_kib": avg_kib, "skipped": skipped, "results": results}, indent=2))
            log(f"wrote {args.json}")
    except VerificationError as e:
        log(f"VERIFICATION FAILED: {e}")
        status = 3
    finally:
        server.stop()
        still = [mp for mp in mountpoints if is_mounted(mp)]
        for mp in still:
            log(f"WARNING: {mp} is still mounted")
        if not args.keep and not still and not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
