"""hw_build: boards, estimate reports, fit check, explicit folding, resume, the stop without Vivado."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hw_build_helpers import estimate_build, tiny_run

pytestmark = pytest.mark.finn
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def run(tmp_path_factory, mnist_dir):
    return tiny_run(tmp_path_factory.mktemp("hwrun"), mnist_dir)


@pytest.fixture(scope="session")
def auto_report(run):
    return estimate_build(run)


# ---- boards ---------------------------------------------------------------------------------

def test_boards_match_finn_parts_and_unknown_board_is_one_line():
    from hw_build.boards import BOARDS, BoardError, get_board
    from hw_build.finn_env import ensure_finn

    ensure_finn()
    from finn.util.basic import pynq_part_map

    for b in BOARDS.values():
        assert pynq_part_map[b.finn_board] == b.part, b.name
    z2 = get_board("pynq-z2")
    assert (z2.lut, z2.bram18, z2.dsp) == (53_200, 280, 220)
    assert get_board("KV260_SOM").name == "KV260"
    with pytest.raises(BoardError) as e:
        get_board("Arty-A7")
    msg = str(e.value)
    assert "\n" not in msg and "Arty-A7" in msg and all(n in msg for n in BOARDS)


# ---- estimate build and its reports -----------------------------------------------------------

def test_estimate_report_fields(run, auto_report):
    out = Path(auto_report["out_dir"])
    assert out == run / "hw" / "Pynq-Z2-auto"
    rep = json.loads((out / "report.json").read_text())
    for k in ("estimated_fps", "max_cycles", "latency_cycles", "latency_us", "resources",
              "finn_resources", "capacity", "fits", "layers", "stored_bits", "folding",
              "folding_source", "bottleneck", "model", "dataset", "board", "clock_mhz"):
        assert k in rep, k
    assert rep["model"] == "B-D16N,12N,QN,D" and rep["board"] == "Pynq-Z2"
    assert rep["fits"] is True
    assert rep["estimated_fps"] == pytest.approx(100e6 / rep["max_cycles"])
    assert rep["max_cycles"] == max(L["cycles"] for L in rep["layers"])
    assert rep["latency_cycles"] >= rep["max_cycles"]
    for r in ("LUT", "BRAM_18K", "DSP"):
        assert rep["resources"][r] == pytest.approx(sum(L[r] for L in rep["layers"]))
    # stored bits = initializer sizes x the datatypes FINN stores them in
    mvaus = [L for L in rep["layers"] if L["op_type"].startswith("MVAU")]
    assert len(mvaus) == 4  # first trunk layer, XNOR layer, Q shortcut, output layer
    from qonnx.core.datatype import DataType

    from hw_build.finn_env import ensure_finn

    ensure_finn()
    from qonnx.core.modelwrapper import ModelWrapper

    m = ModelWrapper(str(out / "steps" / "step_resbin_estimate.onnx"))
    for L in mvaus:
        node = m.get_node_from_name(L["name"])
        w = m.get_initializer(node.input[1])
        assert L["weight_bits"] == w.size * DataType[L["weight_dtype"]].bitwidth()
    xnor = [L for L in mvaus if L["folding"].get("binaryXnorMode") == 1]
    assert [L["weight_bits"] for L in xnor] == [16 * 12]  # 1 bit per weight
    assert rep["stored_bits"]["weights"] == sum(L["weight_bits"] for L in rep["layers"])
    assert rep["stored_bits"]["thresholds"] > 0
    # folding used: every MVAU's PE/SIMD in the saved FINN folding file
    fold = json.loads((out / "folding_config.json").read_text())
    for L in mvaus:
        assert fold[L["name"]]["PE"] == L["folding"]["PE"]
        assert fold[L["name"]]["SIMD"] == L["folding"]["SIMD"]
    md = (out / "report.md").read_text()
    assert "fps" in md and "| LUT |" in md and mvaus[0]["name"] in md
    assert (out / "golden.npz").exists() and (out / "hw_graph.onnx").exists()
    state = json.loads((out / "build_state.json").read_text())
    assert state["completed"][-1] == "step_resbin_golden"
    assert "step_hw_codegen" not in state["completed"]
    # FINN's own reports are kept beside ours and agree on the frame rate
    perf = json.loads((out / "report" / "estimate_network_performance.json").read_text())
    assert perf["max_cycles"] == rep["max_cycles"]


def test_fit_check_refuses_before_codegen(run, tmp_path):
    from hw_build.boards import Board
    from hw_build.build import build
    from hw_build.estimate import DoesNotFitError

    tiny = Board("Tiny-FPGA", "Pynq-Z2", "xc7z020clg400-1", lut=400, ff=800, bram18=2, dsp=0, uram=0)
    out = tmp_path / "nofit"
    with pytest.raises(DoesNotFitError) as e:
        build(run, board=tiny, target_fps=1e5, until="codegen", out_dir=out, progress=False)
    msg = str(e.value)
    assert "\n" not in msg and "Tiny-FPGA" in msg and "LUT" in msg and "> 360" in msg  # 90 % of 400
    assert "budget: 90 % of the board" in msg
    assert "hint" in msg and "target-fps" in msg
    state = json.loads((out / "build_state.json").read_text())
    assert "step_resbin_estimate" in state["completed"]
    assert "step_hw_codegen" not in state["completed"]  # refused before any code generation
    assert json.loads((out / "report.json").read_text())["fits"] is False


def test_cli_does_not_fit_exit_code(run, tmp_path):
    # a frame rate no Pynq-Z2 folding reaches within its LUTs: exit 4, one line with the numbers
    r = _cli("estimate", "--run", str(run), "--target-fps", "1e9", "--out", str(tmp_path / "o"),
             "--quiet", env_extra={"FINN_BUILD_DIR": str(tmp_path / "finn")})
    assert r.returncode == 4, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("hw_build: design does not fit Pynq-Z2") and "LUT" in last


def test_explicit_folding_file(run, auto_report, tmp_path):
    from hw_build.build import build
    from hw_build.folding import FoldingError

    fold = json.loads((Path(auto_report["out_dir"]) / "folding_config.json").read_text())
    mvaus = [k for k, v in fold.items() if k.startswith("MVAU")]
    for k in mvaus:  # the slowest folding: one multiply-accumulate at a time
        fold[k].update(PE=1, SIMD=1)
    f = tmp_path / "slow.json"
    f.write_text(json.dumps(fold))
    rep = build(run, folding=f, until="estimate", progress=False)
    # named by the file's name and content: another slow.json elsewhere gets its own folder
    assert Path(rep["out_dir"]).name.startswith("Pynq-Z2-folding-slow-")
    got = {L["name"]: L for L in rep["layers"]}
    for k in mvaus:
        assert (got[k]["folding"]["PE"], got[k]["folding"]["SIMD"]) == (1, 1)
    assert rep["estimated_fps"] < auto_report["estimated_fps"]
    assert rep["max_cycles"] == 784 * 16  # the first layer, MW x MH cycles
    # bad files: one-line errors naming the file and the problem
    bad = dict(fold, MVAU_hls_99={"PE": 2})
    f2 = tmp_path / "bad.json"
    f2.write_text(json.dumps(bad))
    with pytest.raises(FoldingError, match="MVAU_hls_99"):
        build(run, folding=f2, until="estimate", out_dir=tmp_path / "b1", progress=False)
    nodiv = json.loads(json.dumps(fold))
    nodiv[mvaus[0]]["PE"] = 5  # 5 divides none of 16, 12, 10
    f3 = tmp_path / "nodiv.json"
    f3.write_text(json.dumps(nodiv))
    with pytest.raises(FoldingError, match="must divide"):
        build(run, folding=f3, until="estimate", out_dir=tmp_path / "b2", progress=False)


def test_resume_after_interrupted_step(run, auto_report, tmp_path, capsys, monkeypatch):
    import hw_build.build_steps as build_steps
    from hw_build.build import build

    def interrupted(model, cfg):  # Ctrl-C in the step after the folding
        raise KeyboardInterrupt("interrupted")

    interrupted.__name__ = "step_resbin_minimize_bit_width_folded"
    out = tmp_path / "resume"
    with monkeypatch.context() as m:
        m.setattr(build_steps, "step_resbin_minimize_bit_width_folded", interrupted)
        with pytest.raises(KeyboardInterrupt):
            build(run, until="estimate", out_dir=out)
    state = json.loads((out / "build_state.json").read_text())
    assert state["completed"][-1] == "step_resbin_folding"
    assert not (out / "report.json").exists()
    capsys.readouterr()
    rep = build(run, until="estimate", out_dir=out)
    err = capsys.readouterr().err
    ran = [ln.split("] ")[1] for ln in err.splitlines() if ln.startswith("[hw_build ")]
    assert "resuming" in err and "after step_resbin_folding" in err
    assert ran == ["step_resbin_minimize_bit_width_folded", "step_resbin_estimate",
                   "step_resbin_golden"]
    # the resumed build equals an uninterrupted one
    assert rep["max_cycles"] == auto_report["max_cycles"]
    assert rep["resources"] == auto_report["resources"]
    # a finished build is reused as is; another configuration in the same folder starts over
    build(run, until="estimate", out_dir=out)
    assert not [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("[hw_build ")]
    build(run, until="estimate", out_dir=out, target_fps=1e4)
    err = capsys.readouterr().err
    assert "another configuration" in err
    # ... and takes the HW graph (same QONNX model) from a sibling build instead of redoing it
    from hw_build.steps import HW_GRAPH_STEPS

    assert f"reusing {len(HW_GRAPH_STEPS) + 1} steps" in err  # the HW-graph steps + specialize
    ran = [ln.split("] ")[1] for ln in err.splitlines() if ln.startswith("[hw_build ")]
    assert ran[0] == "step_resbin_folding"


def _cli(*args, env_extra=None):
    env = dict(os.environ)
    for k in ("XILINX_VIVADO", "XILINX_HLS"):
        env.pop(k, None)
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "hw_build", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)


def test_cli_bitstream_without_vivado_exits_3(run, auto_report, tmp_path):
    from hw_build.finn_env import tools

    t = tools()
    if t["vitis_hls"]["found"] and t["vivado"]["found"]:
        pytest.skip("Vivado and Vitis HLS are installed here: the build would not stop")
    r = _cli("bitstream", "--run", str(run), "--quiet",
             env_extra={"FINN_BUILD_DIR": str(tmp_path / "finn")})
    assert r.returncode == 3, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    msg = lines[0]
    assert msg.startswith("hw_build: ")
    assert ("vitis_hls" in msg or "vivado" in msg) and "step_hw_ipgen" in msg
    assert "report.json" in msg and "HLS/RTL code of" in msg
    # it resumed the session's estimate build, ran code generation, and stopped before ipgen
    out = Path(auto_report["out_dir"])
    state = json.loads((out / "build_state.json").read_text())
    assert state["completed"][-1] == "step_hw_codegen"
    assert state["status"].startswith("stopped before step_hw_ipgen")
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.custom_op.registry import getCustomOp

    m = ModelWrapper(str(out / "steps" / "step_hw_codegen.onnx"))
    gen = [getCustomOp(n).get_nodeattr("code_gen_dir_ipgen") for n in m.graph.node]
    assert gen and all(d and Path(d).is_dir() and any(Path(d).iterdir()) for d in gen)
    assert str(tmp_path / "finn") in gen[0]
    # an HLS layer got its C++ source, an RTL layer its Verilog
    files = [p.name for d in gen for p in Path(d).rglob("*")]
    assert any(f.endswith(".cpp") for f in files)


def test_cli_help_and_user_error(tmp_path):
    r = _cli("estimate", "--help")
    assert r.returncode == 0 and "exit codes" in r.stdout and "3" in r.stdout
    r = _cli("estimate", "--run", str(tmp_path / "nope"))
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [f"hw_build: {tmp_path / 'nope'}: no such run folder"]
    r = _cli("estimate", "--run", str(tmp_path), "--board", "Arty")
    assert r.returncode == 2 and "unknown board" in r.stderr


def test_bench_table_names_options_and_counts_identical_images(run, auto_report, tmp_path):
    from bench.hw import bench

    rows = bench([run], targets=["auto"], out=tmp_path / "hw.md", n=300, progress=False)
    assert len(rows) == 1 and rows[0]["fits"] is True
    assert rows[0]["estimated_fps"] == auto_report["estimated_fps"]  # the same build, resumed
    assert rows[0]["identical"] == "300/300" and rows[0]["sim_images"] == 300
    md = (tmp_path / "hw.md").read_text()
    assert "| `B-D16N,12N,QN,D` | auto |" in md and "300/300" in md
    assert json.loads((tmp_path / "hw.json").read_text())[0]["model"] == "B-D16N,12N,QN,D"


def test_deployed_size_predicts_what_finn_stores(run, auto_report):
    """train.models.deployed_size (before any FINN build) against what the build stores
    (hw_build.estimate.stored_bits): weight bits and threshold counts exactly, threshold bits as
    an upper bound (FINN narrows each threshold tensor to what its trained values need)."""
    import numpy as np
    from qonnx.core.modelwrapper import ModelWrapper

    from train.models import deployed_size
    from train.trainer import load_run

    pred = deployed_size(load_run(run)[0])
    weights = sum(r["bits"] for r in pred["layers"] if "weights" in r["what"])
    thr = [r for r in pred["layers"] if "thresholds" in r["what"]]
    assert weights == auto_report["stored_bits"]["weights"]
    model = ModelWrapper(str(Path(auto_report["out_dir"]) / "steps" / "step_resbin_golden.onnx"))
    n_thr = sum(int(np.prod(model.get_initializer(n.input[1]).shape)) for n in model.graph.node
                if n.op_type.startswith("Thresholding"))
    assert sum(r["count"] for r in thr) == n_thr
    assert auto_report["stored_bits"]["thresholds"] <= sum(r["bits"] for r in thr)


def test_a_run_spelled_another_way_resumes_the_same_build(run, auto_report, capsys):
    """A relative and an absolute path to the same run are one build (found when a benchmark
    named the run by its absolute path and rebuilt, dropping a 10k-image cppsim result)."""
    import os

    from hw_build.build import build

    rel = Path(os.path.relpath(run))
    build(rel, until="estimate")
    ran = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("[hw_build ")]
    assert ran == []  # every step reused, nothing rebuilt
