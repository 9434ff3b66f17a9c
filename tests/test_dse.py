"""Design-space exploration: plan, Ray sweep (resume, failures), analysis, report, pareto, CLI."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dse import analysis as A
from dse import results as R
from dse.pareto import ParetoError, choose, make_args
from dse.report import write_report
from dse.plan import SweepError, plan
from dse.sweep import run_sweep
from train.data import Dataset
from train.spec import enumerate_variants

MNIST_INFO = (784, 10, 255, (28, 28, 1))


from ray import cloudpickle  # noqa: E402

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray workers cannot import this test module


@pytest.fixture(scope="module")
def _ray_module():
    import ray

    os.environ.pop("RAY_ADDRESS", None)
    yield ray
    ray.shutdown()


@pytest.fixture
def ray_session(_ray_module):
    """A local Ray instance (2 CPUs) shared by the module's tests, started by the sweep's own init."""
    from dse.sweep import _ray_init

    if not _ray_module.is_initialized():
        _ray_init(2, None)
    return _ray_module


def _tiny_dataset() -> Dataset:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (16, 784), dtype=np.uint8)
    y = rng.integers(0, 10, 16).astype(np.int64)
    return Dataset("mnist", x, y, x, y, x, y, 10, 10, 255, (28, 28, 1))


# ---- runners executed in Ray workers (pickled by value) ---------------------------------------

def _fake_runner(job, dataset):
    """Accuracy from the job index; `B-16,D` raises; every call leaves a marker file."""
    marks = Path(job["sweep_dir"]) / "calls"
    marks.mkdir(exist_ok=True)
    (marks / f"{job['slug']}.{os.getpid()}.{len(list(marks.iterdir()))}").write_text("")
    if job["spec"] == "B-16,D" and not (Path(job["sweep_dir"]) / "heal").exists():
        raise ValueError("synthetic failure\nsecond line")
    return {"test_acc": 0.5 + job["job"] / 1000, "val_acc": 0.5}


def _crashing_runner(job, dataset):
    if job["spec"] == "B-16":
        os._exit(3)  # the worker process dies, as with a segfault or the OOM killer
    return {"test_acc": 0.6}


# ---- plan -------------------------------------------------------------------------------------

def test_plan_follows_thesis_enumeration():
    jobs = plan(MNIST_INFO, "16")
    assert [j["spec"] for j in jobs] == ["F-16"] + [s.name for s in enumerate_variants((16,))]
    assert [j["variant"] for j in jobs] == [None] + list(range(56))
    j = next(j for j in jobs if j["spec"] == "B-D16N,QN,D")
    assert (j["N"], j["Q"], j["P"], j["D1"], j["N1"], j["D"], j["D2"]) == (1, 1, 0, 1, 1, 1, 0)
    assert j["fpga_able"] == 1 and next(j for j in jobs if j["spec"] == "B-16,F")["fpga_able"] == 0
    plain = next(j for j in jobs if j["spec"] == "B-16")
    assert abs(plain["thesis_size_kib"] - (784 * 16 + 16 * 32 + 16 * 10 * 32 + 10 * 32) / 8 / 1024) < 1e-3


def test_plan_options_crossed_only_where_they_matter():
    jobs = plan(MNIST_INFO, "16", options_grid={"input_bits": [1, 8], "shortcut_weight_bits": [4, 8],
                                                "pool_mode": ["flat", "vertical"]})
    by_spec = {}
    for j in jobs:
        by_spec.setdefault(j["spec"], []).append(j["options"])
    assert by_spec["F-16"] == [""]                      # float: options do not apply
    assert sorted(by_spec["B-16"]) == ["", "__in1"]     # no shortcut: input bits only
    assert len(by_spec["B-16,Q"]) == 4                  # Q: input x shortcut bits
    assert len(by_spec["B-16,P"]) == 8                  # P: x pooling mode too
    assert len({(j["spec"], j["options"]) for j in jobs}) == len(jobs)
    vert = next(j for j in jobs if j["spec"] == "B-16,P" and j["pool_mode"] == "vertical"
                and j["input_bits"] == 8 and j["shortcut_weight_bits"] == 8)
    # vertical 9x1 over 28x28: 3 rows x 28 columns = 84 pooled features (flat: 784 // 9 = 87)
    flat = next(j for j in jobs if j["spec"] == "B-16,P" and j["options"] == "")
    assert abs((flat["thesis_size_kib"] - vert["thesis_size_kib"]) * 8 * 1024 - 3 * 16 * 32) < 1e-6


def test_plan_sample_is_seeded_and_keeps_the_plain_binary():
    a = plan(MNIST_INFO, "16,8", sample=10, seed=3)
    b = plan(MNIST_INFO, "16,8", sample=10, seed=3)
    c = plan(MNIST_INFO, "16,8", sample=10, seed=4)
    assert [j["spec"] for j in a] == [j["spec"] for j in b] != [j["spec"] for j in c]
    specs = [j["spec"] for j in a]
    assert specs[0] == "F-16,8" and "B-16,8" in specs and len(specs) - 1 in (10, 11)
    idx = [j["variant"] for j in a[1:]]
    assert idx == sorted(idx)
    names = [s.name for s in enumerate_variants((16, 8))]
    assert all(names[j["variant"]] == j["spec"] for j in a[1:])
    with pytest.raises(SweepError, match="widths"):
        plan(MNIST_INFO, "16,x")


def test_plan_named_variants_and_first_width_axis():
    jobs = plan(MNIST_INFO, "16,8", variants=["B-D16N,8N,QN", "B-16,8N,P"], first_widths=[32, 16])
    assert [j["spec"] for j in jobs] == ["F-32,8", "B-32,8", "B-32,8N,P", "B-D32N,8N,QN",
                                         "F-16,8", "B-16,8", "B-16,8N,P", "B-D16N,8N,QN"]
    with pytest.raises(SweepError, match="not a binary variant"):
        plan(MNIST_INFO, "16,8", variants=["B-16N,QN"])
    jobs = plan(MNIST_INFO, "16,8", variants=["B-D16N,8N,QN"], first_widths=[32, 16], baselines=False,
                options_grid={"input_bits": [2, 4]})
    assert [(j["spec"], j["options"]) for j in jobs] == [("B-D32N,8N,QN", "__in2"), ("B-D32N,8N,QN", "__in4"),
                                                         ("B-D16N,8N,QN", "__in2"), ("B-D16N,8N,QN", "__in4")]
    with pytest.raises(SweepError, match="needs an explicit variant list"):
        plan(MNIST_INFO, "16,8", baselines=False)


def test_bad_options_fail_before_anything_runs(tmp_path):
    with pytest.raises(SweepError, match="input_bits=9 is outside"):
        run_sweep(_tiny_dataset(), "16", options_grid={"input_bits": [9]}, out_dir=tmp_path / "x",
                  runner=_fake_runner, progress=False)
    assert not (tmp_path / "x").exists()


# ---- sweep on Ray -----------------------------------------------------------------------------

def test_sweep_records_failure_and_resumes(ray_session, tmp_path):
    ds = _tiny_dataset()
    out = tmp_path / "sw"
    df = run_sweep(ds, "16", out_dir=out, parallel=2, runner=_fake_runner, progress=False)
    assert len(df) == 57
    names = [s.name for s in enumerate_variants((16,))]
    binary = df[df["kind"] == "B"].sort_values("variant")
    assert binary["spec"].tolist() == names                        # enumeration order feeds the sweep
    failed = df[df["status"] == "failed"]
    assert failed["spec"].tolist() == ["B-16,D"]
    assert failed["error"].iloc[0] == "ValueError: synthetic failure | second line"
    assert "Traceback" in (out / "errors" / "B-16_D.txt").read_text()
    assert (df[df["status"] == "ok"]["test_acc"] == 0.5 + df[df["status"] == "ok"]["job"] / 1000).all()
    assert len(list((out / "calls").iterdir())) == 57

    # interrupt: keep the header and 20 rows, then a line torn by the crash
    lines = (out / "results.csv").read_text().splitlines(keepends=True)
    (out / "results.csv").write_text("".join(lines[:21]) + lines[21][:30])
    kept = R.read_results(out / "results.csv")
    n_ok_kept = int((kept["status"] == "ok").sum())
    for f in (out / "calls").iterdir():
        f.unlink()
    (out / "heal").write_text("")                                  # the failing variant now works
    df2 = run_sweep(ds, "16", out_dir=out, parallel=2, runner=_fake_runner, progress=False)
    assert len(list((out / "calls").iterdir())) == 57 - n_ok_kept   # finished rows were skipped
    assert (df2["status"] == "ok").all() and len(df2) == 57
    assert df2.sort_values("job")["spec"].tolist() == ["F-16"] + names
    cfg = json.loads((out / "sweep.json").read_text())
    assert len(cfg["invocations"]) == 2 and cfg["runs"][-1]["skipped"] == n_ok_kept

    # a third run has nothing to do and does not touch the table
    before = (out / "results.csv").read_text()
    run_sweep(ds, "16", out_dir=out, parallel=2, runner=_fake_runner, progress=False)
    assert (out / "results.csv").read_text() == before
    with pytest.raises(SweepError, match="recipe='thesis' \\(now 'strong'\\)"):
        run_sweep(ds, "16", out_dir=out, recipe="strong", runner=_fake_runner, progress=False)


def test_dead_worker_is_recorded(ray_session, tmp_path):
    df = run_sweep(_tiny_dataset(), "16", sample=2, seed=1, out_dir=tmp_path, parallel=2,
                   runner=_crashing_runner, progress=False, options_grid={"input_bits": [8]})
    row = df[df["spec"] == "B-16"]                                 # the plain binary is always in
    assert row["status"].iloc[0] == "failed" and "Worker" in row["error"].iloc[0], row["error"].iloc[0]
    assert (df[df["spec"] != "B-16"]["status"] == "ok").all() and len(df) >= 3


def test_tiny_real_sweep(ray_session, tmp_path, mnist_dir):
    """Real MNIST, 2,000 training examples, 1 epoch, 2 Ray workers: the trainer behind the sweep."""
    from train.size import thesis_size_kib

    df = run_sweep("mnist", "16", sample=2, seed=5, limit=2000, epochs=1, out_dir=tmp_path, parallel=2,
                   data_dir=mnist_dir, progress=False)
    assert (df["status"] == "ok").all(), df["error"].tolist()
    assert set(df["spec"]) >= {"F-16", "B-16"} and len(df) in (3, 4)
    for _, r in df.iterrows():
        m = json.loads((Path(r["run_dir"]) / "metrics.json").read_text())
        assert r["test_acc"] == pytest.approx(m["test_acc"]) and r["epochs"] == 1
        assert r["test_acc"] > 0.3                                     # well above chance (0.1)
        assert r["thesis_size_kib"] == pytest.approx(thesis_size_kib(r["spec"], 784, 10), abs=1e-3)
    assert df[df["kind"] == "F"]["test_acc"].iloc[0] > 0.5


@pytest.mark.slow
@pytest.mark.finn
def test_sweep_with_board_estimates(ray_session, tmp_path, mnist_dir):
    """Trained variants go through export and FINN's estimate (no synthesis); the rows carry it."""
    df = run_sweep("mnist", "16", variants=["B-16N,QN"], limit=2000, epochs=1, board="Pynq-Z2",
                   out_dir=tmp_path, parallel=2, data_dir=mnist_dir, progress=False)
    assert (df["status"] == "ok").all() and df["hw_error"].isna().all(), df["hw_error"].tolist()
    assert df[df["kind"] == "F"]["est_fps"].isna().all()
    hw = df[df["fpga_able"] == 1]
    assert hw["spec"].tolist() == ["B-16", "B-16N,QN"]
    for _, r in hw.iterrows():
        (rep,) = Path(r["run_dir"]).glob("hw/*/report.json")
        rep = json.loads(rep.read_text())
        assert r["est_fps"] == pytest.approx(rep["estimated_fps"]) and r["lut"] == pytest.approx(rep["resources"]["LUT"])
        assert r["fits"] == int(rep["fits"]) and r["board"] == "Pynq-Z2"
    fastest = hw[hw["fits"] == 1].sort_values("est_fps").iloc[-1]
    assert choose([tmp_path], "Pynq-Z2", estimate_missing=False)["spec"] == fastest["spec"]


