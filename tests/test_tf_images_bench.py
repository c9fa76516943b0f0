"""benchmarks/tf_images runs end to end: real TensorFlow input pipelines and PyTorch DataLoaders
with worker processes (read, decode) over a real SeaweedFS through a real unifs mount and from
local disk, every image checked by sha256 inside the script (status 3 on a mismatch), through
tf.data and through the DataLoader's workers. Small data set, no peers; no timing asserted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "tf_images" / "tf_images_bench.py"


def test_tf_images_bench_small_run(tmp_path):
    out = tmp_path / "tfimg.json"
    res = subprocess.run([sys.executable, str(BENCH), "--images", "48", "--classes", "3", "--batch", "8",
                          "--peers", "none", "--workers", "2", "--json", str(out), "--workdir", str(tmp_path / "work")],
                         capture_output=True, text=True, timeout=600,
                         env={**os.environ, "PYTHONPATH": str(BENCH.parent.parent.parent)})
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert set(doc["results"]) == {"local", "unifs"}
    for source in ("local", "unifs"):
        assert set(doc["results"][source]) == {"tf/read", "tf/decode", "torch/read", "torch/decode"}
        for pipe in doc["results"][source]:
            row = doc["results"][source][pipe]
            assert row["cold_images_s"] > 0 and row["warm_images_s"] > 0
    assert 50 < doc["average_kib"] < 200
    assert "unifs / other" in res.stdout
    assert not any(line.split()[4].startswith(str(tmp_path)) for line in open("/proc/self/mountinfo"))
