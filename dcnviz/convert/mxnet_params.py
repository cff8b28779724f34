"""Reader for MXNet's NDArray-list files (``*.params``), written from the format description in
official.md §8; no MXNet, never unpickles.

File layout (all integers little-endian)::

    uint64 0x112 | uint64 0 | uint64 N | N arrays | uint64 M | M x (uint64 length, name bytes)

Each array is one of three encodings, told apart by its first uint32:

- V2 ``0xF993FAC9`` (what MXNet >= 1.0 writes): int32 storage type (0 = dense), int32 ndim, ndim int64
  dims, int32 dev_type, int32 dev_id, int32 type flag, raw C-order data;
- V1 ``0xF993FAC8``: as V2 without the storage type;
- legacy (no magic; files before mid-2017): the first uint32 *is* ndim, then ndim uint32 dims, context,
  type flag, data.

An array with ndim 0 is an empty ("none") array and its record ends after the shape. Every size is
checked against what is left of the file before anything is read or allocated, so a truncated or
corrupt file gives a :class:`~dcnviz.errors.WeightsError` naming the problem, never a crash or a hang.
Memory is bounded twice: by the file size (no read is larger than what is left) and by the model's
known size (``max_arrays`` records, ``max_elements`` values in all), both checked before a record is
read, so a crafted file of millions of tiny records is refused at its header, not after allocating an
object per record.
"""
from __future__ import annotations

import os
import struct
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from dcnviz.errors import WeightsError

LIST_MAGIC = 0x112
V1_MAGIC = 0xF993FAC8
V2_MAGIC = 0xF993FAC9
V3_MAGIC = 0xF993FACA
# mshadow type flags (official.md §8)
DTYPES = {0: np.dtype("<f4"), 1: np.dtype("<f8"), 2: np.dtype("<f2"), 3: np.dtype("u1"), 4: np.dtype("<i4"),
          5: np.dtype("i1"), 6: np.dtype("<i8")}
MAX_NDIM = 32  # far above anything a network stores; bounds the dims we read from a corrupt file
MAX_NAME = 4096
# Default bounds when the caller does not know the model: far above the official networks (about 700
# arrays, 64 million values) and far below what would exhaust memory.
MAX_ARRAYS = 100_000
MAX_ELEMENTS = 1 << 31
_EMPTY = np.zeros((0,), np.float32)
_EMPTY.flags.writeable = False  # shared by every "none" record


@dataclass
class ParamsFile:
    """Arrays of one ``.params`` file, in file order, keyed by their names (``arg:...`` / ``aux:...``).

    ``encodings`` and ``dtypes`` count the array encodings ("legacy", "v1", "v2") and element types
    found; arrays keep the dtype stored in the file (float16/float64 are not converted here).
    """

    arrays: dict[str, np.ndarray]
    encodings: Counter = field(default_factory=Counter)
    dtypes: Counter = field(default_factory=Counter)


class _Stream:
    """Sequential reads from a file of known size; every read is checked against the bytes left."""

    def __init__(self, f, size: int, path: str):
        self.f, self.size, self.path, self.pos = f, size, path, 0

    def left(self) -> int:
        return self.size - self.pos

    def need(self, n: int, what: str) -> None:
        if n > self.left():
            raise WeightsError(f"{self.path}: truncated or corrupt MXNet .params file: {what} needs {n} bytes at "
                               f"offset {self.pos}, only {self.left()} left")

    def read(self, n: int, what: str) -> bytearray:
        self.need(n, what)
        buf = bytearray(n)
        got = self.f.readinto(buf)
        if got != n:  # the file shrank while we read it
            raise WeightsError(f"{self.path}: could not read {n} bytes at offset {self.pos} ({what})")
        self.pos += n
        return buf

    def unpack(self, fmt: str, what: str):
        return struct.unpack("<" + fmt, self.read(struct.calcsize("<" + fmt), what))

    def fail(self, message: str):
        raise WeightsError(f"{self.path}: corrupt MXNet .params file: {message} (offset {self.pos})")


def sniff(head: bytes, path: str, safetensors_ok: bool = False) -> None:
    """Name the common wrong inputs (from the first 16 bytes) before trying to parse them."""
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        raise WeightsError(f"{path} is a Python pickle (e.g. a PyTorch .pt/.pth checkpoint), not an MXNet .params "
                           "file; dcnviz never unpickles files")
    if head.startswith(b"PK\x03\x04"):
        raise WeightsError(f"{path} is a zip archive (e.g. a PyTorch checkpoint or .npz), not an MXNet .params file")
    if not safetensors_ok and len(head) >= 9 and head[8:9] == b"{" and struct.unpack("<Q", head[:8])[0] < 100_000_000:
        raise WeightsError(f"{path} is a .safetensors file, not an MXNet .params file; "
                           "load it with load_model(..., weights=FILE)")


