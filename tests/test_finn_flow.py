"""FINN flow: tiny models of each FPGA-able shortcut kind, trained briefly on real MNIST, go
through export -> HW_GRAPH_STEPS; every step is checked bit-exact against the QONNX model on
real test images, and the HW graph's layer types are asserted."""
from __future__ import annotations

import numpy as np
import pytest

from hw_build import finn_fixes as F
from hw_build import steps as S
from hw_build import verify as V

pytestmark = pytest.mark.finn
N_CHECK = 200

# (model, options, expected HW op types in graph order; the raw UINT8 input needs no
# Thresholding: the 8-bit input quantizer is the identity on it and is removed)
KINDS = {
    # Q shortcut with N; hidden width 80 > 64 makes the second layer an XNOR MVAU with MW=80
    "Q+N": ("B-80N,16N,QN", {}, ["DuplicateStreams", "MVAU", "MVAU", "MVAU",
                                 "ElementwiseAdd", "Thresholding", "MVAU", "LabelSelect"]),
    "none": ("B-32N,16N", {}, ["MVAU", "MVAU", "MVAU", "LabelSelect"]),
    "Q": ("B-32N,16N,Q", {}, ["DuplicateStreams", "MVAU", "MVAU", "MVAU",
                              "ElementwiseAdd", "Thresholding", "MVAU", "LabelSelect"]),
    "P+N": ("B-32N,16N,PN", {"pool_window": 16}, None),
    "P vertical": ("B-32N,16N,P", {"pool_mode": "vertical", "pool_window": 4}, None),
}
SLOW = {"Q", "P+N", "P vertical"}


def _train_export(root, mnist_dir, name: str, opts: dict):
    from export.qonnx_export import export_run
    from train.models import ModelOptions
    from train.trainer import train_run

    run = root / name.replace(",", "_")
    train_run("mnist", name, recipe="thesis", epochs=1, limit_train=2000, seed=0, run_dir=run,
              data_dir=mnist_dir, progress=False, device="cpu", options=ModelOptions(**opts))
    export_run(run, n_check=N_CHECK)
    return run


def _cfg(out):
    from finn.builder.build_dataflow_config import DataflowBuildConfig

    return DataflowBuildConfig(output_dir=str(out), synth_clk_period_ns=10.0, generate_outputs=[],
                               board="Pynq-Z2")


def _hw_flow(run, out, stop_before=None):
    """Run HW_GRAPH_STEPS with a bit-exact check after each; returns {step name: model}."""
    from qonnx.core.modelwrapper import ModelWrapper

    ref = V.reference_batch(run, N_CHECK)
    model, cfg, seen = ModelWrapper(str(run / "model.qonnx.onnx")), _cfg(out), {}
    for step in S.HW_GRAPH_STEPS:
        if step is stop_before:
            break
        model = step(model, cfg)
        if step.__name__ in S.NUMERIC_STEPS:
            V.check_step(step.__name__, model, ref)
        seen[step.__name__] = model
    return seen, ref


@pytest.fixture(scope="module")
def qn_flow(tmp_path_factory, mnist_dir):
    root = tmp_path_factory.mktemp("flow")
    name, opts, _ = KINDS["Q+N"]
    run = _train_export(root, mnist_dir, name, opts)
    seen, ref = _hw_flow(run, run / "hw" / "test")
    return run, seen, ref


def _assert_hw_graph(model, expected):
    ops = [n.op_type for n in model.graph.node]
    assert S.non_hw_nodes(model) == []
    if expected is not None:
        assert ops == expected
    # hidden binary layers after the first are XNOR MVAUs with a popcount accumulator
    for name, mw, acc in S.xnor_mvaus(model):
        assert acc == F.xnor_acc_type(mw).name, (name, mw, acc)
    assert F.bipolar_input_thresholds(model) == []


def test_qn_hw_graph(qn_flow):
    run, seen, ref = qn_flow
    hw = seen["step_resbin_create_dataflow_partition"]
    _assert_hw_graph(hw, KINDS["Q+N"][2])
    assert [mw for _, mw, _ in S.xnor_mvaus(hw)] == [80]
    saved = run / "hw" / "test" / S.HW_GRAPH_FILE
    assert saved.exists()
    # the saved child model executes standalone and equals QONNX on every checked image
    assert V.check_step("hw_graph.onnx", str(saved), ref) == N_CHECK
    labels = V.execute(str(saved), ref.x)[hw.graph.output[0].name].reshape(-1)
    assert np.array_equal(labels, ref.y_int.argmax(1))


def test_streamlined_graph_has_no_bipolar_input_thresholds(qn_flow):
    _, seen, _ = qn_flow
    m = seen["step_resbin_bipolar_fix"]
    assert F.bipolar_input_thresholds(m) == []
    assert {n.op_type for n in m.graph.node} <= {"MultiThreshold", "MatMul", "XnorPopcountMatMul",
                                                 "Add", "Mul"}


