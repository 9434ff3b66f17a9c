"""Bit-exactness checks along the FINN flow: every numerics-changing step must reproduce the
QONNX model's integer outputs (before the final float output scale) on real test images.

The reference (`reference.npz` in the build folder) holds N test images (uint8), their labels
and the QONNX model's integer outputs: logits / (s_act * s_weight) of the output layer, exact
integers because ResBin's output quantizers have power-of-two scales.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hw_build.finn_env import ensure_finn

ensure_finn()

import finn.core.onnx_exec as oxe  # noqa: E402
from qonnx.core.modelwrapper import ModelWrapper  # noqa: E402

from export import qonnx_exec  # noqa: E402
from export.qonnx_exec import (QONNX_FILE, as_model, batched_copy, load_test_set,  # noqa: E402
                               output_scale, qonnx_output_scale)

__all__ = ["DivergenceError", "VerifyError", "Reference", "reference_batch", "integer_outputs",
           "execute", "batched_copy", "output_scale", "check_step", "load_test_set", "REFERENCE_FILE",
           "int_output_tensor", "QONNX_FILE"]

REFERENCE_FILE = "reference.npz"
VerifyError = qonnx_exec.ExecError  # a graph or run folder the checks cannot read (one line)


class DivergenceError(RuntimeError):
    """A step changed the graph's integer outputs; names the step and the first image."""

    def __init__(self, step: str, n_diff: int, n: int, first: int, got, want):
        self.step, self.n_diff, self.n, self.first = step, n_diff, n, first
        super().__init__(f"{step}: integer outputs differ from the QONNX model on {n_diff} of {n} "
                         f"test images (first: image {first}, got {np.asarray(got).tolist()}, "
                         f"expected {np.asarray(want).tolist()})")


@dataclass
class Reference:
    x: np.ndarray        # (N, n_inputs) uint8, raw test inputs
    labels: np.ndarray   # (N,) int64, true labels
    y_int: np.ndarray    # (N, n_out) int64, QONNX integer outputs
    indices: np.ndarray  # (N,) positions in the test set
    out_scale: float     # logits = y_int * out_scale

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(path, x=self.x, labels=self.labels, y_int=self.y_int,
                            indices=self.indices, out_scale=np.float64(self.out_scale))
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Reference":
        try:
            d = np.load(path)
            return cls(d["x"], d["labels"], d["y_int"], d["indices"], float(d["out_scale"]))
        except (OSError, KeyError, ValueError) as e:
            raise VerifyError(f"{path}: not a reference file ({e})") from None


# ------------------------------------------------------------------ executing graphs

def int_output_tensor(model: ModelWrapper, out_scale: float | None = None) -> tuple[str, float]:
    """(tensor holding the integer outputs, divisor) for a QONNX, FINN or HW graph.

    Graphs that end in float logits (QONNX, or FINN before streamlining) are divided by the
    output scale: derived from a QONNX graph, else `out_scale` (the reference's)."""
    out = model.graph.output[0].name
    prod = model.find_producer(out)
    if prod is None:
        raise VerifyError("graph output has no producer")
    if prod.op_type in ("TopK", "LabelSelect") or prod.op_type.startswith("LabelSelect"):
        return prod.input[0], 1.0
    if prod.op_type == "StreamingDataflowPartition":
        raise VerifyError("a dataflow parent graph: execute its child (hw_graph.onnx) instead")
    if prod.op_type.startswith("MVAU"):
        return out, 1.0
    s = qonnx_output_scale(model, out)
    if s is not None:
        return out, s
    if out_scale is not None:
        return out, out_scale
    if prod.op_type == "Mul" and model.get_initializer(prod.input[1]) is not None:
        return prod.input[0], 1.0  # the final float output scale of a streamlined graph
    raise VerifyError(f"cannot find the integer output of this graph (ends in {prod.op_type})")


def execute(model, x: np.ndarray, tensors: list[str] | None = None, progress: bool = False,
            batch: int = 500) -> dict:
    """export.qonnx_exec.execute with FINN's Python execution (HW layers, partitions)."""
    return qonnx_exec.execute(model, x, tensors, progress, batch, execute_onnx=oxe.execute_onnx)


def integer_outputs(model, x_uint8: np.ndarray, progress: bool = False,
                    out_scale: float | None = None) -> np.ndarray:
    """Integer outputs (N, n_out) of a QONNX/FINN/HW graph, before the final float scale
    (`out_scale`: the QONNX model's, for FINN graphs that still end in float logits)."""
    model = as_model(model)
    name, div = int_output_tensor(model, out_scale)
    y = execute(model, x_uint8, [name], progress)[name].astype(np.float64) / div
    yi = np.rint(y)
    if not np.array_equal(y, yi):
        bad = int(np.argmax(np.any(y != yi, axis=1)))
        raise VerifyError(f"outputs of tensor {name} are not integers (image {bad}: "
                          f"{y[bad][:4].tolist()}...); the output scale is not a power of two?")
    return yi.astype(np.int64)


# ------------------------------------------------------------------ reference and checks

def reference_batch(source, n: int = 200, qonnx_model=None, progress: bool = False) -> Reference:
    """Reference for the checks: the first `n` test images and the QONNX integer outputs.

    `source`: a run folder (its data set and `model.qonnx.onnx`), or a tuple
    (x_test, y_test) together with `qonnx_model` (path or ModelWrapper)."""
    if isinstance(source, (str, Path)):
        x, y = load_test_set(source)
        qonnx_model = qonnx_model or Path(source) / QONNX_FILE
        if not Path(str(qonnx_model)).exists():
            raise VerifyError(f"{qonnx_model}: no QONNX model (run `python -m export {source}`)")
    else:
        x, y = source
        if qonnx_model is None:
            raise VerifyError("reference_batch(arrays) needs qonnx_model")
    n = min(int(n), len(x))
    x, y = np.asarray(x[:n], dtype=np.uint8), np.asarray(y[:n], dtype=np.int64)
    return Reference(x, y, integer_outputs(qonnx_model, x, progress), np.arange(n),
                     output_scale(qonnx_model))


def check_step(name: str, model, ref: Reference) -> int:
    """Raise DivergenceError unless `model` gives `ref`'s integer outputs on every image;
    returns the number of images checked."""
    got, want = integer_outputs(model, ref.x, out_scale=ref.out_scale), ref.y_int
    if got.shape != want.shape:
        raise DivergenceError(name, len(want), len(want), 0, got[0], want[0])
    diff = np.any(got != want, axis=1)
    if diff.any():
        i = int(np.argmax(diff))
        raise DivergenceError(name, int(diff.sum()), len(want), int(ref.indices[i]), got[i], want[i])
    return len(want)
