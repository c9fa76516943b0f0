"""The test servers themselves: they clean up after themselves."""

from __future__ import annotations

import os


def test_a_stopped_seaweedfs_leaves_no_sockets_in_the_temp_dir(tmp_path):
    # weed leaves seven unix sockets per server in /tmp; test runs left hundreds
    import glob
    import tempfile

    from unifs.devstores.seaweed import SeaweedS3

    pattern = os.path.join(tempfile.gettempdir(), "seaweedfs-*.sock")
    server = SeaweedS3(str(tmp_path / "s3")).start()
    ours = {p for p in glob.glob(pattern) if any(p.endswith(f"-{server.port + d}.sock")
                                                  for d in (0, 1, 2, 3, 4, 10000, 10001, 10002, 10003, 10004))}
    server.stop()
    assert ours and not any(os.path.exists(p) for p in ours), ours
