"""golden.npz + deploy.sim against FINN's own Python execution of the HW graph (bit-exact)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from tests.deploy_helpers import KINDS, finn_execute, hw_graph

pytestmark = pytest.mark.finn

N_IMAGES = 200


@pytest.fixture(scope="session")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("golden")


@pytest.fixture(scope="session")
def mnist_test(mnist_dir):
    from train.data import load_dataset

    ds = load_dataset("mnist", mnist_dir, download=False)
    return ds.x_test, ds.y_test


@pytest.mark.parametrize("kind", list(KINDS))
def test_sim_equals_finn_on_real_mnist(kind, work, mnist_dir, mnist_test):
    """Every FPGA-able shortcut kind: integer logits and labels identical on real test images."""
    from deploy.sim import SimAccelerator

    out = hw_graph(work, mnist_dir, kind)
    sim = SimAccelerator(out / "golden.npz")
    x = mnist_test[0][:N_IMAGES]
    ref_int, ref_out = finn_execute(out / "hw_graph.onnx", x, sim.golden.output["int_tensor"])
    got_int = sim.execute_int(x)
    assert got_int.dtype == np.int64
    np.testing.assert_array_equal(got_int, ref_int.astype(np.int64))
    assert sim.golden.output["kind"] == "labels"
    np.testing.assert_array_equal(sim.execute(x), ref_out[:, 0].astype(np.int64))
    # the batch split inside the simulator changes nothing
    np.testing.assert_array_equal(SimAccelerator(out / "golden.npz", chunk=7).execute_int(x),
                                  got_int)
    ops = {n["op"] for n in sim.golden.nodes}
    if kind.startswith("P"):
        assert {"Gather", "Pool"} <= ops
    if kind != "none":
        assert "ElementwiseAdd" in ops
    assert any(n["op"] == "MVAU" and n["attrs"]["mode"] == "xnor" for n in sim.golden.nodes)
    # accuracy sanity: a trained model, not noise
    assert (sim.execute(mnist_test[0][:1000]) == mnist_test[1][:1000]).mean() > 0.3  # chance: 0.1


def test_golden_meta_and_build_id(work, mnist_dir):
    from deploy.golden import GOLDEN_FORMAT, read_golden
    from hw_build import golden as hg

    assert hg.GOLDEN_FORMAT == GOLDEN_FORMAT
    out = hw_graph(work, mnist_dir, "QN")
    g = read_golden(out / "golden.npz")
    assert g.meta["build_id"] == hg.build_id(str(out / "hw_graph.onnx"))
    assert g.meta["fclk_mhz"] == 100.0 and g.meta["board"] == "Pynq-Z2"
    assert g.meta["finn_version"] == "1.6.1"
    io = g.meta["io"]
    assert io["idt"] == ["UINT8"] and io["ishape_normal"] == [[1, 784]]
    assert np.prod(io["ishape_folded"][0]) == 784 and io["odt"] == ["UINT8"]
    # binary weights are stored packed: 1 bit per weight
    xnor = [n for n in g.nodes if n["op"] == "MVAU" and n["attrs"]["mode"] == "xnor"]
    w = g.arrays[xnor[0]["arrays"]["weights"]]
    assert w.dtype == np.uint8 and w.shape == (xnor[0]["attrs"]["MH"],
                                              (xnor[0]["attrs"]["MW"] + 7) // 8)


def test_threshold_modes_match_qonnx(monkeypatch):
    """Every threshold strategy of deploy.sim (compare, table, affine, estimate) == qonnx's
    multithreshold (count of x >= t) on float thresholds, duplicates and out-of-range ones."""
    from qonnx.custom_op.general.multithreshold import multithreshold

    import deploy.sim as S
    from hw_build.golden_nodes import thresholds_int as _thresholds

    rng = np.random.default_rng(0)
    cases = []
    for C, S_, lo, hi in ((5, 1, -300, 300), (7, 15, -40, 40), (3, 255, -3000, 3000),
                          (1, 255, 0, 255), (4, 31, -10**6, 10**6), (6, 1, 0, 255),
                          (6, 3, 0, 255)):
        T = np.sort(rng.uniform(lo - (hi - lo) / 5, hi + (hi - lo) / 5, (C, S_)),
                    axis=1).astype(np.float32)
        T[:, : S_ // 3] = np.round(T[:, : S_ // 3])           # integer thresholds too
        if S_ > 3:
            T[0, 1] = T[0, 2]                                   # a duplicate
        cases.append((T, lo, hi))
    ident = np.arange(1, 256, dtype=np.float32)[None, :] - 0.5  # identity requantization
    cases.append((ident, 0, 255))
    for T, lo, hi in cases:
        x = rng.integers(lo, hi + 1, (300, T.shape[0])).astype(np.float32)
        for scale, bias in ((1, 0), (1, -8), (2, -1)):
            want = multithreshold(x, T, scale, bias)
            for lut_max in (1 << 22, 0):                       # 0 forces the estimate path
                monkeypatch.setattr(S, "_LUT_MAX", lut_max)
                th = S._Threshold(_thresholds(T, "t"), scale, bias, lo, hi)
                small = (x.astype(np.uint8),) if lo >= 0 and hi <= 255 else ()
                for xin in (x, x.astype(np.int32)) + small:
                    np.testing.assert_array_equal(th(xin).astype(np.float64), want,
                                                  err_msg=f"mode {th.mode}")
    monkeypatch.undo()
    assert S._Threshold(_thresholds(ident, "t"), 1, 0, 0, 255).mode == "affine"
    assert S._Threshold(_thresholds(cases[1][0], "t"), 1, 0, -40, 40).mode == "lut"
    assert S._Threshold(_thresholds(cases[4][0], "t"), 1, 0, -10**6, 10**6).mode == "estimate"


def _synthetic_graph(path, k: int):
    """A FINN HW graph built by hand: Thresholding (UINT4 -> BIPOLAR, per channel) ->
    MVAU (BIPOLAR x BIPOLAR, no activation) -> LabelSelect (top-k, many ties)."""
    from onnx import TensorProto, helper
    from qonnx.core.datatype import DataType
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.util.basic import qonnx_make_model

    rng = np.random.default_rng(1)
    C, MH = 16, 10
    dom = "finn.custom_op.fpgadataflow"
    inp = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, C])
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, k])
    nodes = [
        helper.make_node("Thresholding", ["x", "thr"], ["b"], domain=dom,
                         backend="fpgadataflow", NumChannels=C, PE=1, numSteps=1,
                         inputDataType="UINT4", weightDataType="UINT4",
                         outputDataType="BIPOLAR", ActVal=0, name="Thresholding_0"),
        helper.make_node("MVAU", ["b", "w"], ["acc"], domain=dom, backend="fpgadataflow",
                         MW=C, MH=MH, SIMD=1, PE=1, inputDataType="BIPOLAR",
                         weightDataType="BIPOLAR", outputDataType="UINT5", accDataType="UINT5",
                         noActivation=1, binaryXnorMode=0, name="MVAU_0"),
        helper.make_node("LabelSelect", ["acc"], ["y"], domain=dom, backend="fpgadataflow",
                         Labels=MH, PE=1, K=k, inputDataType="UINT5", outputDataType="UINT8",
                         name="LabelSelect_0"),
    ]
    g = helper.make_graph(nodes, "synthetic", [inp], [out], value_info=[
        helper.make_tensor_value_info("b", TensorProto.FLOAT, [1, C]),
        helper.make_tensor_value_info("acc", TensorProto.FLOAT, [1, MH])])
    m = ModelWrapper(qonnx_make_model(g, producer_name="test"))
    m.set_initializer("thr", rng.integers(0, 16, (C, 1)).astype(np.float32) + 0.5)
    m.set_initializer("w", rng.choice([-1.0, 1.0], (C, MH)).astype(np.float32))
    m.set_tensor_datatype("x", DataType["UINT4"])
    m.set_tensor_datatype("b", DataType["BIPOLAR"])
    m.set_tensor_datatype("acc", DataType["UINT5"])
    m.set_tensor_datatype("y", DataType["UINT8"])
    m.save(str(path))
    return m


@pytest.mark.parametrize("k", [1, 3])
def test_bipolar_layers_and_topk_ties_match_finn(k, tmp_path):
    """BIPOLAR thresholds, a BIPOLAR x BIPOLAR MVAU and LabelSelect ties (ONNX TopK: the lower
    index first) as FINN executes them; input outside UINT4 is refused."""
    from deploy.accelerator import AcceleratorInputError
    from deploy.sim import SimAccelerator
    from hw_build.golden import write_golden

    _synthetic_graph(tmp_path / "g.onnx", k)
    write_golden(str(tmp_path / "g.onnx"), tmp_path / "golden.npz", {"clk_ns": 5.0})
    sim = SimAccelerator(tmp_path / "golden.npz")
    assert sim.meta["fclk_mhz"] == 200.0
    x = np.random.default_rng(2).integers(0, 16, (150, 16)).astype(np.uint8)
    ref_int, ref_out = finn_execute(tmp_path / "g.onnx", x, "acc")
    np.testing.assert_array_equal(sim.execute_int(x), ref_int)
    lab = sim.execute(x)
    np.testing.assert_array_equal(lab.reshape(len(x), -1), ref_out.astype(np.int64))
    assert (np.sort(ref_int, axis=1)[:, -1] == np.sort(ref_int, axis=1)[:, -2]).sum() > 10
    with pytest.raises(AcceleratorInputError, match=r"UINT4 \(\[0, 15\]\)"):
        sim.execute(np.full((2, 16), 16, np.uint8))


def test_dataflow_parent_is_inlined(tmp_path):
    """A parent graph (StreamingDataflowPartition) gives the golden model of its child."""
    from finn.transformation.fpgadataflow.create_dataflow_partition import (
        CreateDataflowPartition,
    )

    from deploy.sim import SimAccelerator
    from hw_build.golden import golden_doc, write_golden

    child = _synthetic_graph(tmp_path / "g.onnx", 3)
    parent = child.transform(CreateDataflowPartition())
    assert [n.op_type for n in parent.graph.node] == ["StreamingDataflowPartition"]
    d_child, _ = golden_doc(child)
    d_parent, _ = golden_doc(parent)
    assert [n["op"] for n in d_parent["nodes"]] == ["Thresholding", "MVAU", "LabelSelect"]
    assert d_parent["input"] == d_child["input"] and d_parent["output"] == d_child["output"]
    assert d_parent["meta"]["io"]["ishape_packed"] == [[1, 16, 1]]
    write_golden(parent, tmp_path / "p.npz")
    write_golden(child, tmp_path / "c.npz")
    x = np.random.default_rng(3).integers(0, 16, (60, 16)).astype(np.uint8)
    np.testing.assert_array_equal(SimAccelerator(tmp_path / "p.npz").execute(x),
                                  SimAccelerator(tmp_path / "c.npz").execute(x))


def test_write_golden_refuses_what_it_cannot_represent(tmp_path):
    from onnx import TensorProto, helper
    from qonnx.core.datatype import DataType
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.util.basic import qonnx_make_model

    from hw_build.golden import GoldenWriteError, write_golden

    dom = "finn.custom_op.fpgadataflow"
    node = helper.make_node("ElementwiseMul", ["x", "s"], ["y"], domain=dom,
                            backend="fpgadataflow", lhs_dtype="INT8", rhs_dtype="FLOAT32",
                            out_dtype="FLOAT32", lhs_shape=[1, 4], rhs_shape=[1],
                            out_shape=[1, 4], name="ElementwiseMul_0")
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                      [1, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    m = ModelWrapper(qonnx_make_model(g))
    m.set_initializer("s", np.array([0.0625], np.float32))
    m.set_tensor_datatype("x", DataType["INT8"])
    with pytest.raises(GoldenWriteError, match="ElementwiseMul_0 rhs constant: non-integer"):
        write_golden(m, tmp_path / "golden.npz", {})
    assert not (tmp_path / "golden.npz").exists()


def test_read_golden_errors(tmp_path):
    from deploy.golden import GoldenError, read_golden

    with pytest.raises(GoldenError, match="golden model not found"):
        read_golden(tmp_path / "nope.npz")
    (tmp_path / "bad.npz").write_text("not a zip")
    with pytest.raises(GoldenError, match="not a readable golden.npz"):
        read_golden(tmp_path / "bad.npz")
    np.savez(tmp_path / "old.npz", graph=np.array(json.dumps({"format": 99})))
    with pytest.raises(GoldenError, match="golden format 99"):
        read_golden(tmp_path / "old.npz")
    np.savez(tmp_path / "nograph.npz", w=np.zeros(3))
    with pytest.raises(GoldenError, match="no 'graph' entry"):
        read_golden(tmp_path / "nograph.npz")


@pytest.mark.parametrize("perm", [(0, 2, 3, 1), (0, 3, 1, 2), (0, 1, 3, 2), None])
def test_transpose_gather_index_reads_the_ints_attribute(perm):
    """A Transpose in the HW graph becomes a gather index equal to numpy's transpose (its `perm`
    is an INTS attribute; without one, ONNX reverses the axes)."""
    from onnx import TensorProto, helper
    from qonnx.core.modelwrapper import ModelWrapper

    from hw_build.golden_nodes import NODE_SPECS

    shape = [1, 2, 3, 4]
    out_shape = [shape[p] for p in (perm or reversed(range(4)))]
    kw = {"perm": list(perm)} if perm else {}
    node = helper.make_node("Transpose", ["x"], ["y"], name="T0", **kw)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)])
    model = ModelWrapper(helper.make_model(graph))
    arrays = {}
    from hw_build.golden_nodes import GoldenWriteError, node_spec

    if perm is None:  # the batch axis moves: refused with a one-line reason
        with pytest.raises(GoldenWriteError, match="batch axis first"):
            node_spec(model, node, 0, arrays)
        return
    spec = node_spec(model, node, 0, arrays)
    assert spec["op"] == "Gather" and NODE_SPECS["Transpose"]
    want = np.transpose(np.arange(24).reshape(shape), perm).reshape(-1)
    np.testing.assert_array_equal(arrays[spec["arrays"]["index"]], want)
