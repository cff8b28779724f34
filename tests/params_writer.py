"""Test helper: write an MXNet NDArray-list file (V2, legacy or V1 arrays) from numpy arrays.

The byte layout is checked against files MXNet itself wrote (tests/fixtures/params, see
``test_writer_matches_mxnet``), so the tests can make weight files for tiny models without MXNet.
"""
from __future__ import annotations

import struct

import numpy as np

FLAGS = {np.dtype("float32"): 0, np.dtype("float64"): 1, np.dtype("float16"): 2, np.dtype("uint8"): 3,
         np.dtype("int32"): 4, np.dtype("int8"): 5, np.dtype("int64"): 6}


def encode(named: dict[str, np.ndarray], version: str = "v2") -> bytes:
    out = [struct.pack("<QQQ", 0x112, 0, len(named))]
    for a in named.values():
        a = np.ascontiguousarray(a)
        if version == "legacy":
            out.append(struct.pack("<I", a.ndim) + struct.pack("<%dI" % a.ndim, *a.shape))
        elif version == "v1":
            out.append(struct.pack("<Ii", 0xF993FAC8, a.ndim) + struct.pack("<%dq" % a.ndim, *a.shape))
        else:
            out.append(struct.pack("<Iii", 0xF993FAC9, 0, a.ndim) + struct.pack("<%dq" % a.ndim, *a.shape))
        out.append(struct.pack("<iii", 1, 0, FLAGS[a.dtype]) + a.tobytes())
    out.append(struct.pack("<Q", len(named)))
    for name in named:
        b = name.encode()
        out.append(struct.pack("<Q", len(b)) + b)
    return b"".join(out)


def write(path, named: dict[str, np.ndarray], version: str = "v2") -> None:
    with open(path, "wb") as f:
        f.write(encode(named, version))
