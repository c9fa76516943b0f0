"""The same write and cache behaviour through a real mount, whatever the store: what one
mount writes, a second, fresh mount of the same store reads back byte for byte."""

from __future__ import annotations

import errno
import os
import time

import pytest

from conftest import cache_stats, errno_of, sha256, wait_for

WRITABLE = ["s3", "gcs", "azure", "file", "memory"]


@pytest.fixture(params=WRITABLE)
def wprovider(request, _providers):
    return _providers(request.param)


def _tree(root) -> dict:
    out = {}
    for d, _, files in os.walk(root):
        for f in files:
            p = os.path.join(d, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, root)] = sha256(fh.read())
    return out


def test_writes_land_in_the_store(mounter, wprovider, request):
    prefix = f"confw/{request.node.callspec.id}"
    wprovider.make_root(prefix)
    mp = mounter.mount([wprovider.entry("/w", prefix)], inprocess=wprovider.inprocess)
    root = mp / "w"
    big = os.urandom(9 * 1024 * 1024 + 7)
    (root / "big.bin").write_bytes(big)
    (root / "state").write_bytes(b"v1")
    os.makedirs(root / "run/tmp")
    (root / "run/tmp/a.part").write_bytes(b"A" * 5000)
    (root / "run/tmp/b.part").write_bytes(b"B")
    with open(root / "log.txt", "ab") as f:
        f.write(b"line 1\n")
    with open(root / "log.txt", "ab") as f:
        f.write(b"line 2\n")
    with open(root / "big.bin", "r+b") as f:
        f.seek(4 * 1024 * 1024)
        f.write(b"patched")
    big = big[:4 * 1024 * 1024] + b"patched" + big[4 * 1024 * 1024 + 7:]
    (root / "state.tmp").write_bytes(b"v2")
    os.rename(root / "state.tmp", root / "state")
    os.rename(root / "run/tmp", root / "run/final")
    (root / "doomed").write_bytes(b"x")
    os.unlink(root / "doomed")
    assert errno_of(os.rmdir, root / "run") == errno.ENOTEMPTY
    assert errno_of(os.unlink, root / "doomed") == errno.ENOENT

    want = {"big.bin": sha256(big), "state": sha256(b"v2"), "log.txt": sha256(b"line 1\nline 2\n"),
            "run/final/a.part": sha256(b"A" * 5000), "run/final/b.part": sha256(b"B")}
    assert _tree(root) == want
    # a fresh mount (new daemon, empty caches) sees exactly the same files in the store
    # "doomed" was unlinked right after its close: its object goes at the kernel's release,
    # which can come after the fresh daemon listed the directory
    fresh = mounter.mount([wprovider.entry("/r", prefix, read_only=True, metadata_ttl="1s")],
                          inprocess=wprovider.inprocess)
    assert wait_for(lambda: _tree(fresh / "r") == want), _tree(fresh / "r")


def test_second_read_comes_from_the_cache(mounter, wprovider, expected):
    mp = mounter.mount([wprovider.entry("/store", "conf", read_only=True)], inprocess=wprovider.inprocess)
    files = [mp / "store" / rel for rel in sorted(expected)][:20]

    def read():
        return [sha256(p.read_bytes()) for p in files]

    def store_gets():
        return cache_stats(mp)["store_reads"].get("/store", {"gets": 0})["gets"]
    first = read()
    n = store_gets()
    assert n > 0
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")
    assert read() == first == [expected[rel] for rel in sorted(expected)][:20]
    assert store_gets() == n


def test_rm_r_of_a_tree_the_daemon_did_not_create(mounter, wprovider, request):
    # after a remount the daemon knows directories only through their keys: deleting the last
    # file of one must leave it a directory, or rmdir (and `rm -r`) fails with ENOENT
    import shutil

    prefix = f"confrm/{request.node.callspec.id}"
    wprovider.make_root(prefix)
    first = mounter.mount([wprovider.entry("/w", prefix)], inprocess=wprovider.inprocess)
    os.makedirs(first / "w/tree/sub/deeper")
    for rel in ("tree/a", "tree/sub/b", "tree/sub/deeper/c", "keep/k"):
        os.makedirs(os.path.dirname(first / "w" / rel), exist_ok=True)
        (first / "w" / rel).write_bytes(rel.encode())
    root = mounter.mount([wprovider.entry("/w", prefix)], inprocess=wprovider.inprocess) / "w"
    os.unlink(root / "keep/k")
    assert os.path.isdir(root / "keep") and os.listdir(root / "keep") == []
    os.rmdir(root / "keep")
    assert errno_of(os.stat, root / "keep") == errno.ENOENT
    shutil.rmtree(root / "tree")
    assert errno_of(os.stat, root / "tree") == errno.ENOENT
    assert sorted(os.listdir(root)) == []


