"""Bit-exactness checks along the FINN flow: every numerics-changing step must reproduce the
QONNX model's integer outputs (before the final float output scale) on real test images.

The reference (`reference.npz` in the build folder) holds N test images (uint8), their labels
and the QONNX model's integer outputs: logits / (s_act * s_weight) of the output layer, exact
integers because ResBin's output quantizers have power-of-two scales.
"""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hw_build.finn_env import ensure_finn

ensure_finn()

import finn.core.onnx_exec as oxe  # noqa: E402
from qonnx.core.modelwrapper import ModelWrapper  # noqa: E402

__all__ = ["DivergenceError", "VerifyError", "Reference", "reference_batch", "integer_outputs",
           "execute", "batched_copy", "output_scale", "check_step", "verified", "load_test_set", "REFERENCE_FILE"]

REFERENCE_FILE = "reference.npz"
QONNX_FILE = "model.qonnx.onnx"


class VerifyError(RuntimeError):
    """A graph or run folder the checks cannot read (one-line message)."""


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

def _model(model) -> ModelWrapper:
    return model if isinstance(model, ModelWrapper) else ModelWrapper(str(model))


def _output_scale_qonnx(model: ModelWrapper, out: str) -> float | None:
    """s_act * s_weight of a QONNX graph ending in Gemm/MatMul of two Quant outputs (no bias)."""
    prod = model.find_producer(out)
    if prod is None or prod.op_type not in ("Gemm", "MatMul") or len(prod.input) > 2 \
            and prod.input[2]:
        return None
    scales = []
    for t in prod.input[:2]:
        q = model.find_producer(t)
        if q is None or q.op_type != "Quant":
            return None
        s = model.get_initializer(q.input[1])
        if s is None or s.size != 1:
            return None
        scales.append(float(s.reshape(())))
    return scales[0] * scales[1]


def _int_tensor(model: ModelWrapper, out_scale: float | None = None) -> tuple[str, float]:
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
    s = _output_scale_qonnx(model, out)
    if s is not None:
        return out, s
    if out_scale is not None:
        return out, out_scale
    if prod.op_type == "Mul" and model.get_initializer(prod.input[1]) is not None:
        return prod.input[0], 1.0  # the final float output scale of a streamlined graph
    raise VerifyError(f"cannot find the integer output of this graph (ends in {prod.op_type})")


def batched_copy(model: ModelWrapper, n: int) -> ModelWrapper:
    """Copy of a batch-1 graph that takes `n` images at once (the layers are row-wise)."""
    import copy

    from qonnx.custom_op.registry import getCustomOp

    b = ModelWrapper(copy.deepcopy(model.model))
    inits = {i.name for i in b.graph.initializer}
    for node in b.graph.node:
        names = {a.name for a in node.attribute}
        if node.domain.startswith("finn.custom_op.fpgadataflow"):
            inst = getCustomOp(node)
            if "numInputVectors" in names:
                v = list(inst.get_nodeattr("numInputVectors"))
                if v and v[0] == 1:
                    inst.set_nodeattr("numInputVectors", [n] + v[1:])
            for k in ("lhs_shape", "rhs_shape", "out_shape"):
                if k in names:
                    v = list(inst.get_nodeattr(k))
                    if v and v[0] == 1:
                        inst.set_nodeattr(k, [n] + v[1:])
        elif node.op_type == "Reshape" and b.get_initializer(node.input[1]) is not None:
            shp = b.get_initializer(node.input[1]).copy()
            if shp.size and shp[0] == 1:
                shp[0] = n
                b.set_initializer(node.input[1], shp)
    for vi in list(b.graph.input) + list(b.graph.output) + list(b.graph.value_info):
        dims = vi.type.tensor_type.shape.dim
        if vi.name not in inits and dims and dims[0].dim_value == 1:
            dims[0].dim_value = n
    return b


def _execute_rows(model: ModelWrapper, x: np.ndarray, tensors: list[str], full: bool) -> dict:
    inp = model.graph.input[0].name
    shape = model.get_tensor_shape(inp)
    res = {t: [] for t in tensors}
    for row in x:
        ctx = oxe.execute_onnx(model, {inp: row.astype(np.float32).reshape(shape)},
                               return_full_exec_context=full)
        for t in tensors:
            res[t].append(np.asarray(ctx[t]).reshape(-1))
    return {t: np.stack(v) for t, v in res.items()}