def _shape(s: _Stream, wide: bool, first: int | None, what: str) -> tuple[int, ...]:
    """A TShape: 32-bit ndim then int64 dims (V1/V2), or uint32 dims (legacy, ndim already read)."""
    ndim = first if first is not None else s.unpack("i", what + " ndim")[0]
    if not 0 <= ndim <= MAX_NDIM:
        s.fail(f"{what} has ndim {ndim}")
    dims = s.unpack(("%dq" if wide else "%dI") % ndim, what + " dims") if ndim else ()
    if any(d < 0 for d in dims):
        s.fail(f"{what} has a negative dimension {dims}")
    return tuple(int(d) for d in dims)


def _array(s: _Stream, index: int, elements_left: int) -> tuple[np.ndarray, str]:
    what = f"array {index}"
    (magic,) = s.unpack("I", what + " header")
    if magic == V2_MAGIC:
        encoding = "v2"
        (stype,) = s.unpack("i", what + " storage type")
        if stype != 0:
            raise WeightsError(f"{s.path}: {what} uses sparse storage (type {stype}); only dense arrays are supported")
        shape = _shape(s, True, None, what)
    elif magic == V1_MAGIC:
        encoding = "v1"
        shape = _shape(s, True, None, what)
    elif magic == V3_MAGIC:
        raise WeightsError(f"{s.path}: {what} uses MXNet's V3 (numpy-shape) encoding, which the Deformable ConvNets "
                           "release files do not use; re-save the file with mx.nd.save in MXNet 1.x")
    else:
        encoding = "legacy"
        shape = _shape(s, False, magic, what)
    if not shape:  # an empty ("none") array: the record ends with its shape
        return _EMPTY, encoding
    _dev_type, _dev_id, flag = s.unpack("iii", what + " context and type")
    if flag not in DTYPES:
        s.fail(f"{what} has unknown type flag {flag}")
    dtype = DTYPES[flag]
    count = 1
    for d in shape:
        count *= d
    data_what = f"{what} data {shape} {dtype.name}"
    s.need(count * dtype.itemsize, data_what)
    if count > elements_left:
        s.fail(f"{what} {shape} holds more values than the model has ({elements_left} left)")
    data = s.read(count * dtype.itemsize, data_what)
    return np.frombuffer(data, dtype=dtype).reshape(shape), encoding


def read_params(path: str | os.PathLike, progress: Callable[[int, int], None] | None = None,
                max_arrays: int = MAX_ARRAYS, max_elements: int = MAX_ELEMENTS) -> ParamsFile:
    """Read every named array of an MXNet ``.params`` file (legacy, V1 or V2 encodings).

    ``progress(done, total)`` is called after each array. ``max_arrays`` and ``max_elements`` bound the
    records and values accepted (the expected model's key and parameter counts: see
    :func:`dcnviz.convert.weights.params_limits`). Raises :class:`WeightsError` for a missing, truncated,
    corrupt, oversized or foreign file (pickles, zips and safetensors files are recognised by name).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise WeightsError(f"{path}: no such file")
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        sniff(f.read(16), path)
        f.seek(0)
        s = _Stream(f, size, path)
        if size < 24:
            raise WeightsError(f"{path}: not an MXNet .params file (only {size} bytes)")
        header, _reserved, n = s.unpack("QQQ", "file header")
        if header != LIST_MAGIC:
            raise WeightsError(f"{path}: not an MXNet .params file (header 0x{header:x}, expected 0x112)")
        if n > s.left() // 4:  # every array record takes at least 4 bytes
            s.fail(f"array count {n} does not fit in the file")
        if n > max_arrays:
            s.fail(f"{n} arrays, more than the {max_arrays} the model has")
        arrays, encodings, dtypes = [], Counter(), Counter()
        elements_left = max_elements
        for i in range(n):
            a, enc = _array(s, i, elements_left)
            elements_left -= a.size
            arrays.append(a)
            encodings[enc] += 1
            dtypes[a.dtype.name] += 1
            if progress is not None:
                progress(i + 1, n)
        (m,) = s.unpack("Q", "name count")
        if m == 0:
            raise WeightsError(f"{path}: the file holds {n} unnamed arrays (saved from a list); "
                               "expected arg:/aux: names as in a checkpoint")
        if m != n:
            s.fail(f"{m} names for {n} arrays")
        names = []
        for i in range(m):
            (length,) = s.unpack("Q", f"name {i} length")
            if length > MAX_NAME:
                s.fail(f"name {i} is {length} bytes long")
            raw = bytes(s.read(length, f"name {i}"))
            try:
                names.append(raw.decode("utf-8"))
            except UnicodeDecodeError:
                s.fail(f"name {i} is not text: {raw[:40]!r}")
        if s.left():
            s.fail(f"{s.left()} unexpected bytes after the names")
    dupes = sorted(k for k, c in Counter(names).items() if c > 1)
    if dupes:
        raise WeightsError(f"{path}: duplicate array names: {', '.join(dupes)}")
    return ParamsFile(dict(zip(names, arrays)), encodings, dtypes)