# ---- analysis ---------------------------------------------------------------------------------

COEF = {"N": 0.004, "P": 0.031, "F": 0.012, "Q": 0.021, "D1": -0.003, "N1": 0.025, "D2": -0.002,
        "N2": 0.041, "D": 0.0015}


def _synthetic_table(path: Path, widths: str, *, noise: float = 0.0, grid=None, seed=0, hw=False) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    path.mkdir(parents=True, exist_ok=True)
    (path / "sweep.json").write_text(json.dumps({"identity": {"dataset": "mnist", "recipe": "thesis", "seed": 0},
                                                 "invocations": [{"widths": widths.split(",")}], "runs": []}))
    for j in plan(MNIST_INFO, widths, options_grid=grid):
        acc = (0.9 + sum(c * j[k] for k, c in COEF.items()) + 0.01 * (j["input_bits"] == 8)
               - 0.005 * (j["shortcut_weight_bits"] == 4))
        acc = 0.977 if j["kind"] == "F" else acc + rng.normal(0, noise) if noise else acc
        row = {k: v for k, v in j.items() if k in R.COLUMNS}
        row.update(status="ok", test_acc=acc, run_dir=f"/runs/{j['slug']}", recipe="thesis", epochs=10)
        if hw and j["fpga_able"]:
            lut = 20_000 + 40_000 * j["Q"] + 10_000 * j["P"] + 100 * j["job"]
            row.update(board="Pynq-Z2", est_fps=[1.02e6, 5.1e5][j["Q"]], lut=lut, bram18=20, dsp=0,
                       fits=int(lut <= 53_200))
        R.append_row(path / "results.csv", row)
    return R.read_results(path / "results.csv")


