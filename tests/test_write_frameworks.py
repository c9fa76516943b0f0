"""Real frameworks write through the mount: torch.save, tf.train.CheckpointManager, Keras
model.save, HDF5 weights, a tf.summary writer seen in the store before close, and a
1 GiB file checked by sha256 through the mount and directly."""

from __future__ import annotations

import hashlib
import os

import numpy as np
import obstore
import pytest

from conftest import SCRATCH


@pytest.fixture
def ckpt(mounter, dataset, request):
    prefix = f"frameworks/{request.node.name}"
    mp = mounter.mount([mounter.s3_entry("/ckpt", f"s3://{SCRATCH}/{prefix}", write_back="1s")])
    return mp / "ckpt", prefix


def _keys(seaweed, prefix):
    return {m["path"][len(prefix) + 1:] for chunk in obstore.list(seaweed.obstore(SCRATCH), prefix)
            for m in chunk}


def test_torch_save_and_load_state_dict(ckpt, seaweed):
    import torch

    root, prefix = ckpt
    torch.manual_seed(0)
    state = {f"layer{i}.weight": torch.randn(1024, 1280) for i in range(10)}  # ~52 MB
    torch.save(state, root / "model.pt")
    assert "model.pt" in _keys(seaweed, prefix)
    loaded = torch.load(root / "model.pt")
    assert loaded.keys() == state.keys()
    for k in state:
        assert torch.equal(loaded[k], state[k]), k
    # overwrite in place, as a training loop does every epoch
    state["layer0.weight"] += 1
    torch.save(state, root / "model.pt")
    assert torch.equal(torch.load(root / "model.pt")["layer0.weight"], state["layer0.weight"])


def test_tf_checkpoint_manager_saves_twice_and_restores(ckpt, seaweed):
    import tensorflow as tf

    root, prefix = ckpt
    v = tf.Variable(tf.random.normal([256, 256], seed=1))
    step = tf.Variable(0)
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(v=v, step=step), str(root / "tf"), max_to_keep=1)
    saved = []
    for i in (1, 2):
        step.assign(i)
        v.assign_add(tf.ones_like(v))
        saved.append(v.numpy().copy())
        manager.save()
    keys = _keys(seaweed, prefix)
    assert "tf/checkpoint" in keys
    assert any(k.startswith("tf/ckpt-2.") for k in keys)
    assert not any(k.startswith("tf/ckpt-1.") for k in keys), keys  # max_to_keep removed it
    assert not any("tmp" in k for k in keys), keys
    v2, step2 = tf.Variable(tf.zeros([256, 256])), tf.Variable(0)
    tf.train.Checkpoint(v=v2, step=step2).restore(tf.train.latest_checkpoint(str(root / "tf"))).expect_partial()
    assert int(step2.numpy()) == 2
    np.testing.assert_array_equal(v2.numpy(), saved[1])


def test_keras_model_save_and_load(ckpt):
    import keras

    root, _ = ckpt
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(2)])
    model.compile(optimizer="adam", loss="mse")
    x = np.random.default_rng(0).normal(size=(4, 8)).astype("float32")
    model.save(root / "model.keras")
    model.save_weights(root / "model.weights.h5")
    loaded = keras.models.load_model(root / "model.keras")
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-6)
    fresh = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(2)])
    fresh.load_weights(root / "model.weights.h5")
    np.testing.assert_allclose(fresh.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-6)


def test_tf_summary_events_visible_in_the_store_before_close(ckpt, seaweed):
    import tensorflow as tf
    from conftest import wait_for

    root, prefix = ckpt
    writer = tf.summary.create_file_writer(str(root / "logs"), flush_millis=200)

    def events_in_store():
        keys = [k for k in _keys(seaweed, prefix) if k.startswith("logs/events.out.tfevents")]
        if not keys:
            return 0
        return obstore.head(seaweed.obstore(SCRATCH), f"{prefix}/{keys[0]}")["size"]
    with writer.as_default():
        for i in range(5):
            tf.summary.scalar("loss", 1.0 / (i + 1), step=i)
        writer.flush()
        first = 0
        assert wait_for(lambda: events_in_store() > 0, timeout=20)
        first = events_in_store()
        for i in range(5, 50):
            tf.summary.scalar("loss", 1.0 / (i + 1), step=i)
        writer.flush()
        assert wait_for(lambda: events_in_store() > first, timeout=20)  # progress while still open
    writer.close()
    steps = []
    for path in tf.io.gfile.glob(str(root / "logs/events.out.tfevents*")):
        for e in tf.compat.v1.train.summary_iterator(path):
            steps.extend(e.step for v in e.summary.value if v.tag == "loss")
    assert sorted(steps) == list(range(50))


def test_one_gib_file_round_trip(ckpt, seaweed):
    root, prefix = ckpt
    chunk = os.urandom(1 << 20)
    h = hashlib.sha256()
    with open(root / "big.bin", "wb") as f:
        for i in range(1024):
            block = chunk[i:] + chunk[:i]  # distinct blocks, no per-MiB random generation
            f.write(block)
            h.update(block)
    want = h.hexdigest()
    with open(root / "big.bin", "rb") as f:
        got = hashlib.sha256()
        while True:
            b = f.read(1 << 22)
            if not b:
                break
            got.update(b)
    assert got.hexdigest() == want
    direct = hashlib.sha256()
    for part in obstore.get(seaweed.obstore(SCRATCH), f"{prefix}/big.bin"):
        direct.update(part)
    assert direct.hexdigest() == want
    os.unlink(root / "big.bin")
