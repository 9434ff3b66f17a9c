"""hw_build.finn_fixes: each finn-plus bug reproduced with the stock behaviour, then fixed."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

from hw_build import finn_fixes as F  # noqa: F401  (sets up FINN first)
from hw_build.verify import execute

import finn.core.onnx_exec as oxe  # noqa: E402
from finn.transformation.qonnx.convert_qonnx_to_finn import ConvertQONNXtoFINN  # noqa: E402
from qonnx.core.datatype import DataType  # noqa: E402
from qonnx.core.modelwrapper import ModelWrapper  # noqa: E402
from qonnx.transformation.infer_shapes import InferShapes  # noqa: E402
from qonnx.util.basic import qonnx_make_model  # noqa: E402

pytestmark = pytest.mark.finn


def _tie_model() -> ModelWrapper:
    """INT8 x -> Mul 0.25 -> Quant(scale 0.5, INT8, ROUND): x = 1 gives 0.25 / 0.5 = 0.5, a tie."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 256])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 256])
    nodes = [helper.make_node("Mul", ["x", "c"], ["m"]),
             helper.make_node("Quant", ["m", "s", "z", "b"], ["y"], domain="qonnx.custom_op.general",
                              rounding_mode="ROUND", signed=1, narrow=0)]
    g = helper.make_graph(nodes, "ties", [x], [y])
    m = ModelWrapper(qonnx_make_model(g))
    for name, v in (("c", 0.25), ("s", 0.5), ("z", 0.0), ("b", 8.0)):
        m.set_initializer(name, np.array(v, dtype=np.float32))
    m.set_tensor_datatype("x", DataType["INT8"])
    return m.transform(InferShapes())


def _run(m: ModelWrapper, x: np.ndarray) -> np.ndarray:
    return oxe.execute_onnx(m, {"x": x})[m.graph.output[0].name]


def test_stock_conversion_rounds_ties_up_and_exact_thresholds_fix_it():
    q = _tie_model()
    x = np.arange(-128, 128, dtype=np.float32).reshape(1, 256)
    want = _run(q, x)  # Quant: round half to even
    stock = q.transform(ConvertQONNXtoFINN())
    got = _run(stock, x)
    diff = np.nonzero(got != want)[1]
    # the stock conversion rounds every tie with an even lower level up: x = 1 -> 0.5 -> 1, not 0
    assert len(diff) == 64 and x[0, diff[0]] % 4 == 1
    assert got[0, 129] == 0.5 and want[0, 129] == 0.0  # x = 1
    specs = F.quantizer_specs(_tie_model())
    fixed = _tie_model().transform(ConvertQONNXtoFINN()).transform(F.ExactThresholds(specs))
    assert np.array_equal(_run(fixed, x), want)


def test_quantizer_specs_refuse_unsupported_rounding():
    m = _tie_model()
    next(a for a in m.graph.node[1].attribute if a.name == "rounding_mode").s = b"FLOOR"
    with pytest.raises(F.FixError, match="rounding_mode FLOOR"):
        F.quantizer_specs(m)


def _bipolar_chain_model() -> ModelWrapper:
    """INT8 x -> MatMul -> MultiThreshold (sign: BIPOLAR) -> MultiThreshold (UINT2): the sign is
    absorbed into the MVAU, whose BIPOLAR output then feeds a Thresholding layer."""
    from qonnx.transformation.infer_datatypes import InferDataTypes

    c = 8
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, c])
    nodes = [helper.make_node("MatMul", ["x", "w"], ["a"]),
             helper.make_node("MultiThreshold", ["a", "t0"], ["b"], domain="qonnx.custom_op.general",
                              out_dtype="BIPOLAR", out_scale=2.0, out_bias=-1.0),
             helper.make_node("MultiThreshold", ["b", "t1"], ["y"], domain="qonnx.custom_op.general",
                              out_dtype="UINT2")]
    m = ModelWrapper(qonnx_make_model(helper.make_graph(nodes, "bipolar", [x], [y])))
    rng = np.random.default_rng(0)
    m.set_initializer("w", rng.integers(-2, 2, (c, c)).astype(np.float32))
    m.set_initializer("t0", rng.integers(-20, 20, (c, 1)).astype(np.float32))
    # thresholds on a +-1 input: below -1 (always), between (fires on +1), above +1 (never)
    m.set_initializer("t1", np.sort(rng.choice([-3.0, -1.0, 0.0, 0.5, 1.0, 2.0], (c, 2)), 1)
                      .astype(np.float32))
    m.set_tensor_datatype("x", DataType["INT8"])
    m.set_tensor_datatype("w", DataType["INT2"])
    return m.transform(InferShapes()).transform(InferDataTypes())


def _to_hw(m: ModelWrapper) -> ModelWrapper:
    from finn.transformation.fpgadataflow.convert_to_hw.quantized_matrix_vector_activation import (
        InferQuantizedMatrixVectorActivation,
    )
    from finn.transformation.fpgadataflow.convert_to_hw.thresholding import InferThresholdingLayer

    return m.transform(InferQuantizedMatrixVectorActivation()).transform(InferThresholdingLayer())


def test_stock_flow_leaves_bipolar_input_thresholding_and_fix_removes_it():
    x = np.random.default_rng(1).integers(-128, 128, (300, 8)).astype(np.float32)
    want = execute(_bipolar_chain_model(), x)["y"]
    stock = _to_hw(_bipolar_chain_model())
    assert [n.op_type for n in stock.graph.node] == ["MVAU", "Thresholding"]
    assert F.bipolar_input_thresholds(stock) == [stock.graph.node[1].name]  # the HW bug's input
    fixed = _bipolar_chain_model().transform(F.BipolarInputThresholdFix())
    assert F.bipolar_input_thresholds(fixed) == []
    assert fixed.get_tensor_datatype("b") == DataType["BINARY"]
    assert np.array_equal(execute(fixed, x)["y"], want)
    hw = _to_hw(fixed)
    assert [n.op_type for n in hw.graph.node] == ["MVAU", "Thresholding"]
    assert F.bipolar_input_thresholds(hw) == []
    assert np.array_equal(execute(hw, x)["y"], want)


def test_xnor_acc_type():
    assert F.xnor_acc_type(88) == DataType["UINT7"]
    assert F.xnor_acc_type(96) == DataType["UINT7"]
    assert F.xnor_acc_type(127) == DataType["UINT7"]
    assert F.xnor_acc_type(128) == DataType["UINT8"]
    assert F.xnor_acc_type(64) == DataType["UINT7"]
    assert F.xnor_acc_type(63) == DataType["UINT6"]