def test_regression_recovers_known_coefficients(tmp_path):
    df = _synthetic_table(tmp_path / "a", "16,8", grid={"input_bits": [2, 8], "shortcut_weight_bits": [4, 8]})
    reg = A.regression(df, "16,8")
    t = reg["table"]
    for k, c in COEF.items():
        assert t.loc[k, "coef"] == pytest.approx(c, abs=1e-10)
    assert t.loc["const", "coef"] == pytest.approx(0.91, abs=1e-10)   # the default options' level
    assert t.loc["input_bits_2", "coef"] == pytest.approx(-0.01, abs=1e-10)
    # shortcut bits exist only for P/Q variants (the others keep the default): measured there only
    assert t.loc["shortcut_weight_bits_4", "coef"] == pytest.approx(-0.005, abs=1e-10)
    n_pq = int(((df["kind"] == "B") & (df["P"] + df["Q"] > 0)).sum())
    assert reg["r2"] == pytest.approx(1.0) and reg["n"] == 448 + n_pq // 2 and not reg["rank_deficient"]
    assert "D3" not in t.index                                      # constant columns are left out

    noisy = _synthetic_table(tmp_path / "b", "16,8", noise=0.002, seed=1)
    t = A.regression(noisy, "16,8")["table"]
    inside = [(t.loc[k, "ci_low"] <= c <= t.loc[k, "ci_high"]) for k, c in COEF.items()]
    assert sum(inside) >= 7 and abs(t.loc["N2", "coef"] - 0.041) < 0.002

    few = df[df["spec"].isin(["B-16,8", "B-16N,8"]) & (df["options"] == "")]
    assert "error" in A.regression(few, "16,8")


