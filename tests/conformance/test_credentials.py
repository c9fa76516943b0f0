"""Refused credentials fail `unifs mount` with one line naming the mount, for every store that checks them."""

from __future__ import annotations

import pytest

from conftest import unifs
from unifs.devstores.azurite import ACCOUNT, connection_string


def _refused(mounter, tmp_path, entry, secret):
    cfg = mounter.write_table({"mounts": [entry], "store": {"retries": 1, "timeout": "5s"}})
    mp = tmp_path / "mp"
    mp.mkdir()
    res = unifs("mount", str(mp), "--config", str(cfg))
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert f"mount {entry['path']}" in lines[0] and "credentials refused" in lines[0]
    assert secret not in res.stderr and "Traceback" not in res.stderr


def test_s3_wrong_secret(mounter, seaweed, tmp_path):
    seaweed.create_bucket("creds")
    opts = dict(seaweed.mount_options(), secret="not-the-secret-123")
    _refused(mounter, tmp_path, {"path": "/s3", "url": "s3://creds", "options": opts}, "not-the-secret-123")


def test_azure_wrong_key(mounter, azurite, tmp_path):
    azurite.create_container("creds")
    bad_key = "QmFkS2V5Tm90VGhlUmVhbE9uZQ=="
    opts = {"connection_string": connection_string(azurite.endpoint, account=ACCOUNT, key=bad_key)}
    _refused(mounter, tmp_path, {"path": "/az", "url": "abfs://creds", "options": opts}, bad_key)


def test_missing_backend_package_is_named(tmp_path):
    # fsspec knows dropbox:// but its backend package is not a unifs dependency
    cfg = tmp_path / "m.yaml"
    cfg.write_text("mounts:\n  - path: /box\n    url: dropbox://team/data\n")
    res = unifs("config", "check", "--config", str(cfg))
    assert res.returncode == 1
    assert "mounts[0] (/box).url" in res.stderr and "dropbox" in res.stderr.lower()
    assert "install" in res.stderr and "Traceback" not in res.stderr


def test_unreachable_endpoints_fail_the_mount_at_once(mounter, tmp_path):
    # gcsfs and the Azure SDK retry refused connections for ~30 s per call on their own;
    # the mount must still answer within the command's timeout with one line per store
    from unifs.devstores.process import free_port

    port = free_port()  # nothing listens there
    entries = {
        "/g": {"path": "/g", "url": "gs://bkt", "options": {"endpoint_url": f"http://127.0.0.1:{port}",
                                                           "token": "anon"}},
        "/a": {"path": "/a", "url": "abfs://cont", "options": {"connection_string": connection_string(
            f"http://127.0.0.1:{port}/{ACCOUNT}")}},
    }
    for path, entry in entries.items():
        cfg = mounter.write_table({"mounts": [entry]})
        mp = tmp_path / f"mp{path.strip('/')}"
        mp.mkdir()
        res = unifs("mount", str(mp), "--config", str(cfg), timeout=60)
        assert res.returncode == 1
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1, res.stderr
        assert f"mount {path}" in lines[0] and f"cannot connect to 127.0.0.1:{port}" in lines[0]


@pytest.mark.parametrize("var", ["AWS_ENDPOINT_URL", "AWS_ENDPOINT"])
def test_s3_credentials_and_endpoint_from_the_environment(mounter, seaweed, tmp_path, var):
    # an http:// AWS_ENDPOINT_URL failed every request of the obstore client ("builder error");
    # with AWS_ENDPOINT, which botocore does not read, a directory rename (listed through s3fs)
    # went to AWS
    import os

    seaweed.create_bucket("envcreds")
    seaweed.put_many("envcreds", {f"{var}/d/x": b"from the environment"})
    cfg = mounter.write_table({"mounts": [{"path": "/e", "url": f"s3://envcreds/{var}"}],
                               "write": {"staging_dir": str(tmp_path / "st")}})
    mp = tmp_path / "mp"
    mp.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_ACCESS_KEY_ID=seaweed.access_key, AWS_SECRET_ACCESS_KEY=seaweed.secret_key,
               AWS_REGION="us-east-1", **{var: seaweed.endpoint})
    res = unifs("mount", str(mp), "--config", str(cfg), env=env)
    assert res.returncode == 0, res.stderr
    try:
        assert (mp / "e/d/x").read_bytes() == b"from the environment"
        os.rename(mp / "e/d", mp / "e/d2")
        assert (mp / "e/d2/x").read_bytes() == b"from the environment"
    finally:
        unifs("umount", str(mp), check=True)
