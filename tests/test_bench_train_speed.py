"""bench/train_speed.py (`make bench-train`): runs, and reports ratios, the goal (also for other variant
kinds against the float model of their widths) and the optimizer step."""
from __future__ import annotations

import json

import pytest

from bench import train_speed


@pytest.mark.usefixtures("one_thread")
def test_bench_reports_every_path_thread_count_and_the_goal(tmp_path):
    out = tmp_path / "speed.md"
    rc = train_speed.main(["--out", str(out), "--batches", "4", "--threads", "1", "--reps", "1", "--steps", "2",
                           "--warmup", "1", "--no-epoch", "--kinds", "B-D24N,QN,D;B-24,16,PN"])
    assert rc == 0
    text = out.read_text()
    raw = json.loads(out.with_suffix(".json").read_text())
    assert {r["path"] for r in raw["steps"]} == {"binary fast", "binary brevitas", "float", "float, binary's topology"}
    assert all(r["threads"] == 1 and r["batch"] == 4 and r["steps_per_cpu_s"] > 0 for r in raw["steps"])
    assert "- 1 thread, batch 4: binary fast **" in text
    assert [(k["model"], k["float"]) for k in raw["kinds"]] == [("B-D24N,QN,D", "F-24"), ("B-24,16,PN", "F-24,16")]
    assert all(k["ratio_cpu"] > 0 for k in raw["kinds"]) and "| 1 | 4 | `B-24,16,PN` | `F-24,16` |" in text
    params = {o["model"]: o["params"] for o in raw["optimizer"]}
    assert params == {"B-D128N,D88N,D88N,QN,D": 190018, "F-128,88,88": 120554}


def test_bench_rejects_bad_thread_counts(tmp_path, capsys):
    assert train_speed.main(["--out", str(tmp_path / "x.md"), "--threads", "0"]) == 2
    assert "--threads" in capsys.readouterr().err
