"""1-bit (0/1) inputs through the FINN flow: binarized MNIST and a generated multi-hot IDX set,
built bit-exactly (the build checks every HW-graph step against QONNX), simulated by FINN and by
the numpy golden model, and HLS/RTL code generated."""
from __future__ import annotations

import gzip
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.finn
REPO = Path(__file__).resolve().parent.parent
MODEL = "B-D16N,12N,QN,D"   # trunk with an XNOR hidden layer and the 8-bit Q shortcut


@pytest.fixture(scope="module")
def run1(tmp_path_factory, mnist_dir):
    """Binarized MNIST: the 1-bit input quantizer on raw pixels (1 epoch, 2,000 images)."""
    from export.qonnx_export import export_run
    from train.models import ModelOptions
    from train.trainer import train_run

    run = tmp_path_factory.mktemp("in1") / "mnist-in1"
    train_run("mnist", MODEL, recipe="thesis", epochs=1, limit_train=2000, seed=0, run_dir=run,
              data_dir=mnist_dir, options=ModelOptions(input_bits=1), progress=False, device="cpu")
    export_run(run, n_check=200)
    return run


def _nodes(model) -> list[tuple]:
    from qonnx.custom_op.registry import getCustomOp

    out = []
    for n in model.graph.node:
        g = getCustomOp(n).get_nodeattr
        row = (n.op_type, g("inputDataType") if n.op_type in ("MVAU", "Thresholding", "DuplicateStreams")
               else None)
        if n.op_type == "MVAU":
            row += (g("weightDataType"), g("binaryXnorMode"))
        elif n.op_type == "Thresholding":
            row += (g("outputDataType"), g("numSteps"))
        out.append(row)
    return out


def test_binarized_mnist_builds_bit_exact_with_an_xnor_first_layer(run1):
    from qonnx.core.modelwrapper import ModelWrapper

    from deploy.sim import SimAccelerator
    from hw_build.build import build
    from hw_build.simulate import simulate
    from hw_build.verify import Reference

    # every HW-graph step (step_resbin_binary_input too) is checked on 100 test images; codegen
    # writes the HLS/RTL of every layer (the HLS MVAU would refuse a 0/1 input outside XNOR mode)
    rep = build(run1, target_fps=1e5, until="codegen", progress=False)
    out = Path(rep["out_dir"])
    nodes = _nodes(ModelWrapper(str(out / "hw_graph.onnx")))
    # the fork carries the raw pixels; the trunk's copy of the input quantizer feeds an XNOR layer,
    # the shortcut's emits the same 0/1 values typed UINT2 (two thresholds out of reach)
    assert nodes[:5] == [("DuplicateStreams", "UINT8"), ("Thresholding", "UINT8", "BINARY", 1),
                         ("Thresholding", "UINT8", "UINT2", 3), ("MVAU", "BINARY", "BINARY", 1),
                         ("MVAU", "UINT2", "INT8", 0)]
    assert sum(1 for n in nodes if n[0] == "MVAU" and n[-1] == 1) == 2    # both hidden layers XNOR
    assert not any(n[0] == "MVAU" and n[1] == "BINARY" and n[-1] == 0 for n in nodes)
    from qonnx.custom_op.registry import getCustomOp

    coded = ModelWrapper(str(out / "steps" / "step_hw_codegen.onnx"))
    gen = {n.name: Path(getCustomOp(n).get_nodeattr("code_gen_dir_ipgen")) for n in coded.graph.node}
    assert all(d.is_dir() and any(d.iterdir()) for d in gen.values())  # every layer has its code
    assert any(f.suffix == ".cpp" for d in gen.values() for f in d.rglob("*"))

    res = simulate(out, n=300, progress=False)                            # FINN execution, 300 images
    assert res["identical"] == "300/300"
    ref = Reference.load(out / "reference.npz")
    y = SimAccelerator(out / "golden.npz").execute_int(ref.x)             # numpy golden model
    assert y.shape == ref.y_int.shape and np.array_equal(y, ref.y_int)


def _write_idx(path: Path, arr: np.ndarray) -> None:
    dims = arr.shape
    head = struct.pack(">BBBB", 0, 0, 0x08, len(dims)) + b"".join(struct.pack(">I", d) for d in dims)
    with gzip.open(path, "wb") as f:
        f.write(head + arr.astype(np.uint8).tobytes())


def _multi_hot_idx(d: Path, n_train=12000, n_test=300, n_words=64, seed=0) -> Path:
    """A multi-hot 'bag of words' set as IDX (1 x 64 'images', a word present = 255): the label
    is which of three word groups holds the most present words (IDX sets hold out the last
    10,000 training examples for validation)."""
    rng = np.random.default_rng(seed)
    d.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("t10k", n_test)):
        x = (rng.random((n, n_words)) < rng.uniform(0.05, 0.4, (n, 1))).astype(np.uint8)
        y = np.argmax(np.stack([x[:, g::3].sum(1) for g in range(3)], 1) * 10 + np.arange(3), 1)
        _write_idx(d / f"{split}-images-idx3-ubyte.gz", (255 * x).reshape(n, 1, n_words))
        _write_idx(d / f"{split}-labels-idx1-ubyte.gz", y.astype(np.uint8))
    return d


def test_multi_hot_idx_end_to_end_with_the_clis(tmp_path):
    """What `make sim DATASET=idx:<dir> INPUT_BITS=1` runs: train, export, estimate, simulate."""
    data = _multi_hot_idx(tmp_path / "words")
    env = {**os.environ, "RESBIN_RUNS": str(tmp_path / "runs")}
    py = [sys.executable, "-m"]
    run = tmp_path / "runs" / "words-in1"
    subprocess.run(py + ["train", "--dataset", f"idx:{data}", "--model", "B-16N,QN,D", "--input-bits", "1",
                         "--recipe", "thesis", "--epochs", "2", "--run-dir", str(run), "--device", "cpu",
                         "--threads", "1", "--no-progress"], cwd=REPO, env=env, check=True,
                   capture_output=True)
    r = subprocess.run(py + ["hw_build", "sim", "--run", str(run), "--target-fps", "1e5", "--quiet"],
                       cwd=REPO, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "identical: 300/300" in r.stdout
