"""Keys no file name can stand for, on the stores that take them: not listed, and said once in
the log (a user who misses an object learns why), never mistaken for another object."""

from __future__ import annotations

import logging

import pytest

from unifs.stores.fsspec_store import FsspecStore


@pytest.mark.parametrize("kind", ["gcs", "azure"])
def test_unshowable_keys_are_left_out_and_logged(_providers, kind, caplog):
    p = _providers(kind)
    prefix = f"awkward/{kind}"
    keys = {"ok": b"OK", "dbl//b": b"D", "nl\nname": b"N", "tab\tname": b"T", "sub/x": b"X"}
    p.put_many({f"{prefix}/{k}": v for k, v in keys.items()})
    store = FsspecStore(p.url(prefix), p.options(), timeout=10, connect_timeout=5, retries=1)
    try:
        with caplog.at_level(logging.WARNING, logger="unifs.store"):
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
