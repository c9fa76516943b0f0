"""http(s):// mounts only: a signed URL's query string, and a page that does not exist."""

from __future__ import annotations

from conftest import sha256, unifs
from conformance.conftest import conformance_data


def test_a_query_string_goes_after_each_key(mounter, _providers):
    # a presigned or SAS-style URL: keys were appended after the query string, so every file
    # read back as the directory's index page, with no error
    provider = _providers("http")
    url = provider.url("conf").rstrip("/") + "/?sv=2024&sig=NOT_A_REAL_SIGNATURE"
    root = mounter.mount([{"path": "/h", "url": url, "read_only": True}]) / "h"
    for rel in ("empty.txt", "deep/a/b/c/d.txt", "shards/medium.bin"):
        assert sha256((root / rel).read_bytes()) == sha256(conformance_data()["conf/" + rel]), rel
    assert sorted(p.name for p in (root / "deep/a/b/c").iterdir()) == ["d.txt"]


def test_a_page_that_does_not_exist_or_a_file_fails_the_mount(mounter, _providers, tmp_path):
    provider = _providers("http")
    (tmp_path / "mp").mkdir()
    for url, words in ((provider.url("no-such-dir") + "?sig=SECRET_SIG", "not found"),
                       (provider.url("conf").rstrip("/") + "/deep/a/b/c/d.txt", "lists nothing")):
        cfg = mounter.write_table({"mounts": [{"path": "/h", "url": url, "read_only": True}]})
        res = unifs("mount", str(tmp_path / "mp"), "--config", str(cfg), timeout=60)
        assert res.returncode == 1 and words in res.stderr and "Traceback" not in res.stderr, res.stderr
        # the redacted URL keeps the message around it: "mount /h (http://...?sig=***): ..."
        assert "SECRET_SIG" not in res.stderr and "): " in res.stderr, res.stderr
