"""export/: Brevitas -> QONNX, self-checked against the PyTorch forward on real MNIST."""
from __future__ import annotations

import json
import shutil

import pytest

from export.qonnx_export import ExportError, check_export, export_run

pytestmark = pytest.mark.finn


@pytest.fixture(scope="module")
def run(tmp_path_factory, mnist_dir):
    from train.trainer import train_run

    r = tmp_path_factory.mktemp("export") / "run"
    train_run("mnist", "B-16N,8N,QN", recipe="thesis", epochs=1, limit_train=1000, seed=0,
              run_dir=r, data_dir=mnist_dir, progress=False, device="cpu")
    return r


def test_export_run_checks_itself(run):
    from qonnx.core.modelwrapper import ModelWrapper

    out = export_run(run, n_check=300)
    assert out == run / "model.qonnx.onnx"
    rep = json.loads((run / "export.json").read_text())
    assert rep["n_images"] == 300
    assert rep["identical_integer_outputs"] == 300 and rep["identical_labels"] == 300
    assert rep["max_abs_diff_logits"] == 0.0
    assert rep["input_datatype"] == "UINT8"
    m = ModelWrapper(str(out))
    assert m.get_tensor_datatype(m.graph.input[0].name).name == "UINT8"
    assert m.get_tensor_shape(m.graph.input[0].name) == [1, 784]


def test_tampered_model_is_an_error(run, tmp_path):
    """A QONNX model that disagrees with PyTorch is refused, naming the count and first image."""
    from qonnx.core.modelwrapper import ModelWrapper

    from export.qonnx_exec import load_test_set
    from train.trainer import load_run

    export_run(run, n_check=50)
    m = ModelWrapper(str(run / "model.qonnx.onnx"))
    # the batch-norm shift (exported as the explicit affine x * a + b)
    add = next(n for n in m.graph.node if n.op_type == "Add" and m.get_initializer(n.input[1]) is not None)
    beta = m.get_initializer(add.input[1])
    m.set_initializer(add.input[1], beta + 0.5)
    bad = tmp_path / "bad.onnx"
    m.save(str(bad))
    model, *_ = load_run(run)
    x, y = load_test_set(run)
    with pytest.raises(ExportError, match=r"QONNX differs from PyTorch on \d+ of 100 test images"):
        check_export(model, bad, x[:100], y[:100])


def test_cli(run, capsys):
    from export.__main__ import main

    assert main([str(run), "--n-check", "20"]) == 0
    out = capsys.readouterr().out
    assert "identical integer outputs  20/20" in out and "wrote" in out


def test_bad_inputs_are_one_line_errors(tmp_path, run, capsys):
    from export.__main__ import main

    with pytest.raises(ExportError, match="no trained run here"):
        export_run(tmp_path)
    assert main([str(tmp_path)]) == 2  # bad input
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    with pytest.raises(ExportError, match="--n-check must be >= 1"):
        export_run(copy, n_check=0)


def test_float_shortcut_is_refused(tmp_path, mnist_dir):
    from train.trainer import train_run

    r = tmp_path / "f"
    train_run("mnist", "B-8N,F", recipe="thesis", epochs=1, limit_train=200, seed=0, run_dir=r,
              data_dir=mnist_dir, progress=False, device="cpu")
    with pytest.raises(ExportError, match="cannot go to the FPGA .*F shortcut"):
        export_run(r)
    assert not (r / "model.qonnx.onnx").exists()


def test_export_is_deterministic(run):
    a = (export_run(run, n_check=10)).read_bytes()
    b = (export_run(run, n_check=10)).read_bytes()
    assert a == b


