"""Execute QONNX/FINN graphs on rows of data with qonnx's Python execution, batched (export's
check against PyTorch; hw_build.verify uses the same code with FINN's executor for HW graphs).
Nothing here imports FINN."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from qonnx.core.modelwrapper import ModelWrapper

__all__ = ["ExecError", "QONNX_FILE", "as_model", "batched_copy", "execute", "output_scale",
           "qonnx_output_scale", "load_test_set"]

QONNX_FILE = "model.qonnx.onnx"


class ExecError(RuntimeError):
    """A graph or run folder that cannot be read or executed (one-line message)."""


def _qonnx_execute_onnx(*args, **kwargs):
    from qonnx.core.onnx_exec import execute_onnx

    return execute_onnx(*args, **kwargs)


def as_model(model) -> ModelWrapper:
    return model if isinstance(model, ModelWrapper) else ModelWrapper(str(model))


def qonnx_output_scale(model: ModelWrapper, out: str) -> float | None:
    """The logits' scale s_act * s_weight of a QONNX graph ending in Gemm/MatMul of two Quant outputs (no bias), else None."""
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


def _execute_rows(model: ModelWrapper, x: np.ndarray, tensors: list[str], full: bool,
                  execute_onnx) -> dict:
    inp = model.graph.input[0].name
    shape = model.get_tensor_shape(inp)
    res = {t: [] for t in tensors}
    for row in x:
        ctx = execute_onnx(model, {inp: row.astype(np.float32).reshape(shape)},
                               return_full_exec_context=full)
        for t in tensors:
            res[t].append(np.asarray(ctx[t]).reshape(-1))
    return {t: np.stack(v) for t, v in res.items()}


def execute(model, x: np.ndarray, tensors: list[str] | None = None, progress: bool = False,
            batch: int = 500, execute_onnx=_qonnx_execute_onnx) -> dict:
    """Run a batch-1 graph on the rows of `x` with `execute_onnx` (qonnx's; hw_build passes
    FINN's); returns {tensor: (N, ...) array} for `tensors` (default: the graph output).

    Rows go through a batched copy of the graph (`batch` at a time, ~30x faster); the first
    rows are also run one by one and must agree exactly, else (or if batching fails) every row
    runs alone."""
    from tqdm import tqdm

    model = as_model(model)
    x = np.asarray(x)
    tensors = tensors or [model.graph.output[0].name]
    full = any(t != model.graph.output[0].name for t in tensors)
    n_probe = min(3, len(x))
    probe = _execute_rows(model, x[:n_probe], tensors, full, execute_onnx)
    out = {t: [] for t in tensors}
    bar = tqdm(total=len(x), disable=not progress, unit="img", leave=False)
    bmodels: dict[int, ModelWrapper] = {}
    try:
        for i in range(0, len(x), batch):
            chunk = x[i:i + batch]
            bm = bmodels.get(len(chunk)) or bmodels.setdefault(len(chunk),
                                                                batched_copy(model, len(chunk)))
            shape = bm.get_tensor_shape(bm.graph.input[0].name)
            ctx = execute_onnx(bm, {bm.graph.input[0].name:
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
            r = _execute_rows(model, row[None], tensors, full, execute_onnx)
            for t in tensors:
                res[t].append(r[t][0])
            bar.update(1)
        return {t: np.stack(v) for t, v in res.items()}
    finally:
        bar.close()


def output_scale(model) -> float:
    """Scale of a QONNX model's logits: logits = integer outputs * scale."""
    model = as_model(model)
    s = qonnx_output_scale(model, model.graph.output[0].name)
    if s is None:
        raise ExecError("the QONNX model does not end in a Gemm/MatMul of two Quant outputs")
    return s


def load_test_set(run_dir: str | Path):
    """(x_test uint8, y_test) of the data set a run was trained on (from its config.json)."""
    from train.data import load_dataset

    cfg_path = Path(run_dir) / "config.json"
    try:
        config = json.loads(cfg_path.read_text())
    except (OSError, ValueError) as e:
        raise ExecError(f"{cfg_path}: cannot read the run's config ({e})") from None
    ds = load_dataset(config["dataset"], config.get("data_dir"), download=False)
    return ds.x_test, ds.y_test
