"""Read `golden.npz`, the integer model of what the accelerator computes (numpy only).

Written on the host by `hw_build.golden.write_golden` from FINN's HW-layer graph. Layout:
- `graph`: a JSON string: {"format": 1, "meta": {...}, "input": {...}, "output": {...},
  "nodes": [{"op", "name", "inputs", "outputs", "attrs", "arrays": {role: npz key}}, ...]}
- one array per npz key named in the nodes (weights, thresholds, gather indices).
Every tensor between nodes holds integers; a tensor's values per image are flattened in FINN's
row-major (NHWC) order.
"""
from __future__ import annotations

import json
import re
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

GOLDEN_FORMAT = 1


class GoldenError(Exception):
    """golden.npz is missing, unreadable, of another format or of another build."""


@dataclass
class Golden:
    path: Path
    meta: dict
    input: dict          # {"name", "shape" (per image, FINN's), "dtype", "n_inputs"}
    output: dict         # {"name", "kind": "labels"|"int", "dtype", "n_outputs", "int_tensor"}
    nodes: list
    arrays: dict = field(repr=False)

    @property
    def build_id(self) -> str:
        return self.meta["build_id"]

    @property
    def n_inputs(self) -> int:
        return int(self.input["n_inputs"])


def read_golden(path) -> Golden:
    """Load golden.npz; raises GoldenError with the file name and what was expected."""
    path = Path(path)
    if not path.is_file():
        raise GoldenError(f"{path}: golden model not found (expected the golden.npz written by "
                          f"hw_build)")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, zlib.error, zipfile.BadZipFile) as e:
        raise GoldenError(f"{path}: not a readable golden.npz ({type(e).__name__}: {e})") from None
    if "graph" not in arrays:
        raise GoldenError(f"{path}: no 'graph' entry (expected a golden.npz written by "
                          f"hw_build.golden.write_golden)")
    try:
        doc = json.loads(str(arrays.pop("graph")))
    except json.JSONDecodeError as e:
        raise GoldenError(f"{path}: 'graph' entry is not JSON ({e})") from None
    fmt = doc.get("format")
    if fmt != GOLDEN_FORMAT:
        raise GoldenError(f"{path}: golden format {fmt!r}, this deploy package reads format "
                          f"{GOLDEN_FORMAT}")
    for key in ("meta", "input", "output", "nodes"):
        if key not in doc:
            raise GoldenError(f"{path}: graph entry lacks '{key}'")
    if "build_id" not in doc["meta"]:
        raise GoldenError(f"{path}: meta lacks 'build_id'")
    for node in doc["nodes"]:
        for role, key in node.get("arrays", {}).items():
            if key not in arrays:
                raise GoldenError(f"{path}: node {node['name']} needs array '{key}' ({role}), "
                                  f"which is missing")
    return Golden(path, doc["meta"], doc["input"], doc["output"], doc["nodes"], arrays)


# --- FINN datatypes by name (qonnx.core.datatype, re-implemented: deploy/ may not import qonnx)

_INT_RE = re.compile(r"^(U?)INT(\d+)$")


@dataclass(frozen=True)
class DType:
    name: str
    bits: int
    min: int
    max: int

    @property
    def signed(self) -> bool:
        return self.min < 0


def dtype(name: str) -> DType:
    """FINN integer DataType by name: BINARY, BIPOLAR, TERNARY, INTn, UINTn."""
    if name == "BINARY":
        return DType(name, 1, 0, 1)
    if name == "BIPOLAR":
        return DType(name, 1, -1, 1)
    if name == "TERNARY":
        return DType(name, 2, -1, 1)
    m = _INT_RE.match(name)
    if m:
        bits = int(m.group(2))
        if m.group(1):
            return DType(name, bits, 0, 2**bits - 1)
        return DType(name, bits, -(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    raise GoldenError(f"datatype {name!r} is not an integer FINN datatype (the golden model is "
                      f"integer-only)")


def smallest_int_dtype(lo: int, hi: int):
    """Smallest numpy integer dtype holding [lo, hi]."""
    for t in (np.int8, np.int16, np.int32, np.int64):
        info = np.iinfo(t)
        if info.min <= lo and hi <= info.max:
            return t
    raise GoldenError(f"range [{lo}, {hi}] does not fit in int64")


def find_build(path) -> Path:
    """A hardware build folder (holding golden.npz) from itself or from a training run folder
    (then the newest `<run>/hw/*/` that has a golden.npz)."""
    path = Path(path)
    if (path / "golden.npz").is_file():
        return path
    cands = sorted((path / "hw").glob("*/golden.npz"), key=lambda p: p.stat().st_mtime)
    if not cands:
        raise GoldenError(f"{path}: golden model not found (no golden.npz here nor in {path}/hw/*/; "
                          "build one first: python -m hw_build estimate --run <run>)")
    return cands[-1].parent
