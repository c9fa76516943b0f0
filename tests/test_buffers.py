"""Block buffers: kept without a copy when immutable, copied straight into a FUSE reply."""

import ctypes

import obstore
from obstore.store import MemoryStore

from unifs.cache.buffers import copy_to, frozen
from unifs.cache.ids import ObjectId
from unifs.cache.ram import RamTier


def _obstore_bytes(data: bytes):
    store = MemoryStore()
    obstore.put(store, "k", data)
    return obstore.get(store, "k").bytes()


def test_immutable_buffers_are_kept_as_they_are():
    b = b"abc"
    assert frozen(b) is b
    ob = _obstore_bytes(b"abc")
    assert frozen(ob) is ob
    view = memoryview(b"abcdef")[1:4]
    assert frozen(view) is view


def test_writable_buffers_are_copied_once():
    ba = bytearray(b"abc")
    out = frozen(ba)
    ba[0] = ord("z")
    assert out == b"abc" and type(out) is bytes


def test_the_ram_tier_keeps_no_reference_to_a_writable_buffer():
    ram = RamTier(1 << 20)
    bid = (ObjectId("s", "k", "v1"), 0)
    data = bytearray(b"0123")
    ram.put(bid, data)
    data[:] = b"xxxx"
    assert bytes(ram.get(bid)) == b"0123"


def test_copy_to_takes_every_kind_of_block_buffer():
    payload = bytes(range(256)) * 64
    for data in (payload, _obstore_bytes(payload), memoryview(payload)[100:5000],
                 _obstore_bytes(payload)[7:300], memoryview(_obstore_bytes(payload))[1:2]):
        dest = ctypes.create_string_buffer(len(payload))
        n = copy_to(dest, data)
        assert n == len(data)
        assert dest.raw[:n] == bytes(data)


def test_a_read_only_view_of_a_changing_buffer_is_copied():
    ba = bytearray(b"abc")
    view = memoryview(ba).toreadonly()
    out = frozen(view)
    ba[0] = ord("z")
    assert bytes(out) == b"abc"
    ob = _obstore_bytes(b"xyz")
    tail = memoryview(ob)[1:]
    assert frozen(tail) is tail  # over an immutable buffer: kept
