"""The metadata cache never keeps an answer the store gave before a local change."""

from __future__ import annotations

from unifs.vfs.attrs import Attr
from unifs.vfs.metacache import MetaCache


def test_a_listing_or_lookup_started_before_a_local_change_is_not_cached():
    # a background listing of a directory raced with creates in it: cached after them, it
    # hid the new files for the whole TTL
    m = MetaCache()
    f = Attr(is_dir=False, size=1)
    since = m.changes("/w/d")
    m.put_child("/w/d/new", f, 60)  # a create while the listing was on its way
    m.put_listing("/w/d", {"old": f}, 60, since)
    assert m.get_listing("/w/d") is None and m.get("/w/d/new") == f
    since = m.changes("/w/d")
    m.put_listing("/w/d", {"old": f, "new": f}, 60, since)  # nothing changed meanwhile
    assert set(m.get_listing("/w/d")) == {"old", "new"}

    since = m.changes("/w/d")  # a HEAD that found nothing, answered after a create
    m.invalidate("/w/d/late")
    m.put("/w/d/late", None, 60, since)
    assert m.get("/w/d/late") is None  # unknown, not "missing"

    since = m.changes("/w/d/sub")
    m.invalidate_tree("/w/d")  # a directory rename above it
    m.put_listing("/w/d/sub", {"x": f}, 60, since)
    assert m.get_listing("/w/d/sub") is None


def test_a_stamp_from_before_the_changes_table_was_reset_never_matches():
    m = MetaCache()
    since = m.changes("/w/d")  # (0, 0): never changed
    m.invalidate("/w/d/new")  # changed while a listing was on its way
    for i in range(100_001):  # many directories written: the table is reset, "/w/d" back to 0
        m.invalidate(f"/w/x{i}/f")
    m.put_listing("/w/d", {}, 60, since)
    assert m.get_listing("/w/d") is None