def test_a_reader_follows_its_file_through_a_rename(mounter, wprovider, request):
    # a rename is a copy and a delete on most stores, which may give the copy a new version
    # (GCS generation, Azure ETag): the open reader must go on reading, not see a deletion
    prefix = f"confmv/{request.node.callspec.id}"
    wprovider.make_root(prefix)
    data = os.urandom(20_000_000)
    first = mounter.mount([wprovider.entry("/w", prefix)], inprocess=wprovider.inprocess)
    (first / "w/shard").write_bytes(data)
    root = mounter.mount([wprovider.entry("/w", prefix)], inprocess=wprovider.inprocess) / "w"
    with open(root / "shard", "rb", buffering=0) as f:
        head = f.read(4096)
        os.rename(root / "shard", root / "moved")
        assert sha256(head + f.read()) == sha256(data)
    assert sorted(os.listdir(root)) == ["moved"]


def test_over_long_names_are_refused_alike(mounter, wprovider, request):
    prefix = f"confname/{request.node.callspec.id}"
    wprovider.make_root(prefix)
    root = mounter.mount([wprovider.entry("/w", prefix)], inprocess=wprovider.inprocess) / "w"
    long = "n" * 256
    assert errno_of(lambda: open(root / long, "wb")) == errno.ENAMETOOLONG
    assert errno_of(os.mkdir, root / long) == errno.ENAMETOOLONG
    assert errno_of(os.stat, root / long) == errno.ENAMETOOLONG  # was ENOENT, not what statfs says
    (root / "ok").write_bytes(b"x")
    assert errno_of(os.rename, root / "ok", root / long) == errno.ENAMETOOLONG
    (root / ("m" * 255)).write_bytes(b"y")  # the longest allowed name works
    assert sorted(os.listdir(root)) == ["m" * 255, "ok"]


@pytest.mark.parametrize("kind", ["s3", "gcs", "azure"])
def test_a_directory_rename_that_would_make_a_key_too_long_is_refused(mounter, _providers, kind):
    # object names are at most 1,024 bytes: the store refused the copies one by one (EIO)
    provider = _providers(kind)
    prefix = f"confdeep/{kind}"
    provider.make_root(prefix)
    root = mounter.mount([provider.entry("/w", prefix)]) / "w"
    deep = root / "d" / ("a" * 250) / ("b" * 250) / ("c" * 250)
    deep.mkdir(parents=True)
    (deep / ("f" * 200)).write_bytes(b"deep")  # about 980 bytes of key
    (root / "d/top").write_bytes(b"top")
    assert errno_of(os.rename, root / "d", root / ("d" * 60)) == errno.ENAMETOOLONG
    assert (deep / ("f" * 200)).read_bytes() == b"deep" and os.listdir(root) == ["d"]
    os.rename(root / "d", root / "e")  # a name no longer than the old one needs no check
    assert (root / "e/top").read_bytes() == b"top"


def test_a_nested_mount_point_does_not_move(mounter, tmp_path):
    # EXDEV here would make `mv` copy the nested store's files into the parent's store and
    # delete them from their own
    outer, inner = tmp_path / "outer", tmp_path / "inner"
    outer.mkdir()
    inner.mkdir()
    (inner / "precious.txt").write_bytes(b"only copy")
    mp = mounter.mount([{"path": "/a", "url": f"file://{outer}"},
                        {"path": "/a/n", "url": f"file://{inner}"}])
    assert errno_of(os.rename, mp / "a/n", mp / "a/n2") == errno.EBUSY
    assert errno_of(os.rename, mp / "a/n", mp / "elsewhere") == errno.EBUSY
    assert errno_of(os.rename, mp / "a", mp / "a2") == errno.EBUSY  # a top-level mount point too
    assert os.statvfs(mp / "a").f_namemax == 255  # what create and rename enforce
    (mp / "a/x").mkdir()
    assert errno_of(os.rename, mp / "a/x", mp / "a/n") == errno.EBUSY
    assert errno_of(os.rename, mp / "a/n/precious.txt", mp / "a/p.txt") == errno.EXDEV
    # coreutils mv: renameat2(RENAME_NOREPLACE), whose checks ran EXDEV first, so mv copied the
    # nested store's files into the parent's and deleted them from their own
    import subprocess
    for src, dst in (("a/n", "a/n2"), ("a", "a2")):
        res = subprocess.run(["mv", str(mp / src), str(mp / dst)], capture_output=True, text=True)
        assert res.returncode != 0 and "busy" in res.stderr, res.stderr
    assert (inner / "precious.txt").read_bytes() == b"only copy"
    assert sorted(os.listdir(outer)) == ["x"]