def test_stock_xnor_accumulator_is_too_narrow(qn_flow):
    """finn-plus' own minimize_bit_width on the same HW-layer graph: the XNOR MVAU (MW=80) gets a
    signed accumulator that cannot hold popcounts up to 80, and its thresholds get clipped."""
    from finn.transformation.fpgadataflow.minimize_accumulator_width import (
        MinimizeAccumulatorWidth,
    )
    from finn.transformation.streamline.round_thresholds import RoundAndClipThresholds
    from qonnx.core.datatype import DataType
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.custom_op.registry import getCustomOp

    _, seen, ref = qn_flow
    hw = seen["step_resbin_convert_to_hw"]
    stock = ModelWrapper(hw.model).transform(MinimizeAccumulatorWidth())
    node = next(n for n in stock.graph.node if F.is_xnor_mvau(n))
    adt = DataType[getCustomOp(node).get_nodeattr("accDataType")]
    assert adt.signed() and adt.max() < 80  # popcounts 0..80 do not fit
    before = stock.get_initializer(node.input[2]).copy()
    stock = stock.transform(RoundAndClipThresholds())
    after = stock.get_initializer(node.input[2])
    clipped = int((after != np.ceil(before)).sum())
    assert clipped > 0 and after.max() <= adt.max() + 1
    fixed = seen["step_resbin_minimize_bit_width"]
    fnode = next(n for n in fixed.graph.node if F.is_xnor_mvau(n))
    assert getCustomOp(fnode).get_nodeattr("accDataType") == "UINT7"
    assert V.check_step("fixed", fixed, ref) == N_CHECK
    # what the clipping does: an input equal to a clipped channel's weights with MW - 64 bits
    # flipped has popcount 64; it reaches the clipped threshold (64) but not the true one
    inst, mw = getCustomOp(node), getCustomOp(node).get_nodeattr("MW")
    c = int(np.argwhere(after != np.ceil(before))[0][0])
    assert np.ceil(before[c]).max() > 64
    w = stock.get_initializer(node.input[1])
    x = w[:, c].copy()
    x[: mw - 64] = 1 - x[: mw - 64]

    def layer(thresholds):
        ctx = {node.input[0]: x.reshape(1, mw).astype(np.float32), node.input[1]: w,
               node.input[2]: thresholds,
               node.output[0]: np.zeros(stock.get_tensor_shape(node.output[0]), np.float32)}
        inst.execute_node(ctx, stock.graph)
        return ctx[node.output[0]].reshape(-1)

    clipped_out, true_out = layer(after), layer(np.ceil(before))
    print(f"stock XNOR accumulator {adt.name} for MW=80: {clipped} thresholds clipped; channel {c} "
          f"at popcount 64: {clipped_out[c]:g} instead of {true_out[c]:g}")
    assert clipped_out[c] != true_out[c]


def test_divergence_names_the_step(qn_flow):
    from qonnx.core.modelwrapper import ModelWrapper

    _, seen, ref = qn_flow
    bad = ModelWrapper(seen["step_resbin_streamline"].model)
    mts = [n for n in bad.graph.node if n.op_type == "MultiThreshold"
           and bad.get_initializer(n.input[1]).shape[-1] > 1]
    assert mts
    for mt in mts:  # shift every multi-level threshold by three integers
        bad.set_initializer(mt.input[1], bad.get_initializer(mt.input[1]) + 3)
    with pytest.raises(V.DivergenceError, match=r"^broken step: integer outputs differ .*first: "
                                                r"image \d+"):
        V.check_step("broken step", bad, ref)


def test_f_shortcut_is_refused(tmp_path):
    import torch
    from qonnx.core.modelwrapper import ModelWrapper

    from export.qonnx_export import export_model
    from train.models import build_model

    torch.manual_seed(0)
    model = build_model("B-16N,F", 784, 10).eval()  # a float shortcut: not FPGA-able
    m = ModelWrapper(str(export_model(model, 784, tmp_path / "f.onnx")))
    cfg = _cfg(tmp_path / "b")
    with pytest.raises(S.NotHardwareError, match=r"cannot build these nodes as hardware: .*MatMul"):
        for step in S.HW_GRAPH_STEPS:
            m = step(m, cfg)


@pytest.mark.parametrize("kind", [pytest.param(k, marks=pytest.mark.slow) if k in SLOW else k
                                  for k in KINDS if k != "Q+N"])
def test_kind_to_hw_graph(kind, tmp_path, mnist_dir):
    name, opts, expected = KINDS[kind]
    run = _train_export(tmp_path, mnist_dir, name, opts)
    seen, _ = _hw_flow(run, tmp_path / "hw")
    hw = seen["step_resbin_create_dataflow_partition"]
    _assert_hw_graph(hw, expected)
    ops = [n.op_type for n in hw.graph.node]
    if name.endswith(("PN", "P")):
        assert {"ConvolutionInputGenerator", "Pool", "DuplicateStreams", "ElementwiseAdd"} <= set(ops)


def test_simulate_equals_qonnx(qn_flow):
    import json

    from hw_build.simulate import SimulationError, simulate

    run, _, ref = qn_flow
    res = simulate(run, limit=300, progress=False)  # finds run/hw/test/hw_graph.onnx
    assert res["identical"] == "300/300" and res["labels_equal_qonnx"] == "300/300"
    x_acc = float((ref.y_int.argmax(1) == ref.labels).mean())  # first 200 images
    assert 0.5 < res["accuracy"] <= 1.0 and 0.5 < x_acc
    assert isinstance(res["cppsim"], str) or res["cppsim"]["cppsim_identical"] > 0
    # a partial simulation has its own file: never over the whole test set's sim.json
    assert json.loads((run / "hw" / "test" / "sim-n300.json").read_text())["identical"] == "300/300"
    assert not (run / "hw" / "test" / "sim.json").exists()
    with pytest.raises(SimulationError, match="no hw_graph.onnx"):
        simulate(run / "hw")