def test_consolidated_table_thesis_layout(tmp_path):
    df = _synthetic_table(tmp_path, "128")
    t = A.consolidated_table(df, "mnist")
    assert list(t.columns) == ["ours 128", "thesis 128", "diff 128"]
    assert t.loc["N1", "thesis 128"] == 0.9238 and t.loc["F original", "thesis 128"] == 0.9749
    b = df[(df["kind"] == "B") & (df["N1"] == 1)]
    assert t.loc["N1", "ours 128"] == pytest.approx(b["test_acc"].mean())
    assert t.loc["B equivalente", "ours 128"] == pytest.approx(0.91)
    assert t.loc["Mejor variante", "ours 128"] == pytest.approx(df[df["kind"] == "B"]["test_acc"].max())
    assert t.loc["P", "diff 128"] == pytest.approx(t.loc["P", "ours 128"] - 0.9174)
    assert "D2" not in t.index
    assert A.best_names(df, "mnist")["128"] == ("B-128N,PN,D", "B-128N,PN,D")
    assert list(A.consolidated_table(df.assign(widths="40"), "mnist").columns) == ["ours 40"]


def test_pareto_mask():
    x = [1, 2, 2, 3, 4, np.nan]
    y = [0.5, 0.6, 0.55, 0.6, 0.9, 1.0]
    assert A.pareto_mask(x, y).tolist() == [True, True, False, False, True, False]
    assert A.pareto_mask(x, y, x_lower_is_better=False).tolist() == [False, False, False, False, True, False]


