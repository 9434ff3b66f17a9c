"""FINN's IODMA byte layout, re-implemented with numpy (deploy/ cannot import FINN).

FINN's PYNQ driver packs with `finnpy_to_packed_bytearray(x_folded, dt, reverse_inner=True,
reverse_endian=True)` and unpacks with `packed_bytearray_to_finnpy(..., reverse_inner=True,
reverse_endian=True)` (finn/util/data_packing.py). Both reverses together give this layout:

- The data are first reshaped to the *folded* shape `(N, ..., fold, SIMD)` of the first (input)
  or last (output) layer; each innermost row of SIMD (or PE) values is one stream word.
- A word is packed little-endian: value j occupies bits [j*b, (j+1)*b) (b = datatype bits,
  two's complement for signed types, BIPOLAR -1/+1 as bit 0/1), bit 0 of the word is bit 0 of
  byte 0, and the word is zero-padded to ceil(SIMD*b/8) bytes.
- So for UINT8 input the packed buffer is just the image bytes, and for a UINT8 label output
  it is one byte per label.

tests/test_deploy.py checks this against FINN's own functions for the datatypes in use.
"""
from __future__ import annotations

import numpy as np

from deploy.golden import dtype


def packed_width(n_values: int, dt_name: str) -> int:
    """Bytes of one packed word of `n_values` values."""
    return (n_values * dtype(dt_name).bits + 7) // 8


def pack(x: np.ndarray, dt_name: str) -> np.ndarray:
    """Integer values (..., n) of FINN datatype `dt_name` -> uint8 (..., packed_width(n))."""
    d = dtype(dt_name)
    x = np.asarray(x)
    n = x.shape[-1]
    if d.bits == 8 and x.dtype in (np.uint8, np.int8):
        return np.ascontiguousarray(x).view(np.uint8)  # one byte per value: nothing to pack
    v = x.astype(np.int64)
    if d.name == "BIPOLAR":
        v = (v + 1) // 2
    v = (v & ((1 << d.bits) - 1)).astype("<u8")
    bits = np.unpackbits(v.view(np.uint8).reshape(v.shape + (8,)), axis=-1,
                         bitorder="little")[..., : d.bits]          # (..., n, b), LSB first
    bits = bits.reshape(x.shape[:-1] + (n * d.bits,))
    pad = (-bits.shape[-1]) % 8
    if pad:
        bits = np.concatenate([bits, np.zeros(bits.shape[:-1] + (pad,), np.uint8)], axis=-1)
    return np.packbits(bits, axis=-1, bitorder="little")


def unpack(buf: np.ndarray, dt_name: str, n: int) -> np.ndarray:
    """uint8 (..., packed_width(n)) -> int64 values (..., n) of FINN datatype `dt_name`."""
    d = dtype(dt_name)
    buf = np.ascontiguousarray(buf, dtype=np.uint8)
    if d.bits == 8:
        return buf[..., :n].view(np.int8 if d.signed and d.name != "BIPOLAR" else np.uint8) \
            .astype(np.int64) if d.name != "BIPOLAR" else 2 * buf[..., :n].astype(np.int64) - 1
    bits = np.unpackbits(buf, axis=-1, bitorder="little")[..., : n * d.bits]
    bits = bits.reshape(buf.shape[:-1] + (n, d.bits)).astype(np.int64)
    v = (bits << np.arange(d.bits, dtype=np.int64)).sum(axis=-1)
    if d.name == "BIPOLAR":
        return 2 * v - 1
    if d.signed:
        v = np.where(v >= (1 << (d.bits - 1)), v - (1 << d.bits), v)
    return v