def _put_markers(provider, keys: dict) -> None:
    """Objects as other tools leave them, "dir/" markers included (obstore, which the S3
    provider uploads with, drops a key's trailing slash)."""
    if provider.name == "s3":
        c = provider.server.client()
        for k, v in keys.items():
            c.put_object(Bucket=provider.bucket, Key=k, Body=v)
    else:
        provider.put_many(keys)


@pytest.mark.parametrize("kind", ["s3", "gcs", "azure"])
def test_directory_markers_left_by_other_tools(mounter, _providers, kind):
    # console "create folder" buttons, the Hadoop connectors and gcsfuse leave "dir/" objects:
    # rmdir, rename and rm -r must take the marker along, or the directory stays or comes back
    import shutil

    p = _providers(kind)
    prefix = f"confmark/{kind}"
    _put_markers(p, {f"{prefix}/empty/": b"", f"{prefix}/gone/": b"", f"{prefix}/full/": b"",
                     f"{prefix}/full/a": b"A", f"{prefix}/full/sub/": b"", f"{prefix}/tree/": b"",
                     f"{prefix}/tree/t/": b"", f"{prefix}/tree/t/x": b"X"})
    entry = p.entry("/w", prefix)
    if kind == "s3":  # a name only obstore's mapping takes: the s3fs store for markers gets it too
        entry["options"] = dict(entry["options"], region="us-east-1")
    root = mounter.mount([entry]) / "w"
    assert sorted(os.listdir(root)) == ["empty", "full", "gone", "tree"]
    os.rmdir(root / "gone")
    os.rename(root / "full", root / "moved")
    assert sorted(os.listdir(root / "moved")) == ["a", "sub"]
    shutil.rmtree(root / "tree")
    want = ["empty", "moved"]
    assert sorted(os.listdir(root)) == want

    def fresh():
        return mounter.mount([p.entry("/r", prefix, read_only=True)]) / "r"
    r = fresh()
    assert sorted(os.listdir(r)) == want
    assert sorted(os.listdir(r / "moved")) == ["a", "sub"] and (r / "moved/a").read_bytes() == b"A"
    assert os.listdir(r / "moved/sub") == [] and os.listdir(r / "empty") == []
    shutil.rmtree(root / "moved")
    os.rmdir(root / "empty")
    assert os.listdir(fresh()) == []


@pytest.mark.parametrize("kind", ["s3", "gcs", "azure"])
def test_a_name_that_is_object_and_prefix_is_a_directory_without_a_listing(mounter, _providers, kind):
    # "the directory wins" held only within the TTL of a listing of the parent: a job opening
    # files from a manifest got ENOTDIR for everything under "a/"
    p = _providers(kind)
    prefix = f"confboth/{kind}"
    _put_markers(p, {f"{prefix}/a": b"FILE", f"{prefix}/a/b": b"UNDER",
                     f"{prefix}/m/": b"xyz", f"{prefix}/m/child": b"C", f"{prefix}/plain": b"P"})
    root = mounter.mount([p.entry("/r", prefix, read_only=True)]) / "r"
    assert (root / "a/b").read_bytes() == b"UNDER"  # no listing of the parent first
    assert (root / "m/child").read_bytes() == b"C"  # a "dir/" marker with data (GCS took it for a file)
    assert (root / "plain").read_bytes() == b"P" and os.path.isfile(root / "plain")
    root2 = mounter.mount([p.entry("/r", prefix, read_only=True)]) / "r"
    assert os.path.isdir(root2 / "a") and os.path.isdir(root2 / "m")  # stat first, on a fresh mount
    assert sorted(os.listdir(root2)) == ["a", "m", "plain"] and os.listdir(root2 / "a") == ["b"]