# ---- report and pareto ------------------------------------------------------------------------

def test_report_renders_with_plots(tmp_path):
    df1 = _synthetic_table(tmp_path / "s1", "128", noise=0.002, hw=True)
    # the most accurate and fastest design does not fit: the fronts must still show fitting ones
    top = df1[df1["lut"].notna()].sort_values("test_acc").iloc[-1].to_dict()
    R.append_row(tmp_path / "s1" / "results.csv", {**top, "test_acc": 1.5, "est_fps": 2e6, "lut": 99_000, "fits": 0})
    _synthetic_table(tmp_path / "s2", "128,88", noise=0.002, seed=2, hw=True)
    md = write_report([tmp_path / "s1", tmp_path / "s2"], tmp_path / "rep")
    text = md.read_text()
    for needle in ("## Consolidated accuracy", "thesis 128,88", "## Regression", "R²", "## Size",
                   "## On the board", "Chosen: B-", "## The thesis's recommendations", "Our data: supports"):
        assert needle in text, needle
    # the fronts hold fitting designs even where a design that does not fit beats them all
    board = text[text.index("## On the board"):]
    for title in ("Pareto front (accuracy vs frame rate, fitting designs):",
                  "Pareto front (accuracy vs LUT, fitting designs):"):
        table = board[board.index(title):].split("\n\n")[1].splitlines()
        assert len(table) >= 3 and all("| 1 |" in row for row in table[2:]), title
    for png in ("components.png", "regression.png", "acc_vs_size.png", "acc_vs_lut.png", "acc_vs_fps.png"):
        data = (tmp_path / "rep" / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000, png
        assert f"]({png})" in text


def test_pareto_choose_estimates_lazily_and_caches(tmp_path):
    df = _synthetic_table(tmp_path, "16", noise=0.001)
    calls = []

    def estimator(run_dir, board, target_fps):
        calls.append(run_dir)
        q = "Q" in run_dir.split("/")[-1]
        return {"board": board, "target_fps": target_fps, "est_fps": 5.1e5 if q else 1.02e6,
                "lut": 30_000, "bram18": 10, "dsp": 0, "fits": 1}

    row = choose([tmp_path], "Pynq-Z2", 1e6, estimator=estimator)
    ok = df[(df["fpga_able"] == 1)].sort_values("test_acc", ascending=False)
    first_non_q = ok[ok["Q"] == 0].iloc[0]
    assert row["spec"] == first_non_q["spec"]
    assert len(calls) == list(ok["spec"]).index(first_non_q["spec"]) + 1  # stops at the first fit
    n = len(calls)
    assert choose([tmp_path], "Pynq-Z2", 1e6, estimator=estimator)["spec"] == row["spec"]
    assert len(calls) == n                                          # the cache answered
    assert choose([tmp_path], "Pynq-Z2", 4e5, estimator=estimator)["spec"] == ok.iloc[0]["spec"]
    args = make_args(row, board="Pynq-Z2", target_fps=1e6)
    assert args[:2] == ["DATASET=mnist", f"MODEL={row['spec']}"]
    assert "TARGET_FPS=1000000" in args and "BOARD=Pynq-Z2" in args
    with pytest.raises(ParetoError, match="fits Pynq-Z2 at >= 2,000,000 fps"):
        choose([tmp_path], "Pynq-Z2", 2e6, estimator=estimator)


def test_cli(tmp_path, capsys):
    from dse.__main__ import main

    _synthetic_table(tmp_path / "s", "128", hw=True)
    assert main(["pareto", "--sweep", str(tmp_path / "s"), "--board", "Pynq-Z2", "--target-fps", "1e6",
                 "--no-estimate", "--emit-make-args"]) == 0
    out = capsys.readouterr().out.strip()
    assert out.startswith("DATASET=mnist ") and "TARGET_FPS=1000000" in out and "\n" not in out
    assert main(["report", "--sweep", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "results.csv" in err and err.count("\n") == 1
    assert main(["pareto", "--sweep", str(tmp_path / "s"), "--board", "Pynq-Z9"]) == 2
    assert "unknown board" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["sweep", "--help"])
    assert e.value.code == 0 and "--shortcut-bits" in capsys.readouterr().out


def test_sweep_on_an_existing_cluster(_ray_module, tmp_path):
    """RAY_ADDRESS path: connect to a running cluster, ship the code as working_dir, same rows."""
    from ray.cluster_utils import Cluster

    if _ray_module.is_initialized():
        _ray_module.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})
    address = cluster.address
    try:
        os.environ["RAY_ADDRESS"] = address
        df = run_sweep(_tiny_dataset(), "16", sample=2, seed=0, out_dir=tmp_path, runner=_fake_runner,
                       progress=False)
        assert not _ray_module.is_initialized()                       # the sweep disconnected
    finally:
        os.environ.pop("RAY_ADDRESS", None)
        cluster.shutdown()
    assert (df["status"] == "ok").all() and df["spec"].iloc[:2].tolist() == ["F-16", "B-16"]
    cfg = json.loads((tmp_path / "sweep.json").read_text())
    assert cfg["invocations"][-1]["ray_address"] == address


