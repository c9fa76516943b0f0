"""Keys no file name can stand for, on the stores that take them: not listed, and said once in
the log (a user who misses an object learns why), never mistaken for another object."""

from __future__ import annotations

import errno
import logging
import os
import subprocess

import pytest

from conftest import errno_of

from unifs.stores.fsspec_store import FsspecStore


@pytest.mark.parametrize("kind", ["gcs", "azure"])
def test_unshowable_keys_are_left_out_and_logged(_providers, kind, caplog):
    p = _providers(kind)
    prefix = f"awkward/{kind}"
    keys = {"ok": b"OK", "dbl//b": b"D", "nl\nname": b"N", "tab\tname": b"T", "sub/x": b"X"}
    p.put_many({f"{prefix}/{k}": v for k, v in keys.items()})
    store = FsspecStore(p.url(prefix), p.options(), timeout=10, connect_timeout=5, retries=1)
    try:
        with caplog.at_level(logging.INFO, logger="unifs.store"):
            listing = store.list_dir("")
            again = store.list_dir("")
            inside = store.list_dir("dbl")  # "dbl//b": a directory "dbl" holding a nameless one
        shown = sorted(listing.files) + sorted(f"{d}/" for d in listing.dirs)
        said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("not shown")]
        if kind == "azure":  # adlfs drops tabs and newlines from a path: HEAD and GET would miss
            assert shown == ["ok", "dbl/", "sub/"] and len(said) == 3, said
            assert store.name_problem("new\nname") is not None
        else:  # gcsfs addresses them: they are files like any other
            assert shown == ["nl\nname", "ok", "tab\tname", "dbl/", "sub/"] and len(said) == 1, said
            assert store.head("nl\nname").size == 1
        assert not inside.files and not inside.dirs and any("dbl/" in m for m in said)
        assert sorted(again.files) == sorted(listing.files)  # logged once, not at every listing
        assert store.head("ok").size == 2
    finally:
        store.close()


def test_local_links_within_the_directory_are_followed_and_others_not_served(mounter, _providers, tmp_path):
    # a file:// mount listed a link to a directory as a 4 KiB file, followed links out of the
    # mounted directory (/etc/hostname to every user, with allow_other), and listed a FIFO,
    # whose read blocks forever
    p = _providers("file")
    prefix = "awkward-links"
    p.put_many({f"{prefix}/data/a.bin": b"A" * 100, f"{prefix}/top.txt": b"top"})
    root = p.root / prefix
    outside = tmp_path / "secret.txt"
    outside.write_bytes(b"not for the mount")
    os.symlink("data", root / "data-link")
    os.symlink("top.txt", root / "top-link")
    os.symlink(str(outside), root / "out-link")
    os.symlink(str(tmp_path), root / "out-dir")
    os.symlink("nowhere", root / "dangling")
    os.mkfifo(root / "fifo")
    mp = mounter.mount([p.entry("/l", prefix, read_only=True)]) / "l"
    os.symlink(".", root / "loop")
    assert sorted(os.listdir(mp)) == ["data", "top-link", "top.txt"]
    assert (mp / "top-link").read_bytes() == b"top" and os.stat(mp / "top-link").st_size == 3
    # not directory links: `rm -r link` deleted the files it pointed at, and `loop -> .` made
    # a tree 40 levels deep
    for name in ("out-link", "out-dir", "dangling", "fifo", "out-dir/secret.txt", "data-link", "loop",
                 "data-link/a.bin", "loop/top.txt"):
        assert errno_of(os.stat, mp / name) == errno.ENOENT, name
    w = mounter.mount([p.entry("/w", prefix)]) / "w"
    assert errno_of(os.stat, w / "data-link") == errno.ENOENT
    subprocess.run(["rm", "-rf", str(w / "data-link")], check=True)
    assert (root / "data/a.bin").read_bytes() == b"A" * 100


@pytest.mark.parametrize("kind", ["gcs", "azure"])
def test_rmdir_of_a_directory_holding_only_unshown_keys_is_enotempty(mounter, _providers, kind):
    # the listing hides `odd/a//double`, so rmdir of odd/a said done and the directory stayed;
    # a name over 255 bytes was listed, and no program could open or remove it
    p = _providers(kind)
    prefix = f"awkward-rmdir/{kind}"
    p.put_many({f"{prefix}/odd/a//double": b"D", f"{prefix}/odd/b/x": b"X",
                f"{prefix}/odd/c/{'L' * 300}": b"L", f"{prefix}/odd/c/short": b"S"})
    w = mounter.mount([p.entry("/w", prefix)]) / "w"
    assert os.listdir(w / "odd/a") == []
    assert os.listdir(w / "odd/c") == ["short"]
    assert errno_of(os.rmdir, w / "odd/a") == errno.ENOTEMPTY
    os.unlink(w / "odd/c/short")
    assert errno_of(os.rmdir, w / "odd/c") == errno.ENOTEMPTY
    assert sorted(os.listdir(w / "odd")) == ["a", "b", "c"]
    os.unlink(w / "odd/b/x")
    os.rmdir(w / "odd/b")  # an emptied directory still goes
    assert sorted(os.listdir(w / "odd")) == ["a", "c"]