def test_adls_folder_blobs(mounter, _providers):
    # ADLS tools mark a directory with a zero-length blob "dir" whose metadata says hdi_isfolder
    p = _providers("azure")
    prefix = "confmark/hdi"
    cc = p.server.service_client().get_container_client(p.bucket)
    for name in ("folder", "busy", "busy/sub", "lonely"):
        cc.upload_blob(f"{prefix}/{name}", b"", overwrite=True, metadata={"hdi_isfolder": "true"})
    cc.upload_blob(f"{prefix}/busy/sub/f", b"F", overwrite=True)
    root = mounter.mount([p.entry("/w", prefix)]) / "w"
    assert sorted(os.listdir(root)) == ["busy", "folder", "lonely"]
    os.rmdir(root / "folder")
    os.rename(root / "busy", root / "moved")
    os.rename(root / "lonely", root / "still-here")  # an empty directory: only its folder blob
    r = mounter.mount([p.entry("/r", prefix, read_only=True)]) / "r"
    assert sorted(os.listdir(r)) == ["moved", "still-here"] and os.listdir(r / "moved") == ["sub"]
    assert (r / "moved/sub/f").read_bytes() == b"F" and os.listdir(r / "still-here") == []
    left = sorted(b.name for b in cc.list_blobs(name_starts_with=prefix + "/"))
    # the folder blobs move, as "dir/" markers
    assert left == [f"{prefix}/moved/", f"{prefix}/moved/sub/", f"{prefix}/moved/sub/f", f"{prefix}/still-here/"]


def test_names_the_azure_client_cannot_address(mounter, _providers):
    # adlfs parses a path as a URL: "x?" and "x#" lose their last character, "a?b#c" becomes
    # "a#c?b", "a?versionid=1" is "a": such names are refused, and blobs so named not shown,
    # rather than write, read or delete another blob
    p = _providers("azure")
    prefix = "confnames/az"
    cc = p.server.service_client().get_container_client(p.bucket)
    for name in ("x", "x?", "a?versionid=1"):
        cc.upload_blob(f"{prefix}/{name}", name.encode(), overwrite=True)
    root = mounter.mount([p.entry("/w", prefix)]) / "w"
    assert os.listdir(root) == ["x"]
    for bad in ("y?", "y#", "a?b#c", "b?versionid=2", "a\\b"):  # Azure stores "a\b" as a/b
        assert errno_of(lambda: open(root / bad, "wb")) == errno.EINVAL, bad
        assert errno_of(os.mkdir, root / bad) == errno.EINVAL, bad
    (root / "src").write_bytes(b"S")
    assert errno_of(os.rename, root / "src", root / "z#") == errno.EINVAL
    for good in ("a?b", "a#b", "q?z", "sp ace"):
        (root / good).write_bytes(good.encode())
    r = mounter.mount([p.entry("/r", prefix, read_only=True)]) / "r"
    assert sorted(os.listdir(r)) == sorted(["x", "src", "a?b", "a#b", "q?z", "sp ace"])
    assert (r / "x").read_bytes() == b"x"  # not the blob "x?" nor "a?versionid=1"
    left = sorted(b.name[len(prefix) + 1:] for b in cc.list_blobs(name_starts_with=prefix + "/"))
    assert left == sorted(["x", "x?", "a?versionid=1", "src", "a?b", "a#b", "q?z", "sp ace"])


@pytest.mark.parametrize("kind", ["s3", "gcs", "azure"])
def test_names_that_are_not_utf8_are_absent_and_refused(mounter, _providers, kind):
    # object keys are UTF-8: a Latin-1 name (an old tar) was EIO on every lookup, with a
    # traceback in the log each time; it is a name no object can have
    p = _providers(kind)
    prefix = f"confnames/utf8-{kind}"
    p.make_root(prefix)
    root = mounter.mount([p.entry("/w", prefix)], inprocess=p.inprocess) / "w"
    bad = os.fsencode(root) + b"/\xe9t\xe9.txt"
    assert errno_of(os.stat, bad) == errno.ENOENT
    assert errno_of(lambda: open(bad, "wb")) == errno.EINVAL
    assert errno_of(os.mkdir, bad) == errno.EINVAL
    (root / "\u00e9t\u00e9.txt").write_bytes(b"utf8")  # the same name in UTF-8 is fine
    assert os.listdir(root) == ["\u00e9t\u00e9.txt"]