# ---- board-aware search -----------------------------------------------------------------------

def _search_runner(job, dataset):
    """Fits when first width x input bits <= 64; accuracy grows with width and bits; marks calls."""
    marks = Path(job["sweep_dir"]) / "calls"
    marks.mkdir(exist_ok=True)
    (marks / f"{job['slug']}.{len(list(marks.iterdir()))}").write_text("")
    w = int(job["widths"].split(",")[0])
    fits = w * job["input_bits"] <= 64
    acc = 0.5 + w / 1000 + job["input_bits"] / 100 + job["shortcut_weight_bits"] / 1000 \
        + (0.1 if job["recipe"] == "strong" else 0)
    return {"test_acc": acc, "board": job["board"], "target_fps": job["target_fps"],
            "est_fps": 1.02e6 if w < 32 or job["input_bits"] < 4 else 0.9e6, "lut": w * job["input_bits"] * 100,
            "bram18": 0, "dsp": 0, "fits": int(fits)}


def test_board_search_trains_only_the_maximal_fitting_designs(ray_session, tmp_path):
    from dse.search import board_search, maximal

    kw = dict(board="Pynq-Z2", target_fps=1e6, first_widths=[16, 32], recipe="strong", epochs=1,
              options_grid={"input_bits": [2, 4], "shortcut_weight_bits": [2, 4]}, out_dir=tmp_path,
              runner=_search_runner, progress=False)
    row = board_search(_tiny_dataset(), ["B-16N,QN,D"], **kw)
    screen = R.read_results(tmp_path / "screen" / "results.csv")
    assert len(screen) == 8 and set(screen["recipe"]) == {"thesis"}
    # fit at >= 1e6 fps: width 16 with 2 or 4 input bits, width 32 with 2 (32 x 4 bits misses the rate)
    final = R.read_results(tmp_path / "final" / "results.csv")
    # maximal: 16 in4 sc4 and 32 in2 sc4 (neither has both more width and more input bits)
    assert sorted(zip(final["spec"], final["options"])) == [("B-16N,QN,D", "__in4_sc4"), ("B-32N,QN,D", "__in2_sc4")]
    assert row["spec"] == "B-16N,QN,D" and row["options"] == "__in4_sc4"  # 0.5+.016+.04+.004 > 0.5+.032+.02+.004
    choice = json.loads((tmp_path / "choice.json").read_text())
    assert choice["chosen"] == "B-16N,QN,D__in4_sc4" and "INPUT_BITS=4" in choice["make_args"]
    assert (choice["screened"], choice["fitting"]) == (8, 6)
    calls = len(list((tmp_path / "screen" / "calls").iterdir())) + len(list((tmp_path / "final" / "calls").iterdir()))
    assert calls == 10
    # a fitting row of a family this call does not search (e.g. a baseline) is left alone
    R.append_row(tmp_path / "screen" / "results.csv",
                 {**screen.iloc[0].to_dict(), "spec": "B-16", "Q": 0, "N": 0, "N1": 0, "D": 0, "fits": 1})
    board_search(_tiny_dataset(), ["B-16N,QN,D"], **kw)  # resumed: nothing trained again
    assert len(list((tmp_path / "screen" / "calls").iterdir())) + len(list((tmp_path / "final" / "calls").iterdir())) == 10
    # dominance is per family: another shortcut kind is never dropped for a Q design
    fit = screen[screen["fits"] == 1].copy()
    other = fit.iloc[:1].assign(spec="B-16N,PN,D", Q=0, P=1)
    assert "B-16N,PN,D" in set(maximal(pd.concat([fit, other], ignore_index=True))["spec"])