def test_unsigned_1bit_input_exports_exactly_and_converts_to_one_01_threshold(tmp_path, mnist_dir):
    """Brevitas exports every 1-bit quantizer as BipolarQuant (the bug export/brevitas_fixes.py
    works around); finn-plus converts 1-bit quantizers as bipolar only, so the build's first step
    makes it the exact 0/1 quantizer (hw_build.rewrites; tests/test_input1bit.py builds it)."""
    import torch
    from brevitas.export import export_qonnx
    from qonnx.core.modelwrapper import ModelWrapper

    from export.qonnx_export import export_model
    from hw_build.steps import step_resbin_qonnx_to_finn
    from train.models import ModelOptions
    from train.trainer import train_run, load_run

    r = tmp_path / "run1"
    train_run("mnist", "B-16N,QN", recipe="thesis", epochs=1, limit_train=1000, seed=0, run_dir=r,
              data_dir=mnist_dir, progress=False, device="cpu", options=ModelOptions(input_bits=1))
    model, *_ = load_run(r)
    # the bug, reproduced with the stock exporter: the {0, 1} input quantizer becomes a sign
    stock = tmp_path / "stock.onnx"
    with torch.no_grad():
        export_qonnx(model.eval(), torch.zeros(1, 784), str(stock))
    m = ModelWrapper(str(stock))
    div_out = next(n.output[0] for n in m.graph.node if n.op_type == "Div")
    assert m.find_consumer(div_out).op_type == "BipolarQuant"
    # with the workaround: a plain unsigned 1-bit Quant, and QONNX equals PyTorch
    export_run(r, n_check=200)
    rep = json.loads((r / "export.json").read_text())
    assert rep["identical_integer_outputs"] == 200 and rep["max_abs_diff_logits"] == 0.0
    fixed = ModelWrapper(str(r / "model.qonnx.onnx"))
    div_out = next(n.output[0] for n in fixed.graph.node if n.op_type == "Div")
    q = fixed.find_consumer(div_out)
    assert q.op_type == "Quant" and float(fixed.get_initializer(q.input[3])) == 1.0
    import finn.builder.build_dataflow_steps as stock
    from qonnx.custom_op.registry import getCustomOp

    from hw_build.config import make_config

    cfg = make_config(r)

    def input_quantizer(m):
        return next(n for n in m.graph.node if n.op_type == "MultiThreshold")

    with pytest.raises(AssertionError, match="Unsupported BIPOLAR scale"):  # finn-plus: a sign
        stock.step_qonnx_to_finn(ModelWrapper(str(r / "model.qonnx.onnx")), cfg)
    ours = step_resbin_qonnx_to_finn(fixed, cfg)
    mt = input_quantizer(ours)
    assert getCustomOp(mt).get_nodeattr("out_dtype") == "BINARY"
    assert ours.get_initializer(mt.input[1]).shape == (1, 1)              # one threshold


# ---- torch's float32 sqrt (docs/upstream/torch-float32-sqrt.md) ------------------------------

def test_torch_float32_sqrt_is_not_correctly_rounded():
    """The upstream bug, reproduced: torch 2.13.0 (CPU) float32 sqrt is 1 ulp off IEEE on a
    sizeable share of inputs. If this starts failing, torch is fixed; the workaround stays exact."""
    import numpy as np
    import torch

    x = torch.linspace(1e-3, 0.1, 100_000, dtype=torch.float32)
    ieee = np.sqrt(x.numpy().astype(np.float64)).astype(np.float32)  # correctly rounded
    assert np.array_equal(np.sqrt(x.numpy()), ieee)
    assert (torch.sqrt(x).numpy() != ieee).sum() > 1000


def test_exported_batchnorm_constants_are_the_ones_torch_uses(tmp_path):
    """AffineBatchNorm1d (train/models.py) hands the exporter torch's own a, b; the exporter's
    re-folded IEEE sqrt once moved an add-quantizer tie on 1 of 1,000 MNIST images."""
    import numpy as np
    import onnx
    import torch
    from onnx import numpy_helper

    from export.qonnx_export import export_model
    from train.models import AffineBatchNorm1d, ModelOptions, build_model

    torch.manual_seed(0)
    model = build_model("B-16N,QN", 784, 10, ModelOptions(), (28, 28, 1), input_max=255)
    bns = [m for m in model.modules() if isinstance(m, AffineBatchNorm1d)]
    assert len(bns) == 2
    with torch.no_grad():
        for bn in bns:
            bn.running_var.uniform_(0.01, 0.1)
            bn.running_mean.normal_()
            bn.weight.normal_()
            bn.bias.normal_()
    model.eval()
    export_model(model, 784, tmp_path / "m.onnx", input_max=255)
    inits = [numpy_helper.to_array(i).reshape(-1) for i in onnx.load(str(tmp_path / "m.onnx")).graph.initializer]
    off_ieee = 0
    for bn in bns:
        with torch.no_grad():  # what the eager PyTorch forward multiplies and adds
            a_t = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            a, b = a_t.numpy(), (bn.bias - bn.running_mean * a_t).numpy()
        assert any(i.shape == a.shape and np.array_equal(i, a) for i in inits)
        assert any(i.shape == b.shape and np.array_equal(i, b) for i in inits)
        var = (bn.running_var + bn.eps).numpy()
        ieee_a = bn.weight.detach().numpy() / np.sqrt(var.astype(np.float64)).astype(np.float32)
        off_ieee += int((ieee_a != a).sum())
    assert off_ieee > 0  # the case the workaround exists for is present in this model


def test_export_starts_no_finn():
    """The pipeline runs train -> export -> hw_build: exporting (and its QONNX execution) must
    not import FINN (a fresh interpreter, so other tests' imports do not count)."""
    import subprocess
    import sys
    from pathlib import Path

    code = ("import sys, export.qonnx_export, export.qonnx_exec; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'finn', 'hw_build', 'deploy'}))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       cwd=Path(__file__).resolve().parent.parent, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"
