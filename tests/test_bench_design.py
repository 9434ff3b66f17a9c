"""bench.design: its goal checks read the measured figures of a build folder and its run."""
from __future__ import annotations

import json

from bench.design import design_row, goals, markdown


def _build(tmp_path, *, model, acc, fps, lut, dsp=100, fits=True, sc=8):
    run = tmp_path / model.replace(",", "_") / "run"
    build = run / "hw" / "Pynq-Z2-fps1e6"
    build.mkdir(parents=True)
    (run / "metrics.json").write_text(json.dumps({"test_acc": acc}))
    (run / "config.json").write_text(json.dumps({"options": {"input_bits": 4, "shortcut_weight_bits": sc},
                                                  "recipe": {"name": "strong"}, "epochs": 100}))
    (build / "report.json").write_text(json.dumps({
        "run_dir": str(run), "model": model, "estimated_fps": fps, "fits": fits, "fit_rule": "within 90 %",
        "resources": {"LUT": lut, "BRAM_18K": 20, "DSP": dsp}}))
    (build / "sim.json").write_text(json.dumps({"accuracy": acc, "identical": "10000/10000"}))
    return build


def test_goals_of_the_default_design_and_against_lfc(tmp_path):
    ok = design_row("d", _build(tmp_path, model="B-D128N,D88N,D88N,QN,D", acc=0.981, fps=1_020_408, lut=30_538))
    assert goals(ok) == {"default": True, "beats_lfc": False}  # 30,538 LUT > 28,000
    slow = design_row("s", _build(tmp_path, model="B-D128N,D88N,D88N,QN,D_", acc=0.982, fps=781_250, lut=45_000))
    assert goals(slow)["default"] is False
    small = design_row("q", _build(tmp_path, model="B-96N,QN,D", acc=0.985, fps=1_020_408, lut=24_000))
    assert goals(small) == {"default": False, "beats_lfc": True}
    sc4 = design_row("q4", _build(tmp_path, model="B-128N,QN,D", acc=0.985, fps=1_020_408, lut=24_000, sc=4))
    assert goals(sc4)["beats_lfc"] is False  # not the specified 8-bit shortcut
    md = markdown([ok, small], "x.png", "cmd")
    assert "| d | `B-D128N,D88N,D88N,QN,D` | 4 / 8 | strong, 100 | 0.9810 | 1,020,408 | 30,538 |" in md
