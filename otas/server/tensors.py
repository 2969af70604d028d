"""Tensor data laid out as the Open Inference Protocol's binary forms (the HTTP binary tensor
extension, gRPC raw contents): row-major little-endian elements, no padding; a BYTES element is a
4-byte little-endian length followed by that many bytes. Pure numpy."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from otas.server.errors import ProtocolError

DTYPES = {
    "BOOL": np.dtype("?"),
    "UINT8": np.dtype("u1"),
    "INT32": np.dtype("<i4"),
    "FP32": np.dtype("<f4"),
}
"""Fixed-size datatypes this server reads (UINT8, FP32) or writes, by protocol name (BYTES has no fixed size)."""


def element_count(shape: Sequence[int]) -> int:
    """Elements of a tensor of `shape` (a Python int: no overflow for absurd shapes)."""
    n = 1
    for s in shape:
        n *= int(s)
    return n


def split_bytes(raw: bytes | memoryview, count: int, what: str) -> list[bytes]:
    """A serialized BYTES tensor of `count` elements -> the elements; every declared length is
    checked against the bytes present before anything is copied."""
    view, out, i = memoryview(raw), [], 0
    n = len(view)
    for k in range(count):
        if i + 4 > n:
            raise ProtocolError(
                400, "bad_shape" if i == n else "bad_payload",
                f"{what}: {n} bytes hold {k} of the {count} BYTES elements the shape declares; send each "
                "element as a 4-byte little-endian length followed by its bytes, and a shape that counts them",
            )  # fmt: skip
        size = int.from_bytes(view[i : i + 4], "little")
        i += 4
        if size > n - i:
            raise ProtocolError(
                400, "bad_payload",
                f"{what}: element {k} declares {size} bytes but only {n - i} remain; send whole elements",
            )  # fmt: skip
        out.append(bytes(view[i : i + size]))
        i += size
    if i != n:
        raise ProtocolError(
            400, "bad_shape", f"{what}: {n - i} bytes follow the {count} BYTES elements the shape declares; "
            "make the shape match the elements sent",
        )  # fmt: skip
    return out


def join_bytes(items: Sequence[bytes]) -> bytes:
    """Elements -> a serialized BYTES tensor."""
    return b"".join(len(x).to_bytes(4, "little") + x for x in items)


def to_raw(datatype: str, data: np.ndarray | Sequence[str]) -> bytes:
    """An output's elements -> its binary form."""
    if datatype == "BYTES":
        return join_bytes([s.encode() for s in data])
    return np.ascontiguousarray(data, dtype=DTYPES[datatype]).tobytes()


def from_raw(datatype: str, raw: bytes | memoryview, shape: Sequence[int], what: str) -> np.ndarray:
    """A fixed-size tensor's binary form -> a flat array, after checking its size against the shape."""
    dtype = DTYPES[datatype]
    want = element_count(shape) * dtype.itemsize
    if len(raw) != want:
        raise ProtocolError(
            400, "bad_shape",
            f"{what}: {len(raw)} bytes of {datatype} data, but shape {list(shape)} needs {want}; "
            "make binary_data_size and the shape agree",
        )  # fmt: skip
    return np.frombuffer(raw, dtype=dtype)