@pytest.mark.parametrize("kind", ["gcs", "azure"])  # SeaweedFS keeps empty prefixes itself
def test_a_directory_another_client_empties_goes_also_after_an_unlink_through_the_mount(mounter, _providers,
                                                                                        kind):
    # an unlink kept its directory in the daemon for good, even with other entries left in it:
    # old checkpoint steps deleted by another node went on showing here
    p = _providers(kind)
    prefix = f"confdirs/{kind}"
    p.put_many({f"{prefix}/steps/step_1/a.bin": b"a", f"{prefix}/steps/step_1/b.bin": b"b",
                f"{prefix}/steps/step_2/a.bin": b"c"})
    root = mounter.mount([p.entry("/w", prefix, metadata_ttl="1s")]) / "w"
    assert sorted(os.listdir(root / "steps/step_1")) == ["a.bin", "b.bin"]
    os.unlink(root / "steps/step_1/a.bin")
    assert os.listdir(root / "steps") == ["step_1", "step_2"]
    p.server.fs().rm(f"{p.bucket}/{prefix}/steps/step_1/b.bin")  # another node
    assert wait_for(lambda: os.listdir(root / "steps") == ["step_2"], timeout=10), os.listdir(root / "steps")
    # the last entry removed through the mount keeps its directory, for rm -r's rmdir
    os.unlink(root / "steps/step_2/a.bin")
    assert os.listdir(root / "steps/step_2") == []
    os.rmdir(root / "steps/step_2")
    assert os.listdir(root / "steps") == []
    # directories made here stay, also once a file written into one was removed again
    os.makedirs(root / "out/run1")
    (root / "out/run1/ckpt").write_bytes(b"x")
    os.unlink(root / "out/run1/ckpt")
    time.sleep(1.5)  # past metadata_ttl
    assert os.listdir(root / "out") == ["run1"] and os.listdir(root / "out/run1") == []
    (root / "out/new").write_bytes(b"n")


def _glob_renames(mounter, provider, prefix, **extra) -> None:
    provider.make_root(prefix)
    root = mounter.mount([provider.entry("/w", prefix, **extra)], inprocess=provider.inprocess) / "w"
    d = root / "exp[lr=0.1]"
    os.makedirs(d / "sub*")
    files = {"a?b": b"SRC", "axb": b"OTHER", "c[1]": b"C", "model.pt": b"OLD", "model.pt.tmp?1": b"NEW",
             "sub*/x?y": b"X", "sub*/xy": b"XY"}
    for rel, data in files.items():
        (d / rel).write_bytes(data)
    os.rename(d / "a?b", d / "dst")
    os.rename(d / "c[1]", d / "plain")
    os.replace(d / "model.pt.tmp?1", d / "model.pt")
    os.rename(d / "sub*", d / "moved[2]")
    want = {"exp[lr=0.1]/dst": sha256(b"SRC"), "exp[lr=0.1]/axb": sha256(b"OTHER"),
            "exp[lr=0.1]/plain": sha256(b"C"), "exp[lr=0.1]/model.pt": sha256(b"NEW"),
            "exp[lr=0.1]/moved[2]/x?y": sha256(b"X"), "exp[lr=0.1]/moved[2]/xy": sha256(b"XY")}
    assert _tree(root) == want
    os.rename(d, root / "done")
    want = {k.replace("exp[lr=0.1]", "done"): v for k, v in want.items()}
    assert _tree(root) == want
    fresh = mounter.mount([provider.entry("/r", prefix, read_only=True)], inprocess=provider.inprocess)
    assert _tree(fresh / "r") == want


def test_renames_of_names_with_glob_characters(mounter, wprovider, request):
    # fsspec's copy() and mv() take ?, * and [ as patterns: a rename of 'a?b' took 'axb' along,
    # an os.replace of 'model.pt.tmp?1' over 'model.pt' made 'model.pt' a directory, and
    # every rename under 'exp[lr=0.1]/' failed with ENOENT
    _glob_renames(mounter, wprovider, f"confglob/{request.node.callspec.id}")


def test_renames_of_names_with_glob_characters_s3fs_client(mounter, _providers):
    _glob_renames(mounter, _providers("s3"), "confglob/s3fs", client="fsspec")


@pytest.mark.parametrize("parent", ["file", "memory"])
def test_a_file_in_a_directory_made_by_a_nested_mount_point_uploads(mounter, tmp_path, parent):
    # /x exists only as the parent of /x/y: its new file stayed pending for ever ("not found"),
    # close and fsync failed with EIO and `unifs umount` waited
    (tmp_path / "root").mkdir()
    url = f"file://{tmp_path / 'root'}" if parent == "file" else f"memory://nested-{tmp_path.name}"
    mp = mounter.mount([{"path": "/", "url": url}, {"path": "/x/y", "url": f"memory://inner-{tmp_path.name}"}],
                       inprocess=parent == "memory")
    with open(mp / "x/f", "wb") as f:
        f.write(b"data")
        f.flush()
        os.fsync(f.fileno())
    assert (mp / "x/f").read_bytes() == b"data"
    assert sorted(os.listdir(mp / "x")) == ["f", "y"]
    if parent == "file":
        assert (tmp_path / "root/x/f").read_bytes() == b"data"