def test_board_pivot_of_widths_and_bits():
    from dse.report import _axes_pivots

    rows = [{"spec": f"B-{w}N,QN,D", "widths": str(w), "input_bits": ib, "shortcut_weight_bits": sc,
             "lut": w * ib * sc, "bram18": 0, "dsp": 250 if (w, ib, sc) == (128, 4, 4) else 0,
             "fits": int((w, ib, sc) != (128, 4, 4))}
            for w in (64, 128) for ib in (2, 4) for sc in (2, 4)]
    text = "\n".join(_axes_pivots(pd.DataFrame(rows), {"LUT": 53_200, "BRAM_18K": 280, "DSP": 220}))
    assert "| B-WN,QN,D: width, input bits | shortcut 2 bits | shortcut 4 bits |" in text
    assert "| 128, 4 | 1,024 ok | 2,048 -- DSP |" in text and "| 64, 2 | 256 ok | 512 ok |" in text
    assert _axes_pivots(pd.DataFrame(rows[:1])) == []  # nothing varies: no pivot


def _estimate_once_failing_runner(job, dataset):
    """A FINN estimate that fails for B-16N,QN until a `heal` file exists; marks every call."""
    marks = Path(job["sweep_dir"]) / "calls"
    marks.mkdir(exist_ok=True)
    (marks / f"{job['slug']}.{len(list(marks.iterdir()))}").write_text("")
    out = {"test_acc": 0.9}
    if job["board"] and job["fpga_able"]:
        if job["spec"] == "B-16N,QN" and not (Path(job["sweep_dir"]) / "heal").exists():
            out.update(board=job["board"], target_fps=job["target_fps"], hw_error="ExportError: synthetic")
        else:
            out.update(board=job["board"], target_fps=job["target_fps"], est_fps=1e6, lut=1000, bram18=0,
                       dsp=0, fits=1)
    return out


def test_failed_estimate_is_retried_on_rerun(ray_session, tmp_path):
    kw = dict(out_dir=tmp_path, parallel=2, runner=_estimate_once_failing_runner, progress=False,
              variants=["B-16N,QN", "B-16N,PN"], board="Pynq-Z2", target_fps=1e6)
    df = run_sweep(_tiny_dataset(), "16", **kw)
    row = df[df["spec"] == "B-16N,QN"].iloc[0]
    assert row["status"] == "ok" and row["hw_error"] == "ExportError: synthetic" and row["est_fps"] != row["est_fps"]
    n = len(list((tmp_path / "calls").iterdir()))
    (tmp_path / "heal").write_text("")
    df = run_sweep(_tiny_dataset(), "16", **kw)
    assert len(list((tmp_path / "calls").iterdir())) == n + 1        # only the row without an estimate
    assert df[df["spec"] == "B-16N,QN"].iloc[0]["est_fps"] == 1e6
    # without a board no row has an estimate, and a rerun has nothing to retry
    nb = {**kw, "board": None, "target_fps": None, "out_dir": tmp_path / "nb"}
    run_sweep(_tiny_dataset(), "16", **nb)
    n = len(list((tmp_path / "nb" / "calls").iterdir()))
    run_sweep(_tiny_dataset(), "16", **nb)
    assert len(list((tmp_path / "nb" / "calls").iterdir())) == n


# ---- the specification's 8-bit shortcut weights ------------------------------------------------

