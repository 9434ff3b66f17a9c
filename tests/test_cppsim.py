"""hw_build.cppsim: the generated code of tiny trained designs, layer by layer (HLS in FINN's
C++ simulation with g++, RTL in Verilator), bit-exact against golden.npz and QONNX; the
compile line of hw_build.finn_env; the ElementwiseAdd BIPOLAR bug of finn-plus reproduced."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper

from hw_build import finn_env
from hw_build import finn_fixes as F

pytestmark = pytest.mark.finn
REPO = Path(__file__).resolve().parent.parent
N_IMAGES = 64  # compile time dominates; a batch of 64 exercises every layer's stream loop
PINNED_HLSLIB = "8d979e2bdced486dd25d26607d1ff5ae327ed6a8"  # ../shared/deps/finn-hlslib/PROVENANCE.md

# every shortcut kind, a 2-bit and an 8-bit input: (model, options). An 8-bit input times
# 8-bit shortcut weights becomes a DSP MVAU_rtl, whose Verilator build of a 784-wide input takes
# minutes: that combination (the thesis model's) is the slow test below.
DESIGNS = {
    "none, 8-bit input": ("B-24N,16N", {}),
    "Q, 2-bit input": ("B-D16N,12N,QN,D", {"input_bits": 2}),
    "P flat, 2-bit input": ("B-24N,16N,PN", {"pool_window": 16, "input_bits": 2}),
    "P vertical, 8-bit input": ("B-24N,16N,P", {"pool_mode": "vertical", "pool_window": 4,
                                                "shortcut_weight_bits": 2}),
    "Q, 8-bit input and weights": ("B-D16N,12N,QN,D", {}),
}
SLOW = {"Q, 8-bit input and weights"}
_BUILDS: dict[str, Path] = {}


def _design(name: str, root: Path, mnist_dir: Path) -> Path:
    """Train (1 epoch, 2,000 images), export and build to codegen once per session."""
    if name not in _BUILDS:
        from export.qonnx_export import export_run
        from hw_build.build import build
        from train.models import ModelOptions
        from train.trainer import train_run

        model, opts = DESIGNS[name]
        run = root / name.replace(" ", "_").replace(",", "")
        train_run("mnist", model, recipe="thesis", epochs=1, limit_train=2000, seed=0,
                  run_dir=run, data_dir=mnist_dir, progress=False, device="cpu",
                  options=ModelOptions(**opts))
        export_run(run, n_check=100)
        _BUILDS[name] = Path(build(run, until="codegen", progress=False)["out_dir"])
    return _BUILDS[name]


@pytest.fixture(scope="module")
def design_root(tmp_path_factory):
    return tmp_path_factory.mktemp("cppsim")


@pytest.mark.parametrize("name", [pytest.param(d, marks=pytest.mark.slow) if d in SLOW else d
                                  for d in DESIGNS])
def test_design_bit_exact(name, design_root, mnist_dir, one_thread):
    from qonnx.core.modelwrapper import ModelWrapper

    from hw_build.cppsim import run_cppsim

    out = _design(name, design_root, mnist_dir)
    res = run_cppsim(out, n=N_IMAGES, progress=False)
    assert res["identical"] == f"{N_IMAGES}/{N_IMAGES}", res
    assert res["labels_identical"] == f"{N_IMAGES}/{N_IMAGES}"
    assert res["qonnx_identical"] == f"{N_IMAGES}/{N_IMAGES}"
    rows = res["layers"]
    hls = [r for r in rows if r["op"].endswith("_hls")]
    assert hls and all(r["level"] == "cppsim" for r in hls), hls
    assert all(r["identical_to_python"] == N_IMAGES for r in rows if r["level"] != "python")
    for r in rows:  # no layer in Python execution without a reason
        assert r["level"] != "python" or r["why"], r
    from hw_build.rtlsim import verilator_status

    if verilator_status()[0]:  # every RTL layer of these designs runs in Verilator
        assert all(r["level"] == "verilator" for r in rows if r["op"].endswith("_rtl")), rows
    ops = {r["op"] for r in rows}
    assert {"MVAU_hls", "LabelSelect_hls", "StreamingFIFO_rtl"} <= ops
    if name.startswith(("Q", "P")):
        assert "ElementwiseAdd_hls" in ops
        graph = ModelWrapper(str(out / "steps" / "step_hw_codegen.onnx"))
        assert F.bipolar_elementwise_inputs(graph) == []  # the bug below cannot be reached
    if name.startswith("P"):
        assert {"ConvolutionInputGenerator_rtl", "Pool_hls"} <= ops
    assert (out / "cppsim.json").exists() and "| layer | op | level |" in \
        (out / "cppsim.md").read_text()


def test_cli(design_root, mnist_dir):
    """`python -m hw_build cppsim` on a built design (cached binaries: same batch size)."""
    out = _design("Q, 2-bit input", design_root, mnist_dir)
    run = out.parent.parent
    env = {k: v for k, v in os.environ.items() if k != "FINN_HLSLIB"}
    r = subprocess.run([sys.executable, "-m", "hw_build", "cppsim", "--run", str(run), "--n",
                        str(N_IMAGES), "--quiet"], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"identical to golden.npz: {N_IMAGES}/{N_IMAGES}" in r.stdout
    for bad, code, msg in ((["--n", "0"], 2, "must be >= 1, got 0"),
                           (["--n", "5"], 3, "FINN_HLSLIB=")):
        r = subprocess.run([sys.executable, "-m", "hw_build", "cppsim", "--run", str(run), *bad],
                           cwd=REPO, env={**env, "FINN_HLSLIB": str(run)}, capture_output=True,
                           text=True, timeout=300)
        assert r.returncode == code and msg in r.stderr and "Traceback" not in r.stderr, r.stderr


# ------------------------------------------------------------------ toolchain (hw_build.finn_env)

def test_hlslib_location(monkeypatch, tmp_path):
    assert finn_env.pinned_hlslib_commit() == PINNED_HLSLIB
    monkeypatch.delenv("FINN_HLSLIB", raising=False)
    lib, src = finn_env.finn_hlslib_dir()
    assert lib is not None and (lib / "bnn-library.h").is_file(), src
    monkeypatch.setenv("FINN_HLSLIB", str(tmp_path))  # named explicitly: no fallback
    lib, src = finn_env.finn_hlslib_dir()
    assert lib is None and "holds no bnn-library.h" in src
    ok, why = finn_env.cppsim_status()
    assert not ok and "FINN_HLSLIB" in why


def _stock_compile_line(code_dir: Path) -> tuple[list[str], list[str]]:
    """(compile-line parts, sources) finn-plus 1.6.1's compile_singlenode_code hands CppBuilder."""
    import finn.custom_op.fpgadataflow.hlsbackend as hb
    from finn.util.basic import CppBuilder

    seen = {}

    class Recorder(CppBuilder):
        def build(self, code_gen_dir):
            seen["parts"], seen["sources"] = list(self.include_paths), list(self.cpp_files)

    inst = _add_inst()
    inst.set_nodeattr("code_gen_dir_cppsim", str(code_dir))
    real = hb.CppBuilder
    hb.CppBuilder = Recorder
    try:
        inst.compile_singlenode_code()
    finally:
        hb.CppBuilder = real
    return seen["parts"], seen["sources"]