def execute(model, x: np.ndarray, tensors: list[str] | None = None, progress: bool = False,
            batch: int = 500) -> dict:
    """Run a batch-1 graph on the rows of `x` with FINN's Python execution; returns
    {tensor: (N, ...) array} for `tensors` (default: the graph output).

    Rows go through a batched copy of the graph (`batch` at a time, ~30x faster); the first
    rows are also run one by one and must agree exactly, else (or if batching fails) every row
    runs alone."""
    from tqdm import tqdm

    model = _model(model)
    x = np.asarray(x)
    tensors = tensors or [model.graph.output[0].name]
    full = any(t != model.graph.output[0].name for t in tensors)
    n_probe = min(3, len(x))
    probe = _execute_rows(model, x[:n_probe], tensors, full)
    out = {t: [] for t in tensors}
    bar = tqdm(total=len(x), disable=not progress, unit="img", leave=False)
    bmodels: dict[int, ModelWrapper] = {}
    try:
        for i in range(0, len(x), batch):
            chunk = x[i:i + batch]
            bm = bmodels.get(len(chunk)) or bmodels.setdefault(len(chunk),
                                                                batched_copy(model, len(chunk)))
            shape = bm.get_tensor_shape(bm.graph.input[0].name)
            ctx = oxe.execute_onnx(bm, {bm.graph.input[0].name:
                                        chunk.astype(np.float32).reshape(shape)},
                                   return_full_exec_context=full)
            for t in tensors:
                out[t].append(np.asarray(ctx[t]).reshape(len(chunk), -1))
            if i == 0 and not all(np.array_equal(out[t][0][:n_probe], probe[t]) for t in tensors):
                raise ValueError("batched execution differs from row-wise execution")
            bar.update(len(chunk))
        return {t: np.concatenate(v) for t, v in out.items()}
    except Exception:  # noqa: BLE001 - any failure of the batched copy: run the rows alone
        bar.reset()
        res = {t: [] for t in tensors}
        for row in x:
            r = _execute_rows(model, row[None], tensors, full)
            for t in tensors:
                res[t].append(r[t][0])
            bar.update(1)
        return {t: np.stack(v) for t, v in res.items()}
    finally:
        bar.close()


def output_scale(model) -> float:
    """Scale of a QONNX model's logits: logits = integer outputs * scale."""
    model = _model(model)
    s = _output_scale_qonnx(model, model.graph.output[0].name)
    if s is None:
        raise VerifyError("the QONNX model does not end in a Gemm/MatMul of two Quant outputs")
    return s


def integer_outputs(model, x_uint8: np.ndarray, progress: bool = False,
                    out_scale: float | None = None) -> np.ndarray:
    """Integer outputs (N, n_out) of a QONNX/FINN/HW graph, before the final float scale
    (`out_scale`: the QONNX model's, for FINN graphs that still end in float logits)."""
    model = _model(model)
    name, div = _int_tensor(model, out_scale)
    y = execute(model, x_uint8, [name], progress)[name].astype(np.float64) / div
    yi = np.rint(y)
    if not np.array_equal(y, yi):
        bad = int(np.argmax(np.any(y != yi, axis=1)))
        raise VerifyError(f"outputs of tensor {name} are not integers (image {bad}: "
                          f"{y[bad][:4].tolist()}...); the output scale is not a power of two?")
    return yi.astype(np.int64)


# ------------------------------------------------------------------ reference and checks

def load_test_set(run_dir: str | Path):
    """(x_test uint8, y_test) of the data set a run was trained on (from its config.json)."""
    from train.data import load_dataset

    cfg_path = Path(run_dir) / "config.json"
    try:
        config = json.loads(cfg_path.read_text())
    except (OSError, ValueError) as e:
        raise VerifyError(f"{cfg_path}: cannot read the run's config ({e})") from None
    ds = load_dataset(config["dataset"], config.get("data_dir"), download=False)
    return ds.x_test, ds.y_test


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


def verified(step, ref: Reference | str | Path):
    """Wrap a FINN build step so that its result is checked against `ref` (a Reference or the
    path of reference.npz); keeps the step's __name__ (FINN names checkpoints after it)."""
    @functools.wraps(step)
    def run(model, cfg):
        r = ref if isinstance(ref, Reference) else Reference.load(ref)
        model = step(model, cfg)
        check_step(step.__name__, model, r)
        return model
    return run