def test_search_keeps_the_specified_8bit_shortcut_unless_asked(ray_session, tmp_path):
    from dse.search import board_search

    kw = dict(board="Pynq-Z2", target_fps=1e6, first_widths=[16], recipe="strong", epochs=1,
              out_dir=tmp_path, runner=_search_runner, progress=False)
    row = board_search(_tiny_dataset(), ["B-16N,QN,D"], options_grid={"input_bits": [2, 4]}, **kw)
    screen = R.read_results(tmp_path / "screen" / "results.csv")
    assert set(screen["shortcut_weight_bits"]) == {8}                 # nothing else screened
    assert row["options"] == "__in4" and row["deviation"] == ""
    assert json.loads((tmp_path / "choice.json").read_text())["deviation"] is None
    # asked for: lower-bit shortcuts are screened and a chosen one is named as a deviation
    kw["out_dir"] = tmp_path / "asked"
    row = board_search(_tiny_dataset(), ["B-16N,QN,D"],
                       options_grid={"input_bits": [4], "shortcut_weight_bits": [2, 4]}, **kw)
    assert row["options"] == "__in4_sc4"
    note = "deviation from the specification: 4-bit shortcut weights"
    assert row["deviation"] == note
    assert json.loads((tmp_path / "asked" / "choice.json").read_text())["deviation"] == note


def test_pareto_names_lower_bit_shortcuts_as_a_deviation(tmp_path, capsys):
    from dse.__main__ import main
    from dse.pareto import describe, deviations

    df = _synthetic_table(tmp_path / "s", "16", grid={"shortcut_weight_bits": [4, 8]}, hw=True)
    df = df[df["fpga_able"] == 1]
    best = df.sort_values("test_acc").iloc[-1]
    # make a 4-bit Q design the most accurate one and the only Q design that fits
    for _, r in df[df["Q"] == 1].iterrows():
        sc4 = r["shortcut_weight_bits"] == 4
        R.append_row(tmp_path / "s" / "results.csv", {**r.to_dict(), "test_acc": best["test_acc"] + (0.01 if sc4 else 0.005),
                                                      "est_fps": 1.02e6, "lut": 30_000, "fits": int(sc4)})
    spec_row = choose([tmp_path / "s"], "Pynq-Z2", 1e6, estimate_missing=False)
    assert spec_row["deviation"] == "" and not deviations(spec_row)
    assert spec_row["Q"] == 0 or spec_row["shortcut_weight_bits"] == 8
    dev_row = choose([tmp_path / "s"], "Pynq-Z2", 1e6, estimate_missing=False, shortcut_bits=[4, 8])
    assert dev_row["Q"] == 1 and dev_row["shortcut_weight_bits"] == 4
    assert describe(dev_row).endswith("; deviation from the specification: 4-bit shortcut weights")
    assert main(["pareto", "--sweep", str(tmp_path / "s"), "--board", "Pynq-Z2", "--target-fps", "1e6",
                 "--no-estimate"]) == 0
    assert "deviation" not in capsys.readouterr().out
    assert main(["pareto", "--sweep", str(tmp_path / "s"), "--board", "Pynq-Z2", "--target-fps", "1e6",
                 "--no-estimate", "--shortcut-bits", "4,8"]) == 0
    out = capsys.readouterr().out
    assert "deviation from the specification: 4-bit shortcut weights" in out and "SHORTCUT_BITS=4" in out
    # only lower-bit shortcut designs left: the error says why and how to ask for them
    only4 = df[(df["Q"] == 1) & (df["shortcut_weight_bits"] == 4)].assign(sweep=str(tmp_path / "s"), dataset="mnist")
    with pytest.raises(ParetoError, match="left out: a deviation from the specification"):
        choose([tmp_path / "s"], "Pynq-Z2", 1e6, estimate_missing=False, df=only4)
    # the report's board section names the deviation of every such design it lists
    text = write_report([tmp_path / "s"], tmp_path / "rep").read_text()
    assert "| deviation |" in text and "4-bit shortcut weights" in text


def test_bench_runs_the_thesis_sweeps_whole_by_default():
    """`make bench-sweep`: all 56 one-layer and all 224 two-layer variants (the plain binary model
    among them) + the float baseline, on the whole training set, unless SAMPLE / LIMIT ask for less."""
    from dse.__main__ import build_parser

    args = build_parser().parse_args(["bench"])
    assert args.sample is None and args.limit is None and args.recipe == "thesis"
    assert len(plan(MNIST_INFO, args.widths1)) == 56 + 1
    assert len(plan(MNIST_INFO, args.widths2)) == 224 + 1
    assert build_parser().parse_args(["bench", "--sample", "56"]).sample == 56
