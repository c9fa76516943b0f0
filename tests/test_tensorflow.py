"""Real TensorFlow reads through the mount: tf.io.gfile and a tf.data TFRecord pipeline."""

from __future__ import annotations

import os

import pytest
import tensorflow as tf

from conftest import SCRATCH, sha256


@pytest.fixture(scope="module")
def tfrecords(seaweed, dataset, tmp_path_factory):
    """Three TFRecord shards written by TensorFlow locally, uploaded to the bucket."""
    local = tmp_path_factory.mktemp("tfrec")
    records = {}
    objects = {}
    for shard in range(3):
        path = local / f"train-{shard:05d}-of-00003.tfrecord"
        recs = [os.urandom(1000 + 37 * i) for i in range(400)]
        with tf.io.TFRecordWriter(str(path)) as w:
            for r in recs:
                w.write(r)
        records[path.name] = recs
        objects[f"tfrecords/{path.name}"] = path.read_bytes()
    seaweed.put_many(SCRATCH, objects)
    return records


def test_gfile_listdir_glob_and_read(data_mount, dataset):
    root = str(data_mount / "data")
    assert sorted(tf.io.gfile.listdir(root))[:3] == ["extra", "images", "many"]
    found = tf.io.gfile.glob(os.path.join(root, "images/class_3/*.jpg"))
    expected = [k for k in dataset["small"] if "/class_3/" in k]
    assert len(found) == len(expected) > 0
    for path in found:
        key = os.path.relpath(path, root)
        with tf.io.gfile.GFile(path, "rb") as f:
            assert sha256(f.read()) == dataset["small"][key]
    assert tf.io.gfile.isdir(os.path.join(root, "images"))
    assert not tf.io.gfile.exists(os.path.join(root, "images/missing.jpg"))
    assert tf.io.gfile.stat(os.path.join(root, "shards/big.bin")).length == len(dataset["big"])


def test_tf_data_tfrecord_pipeline(mounter, tfrecords):
    mp = mounter.mount([mounter.s3_entry("/train", f"s3://{SCRATCH}/tfrecords", read_only=True)])
    files = sorted(tf.io.gfile.glob(str(mp / "train/*.tfrecord")))
    assert [os.path.basename(f) for f in files] == sorted(tfrecords)
    ds = tf.data.TFRecordDataset(files, num_parallel_reads=3)
    got = sorted(bytes(r.numpy()) for r in ds)
    assert got == sorted(r for recs in tfrecords.values() for r in recs)
