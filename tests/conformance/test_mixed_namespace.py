"""One mount point over S3, GCS, Azure and a local directory, read by a PyTorch DataLoader."""

from __future__ import annotations

import hashlib
import os
import random

import torch
from torch.utils.data import DataLoader, Dataset

from conformance.providers import AzureProvider, FileProvider, GCSProvider, S3Provider


class FilesDataset(Dataset):
    def __init__(self, paths):
        self.paths = paths

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        with open(self.paths[i], "rb") as f:
            data = f.read()
        return self.paths[i], hashlib.sha256(data).hexdigest(), torch.tensor(len(data))


def test_dataloader_reads_every_byte_of_a_mixed_namespace(mounter, seaweed, fake_gcs, azurite, tmp_path):
    rng = random.Random(11)
    stores = {
        "s3": S3Provider(seaweed, "mixed-s3"),
        "gcs": GCSProvider(fake_gcs, "mixed-gcs"),
        "azure": AzureProvider(azurite, "mixed-azure"),
        "file": FileProvider(tmp_path / "local-store"),
    }
    expected = {}
    layout = {  # mount path -> (store, prefix); /datasets/imagenet/extra nests inside /datasets/imagenet
        "/datasets/imagenet": ("s3", "imagenet"),
        "/datasets/imagenet/extra": ("gcs", "extra"),
        "/logs": ("azure", "logs"),
        "/local": ("file", "data"),
    }
    for mount_path, (kind, prefix) in layout.items():
        items = {f"{prefix}/part{i % 3}/f{i:03d}.bin": rng.randbytes(rng.randrange(0, 300_000)) for i in range(40)}
        stores[kind].put_many(items)
        for key, data in items.items():
            expected[mount_path + key[len(prefix):]] = hashlib.sha256(data).hexdigest()

    mp = mounter.mount([stores[kind].entry(path, prefix, read_only=(kind != "file"))
                        for path, (kind, prefix) in layout.items()])
    assert sorted(os.listdir(mp)) == ["datasets", "local", "logs"]
    assert "extra" in os.listdir(mp / "datasets/imagenet")

    paths = sorted(os.path.join(d, f) for d, _, fs in os.walk(mp) for f in fs)
    assert sorted(os.path.relpath(p, mp) for p in paths) == sorted(k.lstrip("/") for k in expected)

    loader = DataLoader(FilesDataset(paths), batch_size=8, num_workers=2, shuffle=True)
    seen = {}
    total = 0
    for batch_paths, digests, sizes in loader:
        for p, d in zip(batch_paths, digests):
            seen["/" + os.path.relpath(p, mp)] = d
        total += int(sizes.sum())
    assert seen == expected
    assert total > 0
