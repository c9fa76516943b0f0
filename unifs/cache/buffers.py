"""Read-only buffers for block data, so a block passes from the store client to the FUSE reply
without a Python-level copy.

obstore hands back its response body as `obstore.Bytes`, an immutable buffer owned by Rust;
`bytes(...)` of it cost a copy of every block (a memcpy plus first-touch page faults of a fresh
allocation) and held two copies per fetch thread at once. Any immutable buffer is kept as it is;
anything writable (bytearray, a writable memoryview) could change after it is cached, so it is
copied once.
"""

from __future__ import annotations

import ctypes
from typing import Union

Buffer = Union[bytes, memoryview, "object"]  # anything with the buffer protocol


def frozen(data) -> Buffer:
    """`data` itself if it cannot change, else an immutable copy."""
    if type(data) is bytes:
        return data
    if isinstance(data, memoryview):
        # a read-only view can still be of a bytearray that changes: keep it only over
        # something immutable itself
        if data.contiguous and data.itemsize == 1 and frozen(data.obj) is data.obj:
            return data
        return bytes(data)
    with memoryview(data) as view:
        if view.readonly and view.contiguous and view.itemsize == 1:
            return data
    return bytes(data)


class _PyBuffer(ctypes.Structure):
    _fields_ = [("buf", ctypes.c_void_p), ("obj", ctypes.c_void_p), ("len", ctypes.c_ssize_t),
                ("itemsize", ctypes.c_ssize_t), ("readonly", ctypes.c_int), ("ndim", ctypes.c_int),
                ("format", ctypes.c_char_p), ("shape", ctypes.c_void_p), ("strides", ctypes.c_void_p),
                ("suboffsets", ctypes.c_void_p), ("internal", ctypes.c_void_p)]


_get_buffer = ctypes.pythonapi.PyObject_GetBuffer
_get_buffer.argtypes = [ctypes.py_object, ctypes.POINTER(_PyBuffer), ctypes.c_int]
_get_buffer.restype = ctypes.c_int
_release_buffer = ctypes.pythonapi.PyBuffer_Release
_release_buffer.argtypes = [ctypes.POINTER(_PyBuffer)]
_release_buffer.restype = None
_PyBUF_SIMPLE = 0


def copy_to(dest, data) -> int:
    """Copy the bytes of `data` (any contiguous buffer) to `dest` (a ctypes pointer or an
    address); returns their number.
    ctypes.memmove takes only bytes, and a slice to bytes would be one more copy."""
    if type(data) is bytes:
        ctypes.memmove(dest, data, len(data))
        return len(data)
    view = _PyBuffer()
    if _get_buffer(data, ctypes.byref(view), _PyBUF_SIMPLE) != 0:  # raises on failure (pythonapi)
        raise TypeError(f"not a contiguous buffer: {type(data).__name__}")
    try:
        ctypes.memmove(dest, view.buf, view.len)
        return view.len
    finally:
        _release_buffer(ctypes.byref(view))
