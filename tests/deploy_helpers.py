"""Shared by tests/test_deploy.py, test_golden.py, test_notebook.py: tiny trained models taken
through the real flow (train -> export -> FINN HW graph -> golden.npz), cached per session."""
from __future__ import annotations

from pathlib import Path

import numpy as np

_CACHE: dict = {}

# every FPGA-able shortcut kind, at tiny widths (two binary hidden layers)
KINDS = {
    "none": ("B-16N,12N", {}),
    "Q": ("B-16N,12N,Q", {}),
    "QN": ("B-16N,12N,QN", {}),
    "P": ("B-16N,12N,P", {}),
    "PN-vertical": ("B-16N,12N,PN", {"pool_mode": "vertical", "pool_window": 4}),
}


def trained_run(root: Path, mnist_dir: Path, kind: str) -> Path:
    """Train (1 epoch, 2,000 real MNIST images) and export one tiny model, once per session."""
    key = ("run", kind)
    if key in _CACHE:
        return _CACHE[key]
    import torch

    from export.qonnx_export import export_run
    from train.models import ModelOptions
    from train.trainer import train_run

    torch.set_num_threads(1)
    spec, opts = KINDS[kind]
    run = Path(root) / f"run-{kind}"
    train_run("mnist", spec, recipe="thesis", epochs=1, limit_train=2000, seed=0, run_dir=run,
              data_dir=mnist_dir, progress=False, device="cpu", options=ModelOptions(**opts))
    export_run(run)
    _CACHE[key] = run
    return run


def hw_graph(root: Path, mnist_dir: Path, kind: str) -> Path:
    """hw_graph.onnx + golden.npz of one kind via hw_build.steps.HW_GRAPH_STEPS (no folding)."""
    key = ("hw", kind)
    if key in _CACHE:
        return _CACHE[key]
    from hw_build.finn_env import ensure_finn

    ensure_finn()
    from finn.builder.build_dataflow_config import DataflowBuildConfig
    from qonnx.core.modelwrapper import ModelWrapper

    from hw_build.golden import write_golden
    from hw_build.steps import HW_GRAPH_FILE, HW_GRAPH_STEPS

    run = trained_run(root, mnist_dir, kind)
    out = Path(root) / f"hw-{kind}"
    cfg = DataflowBuildConfig(output_dir=str(out), synth_clk_period_ns=10.0, board="Pynq-Z2",
                              generate_outputs=[])
    model = ModelWrapper(str(run / "model.qonnx.onnx"))
    for step in HW_GRAPH_STEPS:
        model = step(model, cfg)
    write_golden(ModelWrapper(str(out / HW_GRAPH_FILE)), out / "golden.npz",
                 {"board": "Pynq-Z2", "clk_ns": 10.0, "model": KINDS[kind][0],
                  "dataset": "mnist"})
    _CACHE[key] = out
    return out


def finn_execute(hw_graph_path: Path, x: np.ndarray, int_tensor: str) -> tuple[np.ndarray,
                                                                                np.ndarray]:
    """FINN's Python execution of the HW graph, one image at a time (batch-1 graph as built):
    (integer tensor `int_tensor` (N, n), graph output (N, k))."""
    from hw_build.finn_env import ensure_finn

    ensure_finn()
    import finn.custom_op.fpgadataflow.reshape  # noqa: F401  (registers FINN's HW Reshape op)
    from finn.core.onnx_exec import execute_onnx
    from qonnx.core.modelwrapper import ModelWrapper

    m = ModelWrapper(str(hw_graph_path))
    iname, oname = m.graph.input[0].name, m.graph.output[0].name
    shape = m.get_tensor_shape(iname)
    ints, outs = [], []
    for row in x:
        ctx = execute_onnx(m, {iname: row.astype(np.float32).reshape(shape)},
                           return_full_exec_context=True)
        ints.append(np.asarray(ctx[int_tensor]).reshape(-1))
        outs.append(np.asarray(ctx[oname]).reshape(-1))
    return np.stack(ints), np.stack(outs)


def estimate_build(root: Path, mnist_dir: Path, kind: str = "QN") -> Path:
    """hw_build.build(..., until="estimate") of one tiny run: the build folder hw_build's flow makes
    (golden.npz written by it through hw_build.golden.write_golden)."""
    key = ("build", kind)
    if key in _CACHE:
        return _CACHE[key]
    from hw_build.build import build

    run = trained_run(root, mnist_dir, kind)
    rep = build(run, until="estimate", progress=False, verify_n=0)
    _CACHE[key] = Path(rep["out_dir"])
    return _CACHE[key]


def board_package(root: Path, mnist_dir: Path) -> Path:
    """The board package (folder) of the tiny QN build, made by deploy.package."""
    if "package" in _CACHE:
        return _CACHE["package"]
    from deploy.package import build_package

    build = estimate_build(root, mnist_dir)
    pkg = build_package(build, "mnist", Path(root) / "dist", data_dir=mnist_dir)
    _CACHE["package"] = pkg
    return pkg