def test_compile_line_rewrite_fails_loudly_if_finn_changes(tmp_path):
    finn_env.ensure_finn()
    hls = os.environ.get("XILINX_HLS")
    parts, sources = _stock_compile_line(tmp_path)
    assert any(s.endswith("npy2stream/cnpy.cpp") for s in sources)
    lib = Path("/some/finn-hlslib")
    ours = finn_env._rewrite_compile_line(parts, hls, lib, native=False)
    assert f"-I{lib}" in ours and f"-I{finn_env.HLS_INCLUDE}" in ours
    assert f"-I{finn_env.hls4ml_ap_types()}" in ours and "-include hls_half.h" in ours
    assert not [p for p in ours if "lnx64" in p or "hlsmc++" in p or "Ip_floating" in p]
    assert "--std=c++17" in ours and "-O3" in ours and "-fno-inline" not in " ".join(ours)
    native = finn_env._rewrite_compile_line(parts, hls, lib, native=True)
    assert f"-I{hls}/include" in native and f"-I{lib}" in native
    for drop in (f"-I{hls}/include", f"-L{hls}/lnx64/lib/csim -lhlsmc++-GCC46"):
        with pytest.raises(finn_env.FinnCompatError, match="_rewrite_compile_line"):
            finn_env._rewrite_compile_line([p for p in parts if p != drop], hls, lib, False)


# ------------------------------------------------------------------ ElementwiseAdd with BIPOLAR

def _add_graph(op: str, rhs_dt: str = "INT4"):
    """lhs (BIPOLAR) + rhs -> INT5, four elements, one HW node (generic or _hls)."""
    from qonnx.core.datatype import DataType
    from qonnx.core.modelwrapper import ModelWrapper

    sh = [1, 4]
    dom = "finn.custom_op.fpgadataflow" + (".hls" if op.endswith("_hls") else "")
    node = helper.make_node(op, ["lhs", "rhs"], ["out"], domain=dom, backend="fpgadataflow",
                            lhs_dtype="BIPOLAR", rhs_dtype=rhs_dt, out_dtype="INT5",
                            lhs_shape=sh, rhs_shape=sh, out_shape=sh, PE=1, name="add")
    vi = [helper.make_tensor_value_info(t, TensorProto.FLOAT, sh) for t in ("lhs", "rhs", "out")]
    m = ModelWrapper(helper.make_model(helper.make_graph([node], "add", vi[:2], vi[2:])))
    for t, dt in (("lhs", "BIPOLAR"), ("rhs", rhs_dt), ("out", "INT5")):
        m.set_tensor_datatype(t, DataType[dt])
    return m


def _add_inst():
    from qonnx.custom_op.registry import getCustomOp

    return getCustomOp(_add_graph("ElementwiseAdd_hls").graph.node[0])


def test_elementwiseadd_bipolar_cppsim_is_wrong_and_refused(monkeypatch, tmp_path):
    """finn-plus 1.6.1: the HLS ElementwiseAdd declares a BIPOLAR input ap_int<1>, while
    execute_node streams (x+1)/2: -1 arrives as 0 (+1) and +1 as -1 (-2). Python is right."""
    import finn.core.onnx_exec as oxe
    import finn.custom_op.fpgadataflow.hlsbackend as hb
    from finn.transformation.fpgadataflow.compile_cppsim import CompileCppSim
    from finn.transformation.fpgadataflow.prepare_cppsim import PrepareCppSim
    from finn.transformation.fpgadataflow.set_exec_mode import SetExecMode

    finn_env.ensure_cppsim()
    lhs = np.array([[-1, 1, -1, 1]], dtype=np.float32)
    rhs = np.array([[0, 0, 3, -2]], dtype=np.float32)
    py = oxe.execute_onnx(_add_graph("ElementwiseAdd"), {"lhs": lhs, "rhs": rhs})["out"]
    assert py.tolist() == [[-1, 1, 2, -1]]
    m = _add_graph("ElementwiseAdd_hls").transform(PrepareCppSim()).transform(CompileCppSim())
    m = m.transform(SetExecMode("cppsim"))
    calls = []
    real = hb.npy_to_rtlsim_input
    monkeypatch.setattr(hb, "npy_to_rtlsim_input", lambda *a, **k: calls.append(1) or real(*a, **k))
    cs = oxe.execute_onnx(m, {"lhs": lhs, "rhs": rhs})["out"]
    assert cs.tolist() == [[0, -1, 3, -3]]  # the bug: off by +1 / -2
    # ... and the stock execute_node packs inputs for rtlsim even in cppsim mode (unused)
    assert len(calls) == 2
    with F.cppsim_without_rtlsim_packing():
        again = oxe.execute_onnx(m, {"lhs": lhs, "rhs": rhs})["out"]
    assert len(calls) == 2 and np.array_equal(again, cs)
    assert F.bipolar_elementwise_inputs(m) == ["add (lhs)"]
    with pytest.raises(F.FixError, match="BIPOLAR input to add"):
        m.transform(F.BipolarElementwiseGuard())
    from qonnx.core.datatype import DataType

    ok = _add_graph("ElementwiseAdd")
    ok.set_tensor_datatype("lhs", DataType["INT2"])
    assert F.bipolar_elementwise_inputs(ok) == []
    ok.transform(F.BipolarElementwiseGuard())
