"""Reliability of the train, export and hw_build CLIs under bad input and interruption (issue 11):
no silent wrong result, nothing lost or overwritten, no traceback; docs/reliability.md lists them."""
from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from hw_build_helpers import tiny_run
from train.data import IDX_NAMES, load_dataset
from train.recipes import Recipe
from train.run_state import TrainError
from train.trainer import train_run

REPO = Path(__file__).resolve().parent.parent
FAST = Recipe("fast", optimizer="adam", lr=5e-3, batch_size=64, epochs=3, schedule="cosine", shift_px=0)
FAST_KD = replace(FAST, name="fast-kd", epochs=1, shift_px=1, distill_alpha=0.5, teacher_epochs=3)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny(mnist_dir):
    ds = load_dataset("mnist", mnist_dir, download=False)
    return replace(ds, x_train=ds.x_train[:600], y_train=ds.y_train[:600], x_val=ds.x_val[:300],
                   y_val=ds.y_val[:300], x_test=ds.x_test[:300], y_test=ds.y_test[:300])


@pytest.fixture(scope="module")
def finished(tmp_path_factory, mnist_dir) -> Path:
    """A finished, exported tiny run (shared with test_hw_build in one session)."""
    return tiny_run(tmp_path_factory.mktemp("relrun"), mnist_dir)


@pytest.fixture
def run_copy(finished, tmp_path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(finished, dst, ignore=shutil.ignore_patterns("hw"))
    return dst


def _one_line(err: str) -> str:
    assert "Traceback" not in err and err.count("\n") == 1, err
    return err


def _write_idx(path: Path, arr) -> None:
    arr = np.asarray(arr, dtype=np.uint8)
    path.write_bytes(bytes([0, 0, 8, arr.ndim]) + np.array(arr.shape, ">u4").tobytes() + arr.tobytes())


@pytest.fixture(scope="module")
def idx_mnist(tmp_path_factory, mnist_dir) -> Path:
    """idx:<dir>/mnist: 10,600 real MNIST training images (10,000 held out) and 300 test images,
    in a folder named like the real data set, so its default run folder is runs/mnist/<model>."""
    ds = load_dataset("mnist", mnist_dir, download=False)
    d = tmp_path_factory.mktemp("idx") / "mnist"
    d.mkdir()
    x_tr, y_tr = ds.full_train()
    for role, arr in (("train_images", x_tr[:10_600].reshape(-1, 28, 28)), ("train_labels", y_tr[:10_600]),
                      ("test_images", ds.x_test[:300].reshape(-1, 28, 28)), ("test_labels", ds.y_test[:300])):
        _write_idx(d / IDX_NAMES[role], arr)
    return d


# ---- worst case 2: an unfinished training run -------------------------------------------------

def test_unfinished_run_is_refused_by_export_and_hw_build(tmp_path, mnist_dir, capsys):
    from export.__main__ import main as export_main
    from hw_build.__main__ import main as hw_main

    run = tmp_path / "run"
    kw = dict(recipe="thesis", epochs=3, limit_train=500, seed=0, run_dir=run, data_dir=mnist_dir,
              progress=False, device="cpu")
    part = train_run("mnist", "B-8N,QN", stop_after=1, **kw)  # as if killed during epoch 2
    assert part["finished"] is False and not (run / "metrics.json").exists()
    for main, argv in ((export_main, [str(run)]), (hw_main, ["estimate", "--run", str(run)])):
        assert main(argv) == 2
        err = _one_line(capsys.readouterr().err)
        assert "training is not finished (1 of 3 epochs done" in err and "--resume" in err \
            and "RESUME=1" in err
    assert not (run / "model.qonnx.onnx").exists() and not (run / "hw").exists()
    # the way out named in the message works: resumed to the end, then accepted
    assert train_run("mnist", "B-8N,QN", resume=True, **kw)["finished"] is True
    from train.run_state import require_finished
    require_finished(run)


@pytest.mark.slow
def test_killed_training_is_refused_then_resumed(tmp_path, mnist_dir):
    """The reported case itself: `python -m train` killed (SIGKILL) during epoch 2 of 2."""
    run = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "train", "--dataset", "mnist", "--data-dir", str(mnist_dir), "--model",
           "B-32N,QN", "--recipe", "thesis", "--epochs", "2", "--limit-train", "10000", "--run-dir", str(run),
           "--threads", "1", "--no-progress"]
    p = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and not (run / "history.csv").exists():
        time.sleep(0.2)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert (run / "checkpoint.pt").exists() and not (run / "metrics.json").exists()
    out = subprocess.run([sys.executable, "-m", "export", str(run)], cwd=REPO, env=env, capture_output=True,
                         text=True)
    assert out.returncode == 2 and "training is not finished" in out.stderr and "Traceback" not in out.stderr
    again = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    assert again.returncode == 2 and "interrupted run; pass --resume (make RESUME=1)" in again.stderr
    done = subprocess.run(cmd + ["--resume"], cwd=REPO, env=env, capture_output=True, text=True)
    assert done.returncode == 0 and (run / "metrics.json").exists(), done.stderr


# ---- worst case 3: a run found at a computed path must be the one asked for --------------------

def _hw_args(*argv):
    from hw_build.__main__ import _parser

    return _parser().parse_args(["estimate", *argv])


def test_hw_build_dataset_reuses_only_the_exact_run(tmp_path, monkeypatch, idx_mnist, mnist_dir, capsys):
    from hw_build.__main__ import main, resolve_run

    monkeypatch.setenv("RESBIN_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("RESBIN_DATA", str(mnist_dir.parent))
    ask = ["--dataset", f"idx:{idx_mnist}", "--model", "B-8N,QN", "--recipe", "thesis", "--epochs", "1", "--quiet"]
    run = resolve_run(_hw_args(*ask))  # trains, then exports
    assert run.parent.name.startswith("idx-mnist-") and run.name == "B-8N_QN"
    assert (run / "model.qonnx.onnx").exists()
    # the real MNIST of the same model has its own folder: never this idx: run
    from train.options import ModelOptions
    from train.spec import ModelSpec
    from train.trainer import run_folder

    assert run_folder("mnist", ModelSpec.parse("B-8N,QN"), ModelOptions()).parent.name == "mnist"
    stamp = (run / "checkpoint.pt").stat().st_mtime_ns
    assert resolve_run(_hw_args(*ask)) == run and (run / "checkpoint.pt").stat().st_mtime_ns == stamp
    # another recipe / epochs / seed / option: a one-line error, nothing retrained
    for other, why in (([*ask[:4], "--recipe", "strong", "--epochs", "5"], "another recipe, epochs"),
                       ([*ask[:6], "--epochs", "2"], "another recipe, epochs"),  # the recipe holds its epochs
                       ([*ask, "--seed", "3"], "another seed")):
        assert main(["estimate", *other, "--quiet"]) == 2
        assert why in _one_line(capsys.readouterr().err)
    assert (run / "checkpoint.pt").stat().st_mtime_ns == stamp


def test_same_name_other_data_is_refused(tmp_path, tiny):
    run = tmp_path / "run"
    kw = dict(recipe=replace(FAST, epochs=1), run_dir=run, progress=False)
    train_run(tiny, "B-8N,QN", **kw)
    other = replace(tiny, x_train=tiny.x_train[::-1].copy())  # same name "mnist", other images
    with pytest.raises(TrainError, match=r"other data under the same name.*--force \(make FORCE=1\)"):
        train_run(other, "B-8N,QN", **kw)
    assert train_run(tiny, "B-8N,QN", **kw)["finished"] is True  # the same data: reused


def test_idx_run_folder_stays_under_the_runs_root(tmp_path, monkeypatch):
    from train.runs import run_dir

    monkeypatch.setenv("RESBIN_RUNS", str(tmp_path / "runs"))
    (tmp_path / "sub").mkdir()
    for name in (f"idx:{tmp_path}/sub/..", "idx:sub/..", "idx:/", "idx:."):
        d = run_dir(name, "B-8")
        assert d.resolve().is_relative_to((tmp_path / "runs").resolve()) and d.parent.name not in ("..", "."), d


# ---- worst case 4c: sim --n -----------------------------------------------------------------

def test_sim_n_is_checked_before_the_build(run_copy, capsys):
    from hw_build.__main__ import main

    for n, msg in (("0", "must be >= 1, got 0"), ("-9995", "must be >= 1, got -9995")):
        with pytest.raises(SystemExit) as e:
            main(["sim", "--run", str(run_copy), "--n", n])
        assert e.value.code == 2 and msg in capsys.readouterr().err
    assert main(["sim", "--run", str(run_copy), "--n", "10001", "--quiet"]) == 2
    assert "--n 10001: expected 1..10000" in _one_line(capsys.readouterr().err)
    assert not (run_copy / "hw").exists()


def test_partial_simulation_never_replaces_the_full_one():
    from hw_build.simulate import SIM_FILE, SimulationInputError, check_n, sim_file

    assert sim_file(10_000, 10_000) == SIM_FILE == "sim.json"
    assert sim_file(5, 10_000) == "sim-n5.json" and sim_file(100, 10_000) == "sim-n100.json"
    for bad in (0, -9995, 10_001, 2.5):
        with pytest.raises(SimulationInputError, match="expected 1..10000"):
            check_n(bad, 10_000)
    check_n(None, 10_000)


# ---- tracebacks -------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["B-1000000000", "B-99999999999999999999999", "B-" + "9" * 5000, "B-4097"])
def test_huge_widths_are_one_line_errors(name, capsys):
    from train.__main__ import main
    from train.spec import MAX_WIDTH, ModelSpec, SpecError

    with pytest.raises(SpecError, match=f"at most {MAX_WIDTH}"):
        ModelSpec.parse(name)
    assert main(["--dataset", "mnist", "--model", name, "--print-run-dir"]) == 2
    err = _one_line(capsys.readouterr().err)
    assert len(err) < 200
    assert ModelSpec.parse(f"B-{MAX_WIDTH}").widths == (MAX_WIDTH,)


def test_truncated_checkpoint_is_one_line_in_export_and_resume(run_copy, tmp_path, mnist_dir, capsys):
    from export.__main__ import main as export_main
    from train.__main__ import main as train_main

    ck = run_copy / "checkpoint.pt"
    ck.write_bytes(ck.read_bytes()[: ck.stat().st_size // 2])
    assert export_main([str(run_copy)]) == 2
    err = _one_line(capsys.readouterr().err)
    assert "checkpoint.pt: unreadable checkpoint, truncated or corrupt" in err and "--force" in err
    # an interrupted run whose checkpoint is truncated: --resume says so in one line
    run = tmp_path / "interrupted"
    argv = ["--dataset", "mnist", "--data-dir", str(mnist_dir), "--model", "B-8N,QN", "--recipe", "thesis",
            "--epochs", "2", "--limit-train", "300", "--run-dir", str(run), "--no-progress"]
    train_run("mnist", "B-8N,QN", recipe="thesis", epochs=2, limit_train=300, run_dir=run, data_dir=mnist_dir,
              progress=False, stop_after=1)
    (run / "checkpoint.pt").write_bytes((run / "checkpoint.pt").read_bytes()[:1000])
    assert train_main([*argv, "--resume"]) == 2
    assert "unreadable checkpoint, truncated or corrupt" in _one_line(capsys.readouterr().err)
    assert train_main([*argv, "--force"]) == 0  # the way out named in the message
    capsys.readouterr()


def test_build_error_points_to_a_build_log_that_holds_its_traceback(run_copy, monkeypatch, capsys):
    import hw_build.build as hb
    from hw_build.__main__ import main

    def boom(*a, **k):
        raise RuntimeError("a FINN step failed\nsecond line")
    monkeypatch.setattr(hb, "build", boom)
    assert main(["estimate", "--run", str(run_copy), "--quiet"]) == 1
    err = _one_line(capsys.readouterr().err)
    assert "RuntimeError: a FINN step failed (traceback in " in err
    log = Path(err.split("traceback in ", 1)[1].strip().rstrip(")"))
    assert "RuntimeError: a FINN step failed" in log.read_text()  # the pointer is true


def test_two_folding_files_of_one_name_get_two_build_folders(tmp_path):
    from hw_build.build import target_name

    a, b = tmp_path / "a" / "fold.json", tmp_path / "b" / "fold.json"
    for f, pe in ((a, 1), (b, 2)):
        f.parent.mkdir()
        f.write_text(f'{{"MVAU_hls_0": {{"PE": {pe}}}}}')
    assert target_name(folding=a) != target_name(folding=b)
    assert target_name(folding=a).startswith("folding-fold-")


# ---- make follows our own hints ---------------------------------------------------------------

def _make_n(*args) -> str:
    out = subprocess.run(["make", "-n", "-o", "setup", *args, "STAMP=Makefile"], cwd=REPO, capture_output=True,
                         text=True, env=dict(os.environ, MAKEFLAGS=""))
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_make_has_the_resume_and_force_the_messages_name():
    assert " --resume" in _make_n("train", "RESUME=1") and " --force" in _make_n("train", "FORCE=1")
    assert "--resume" not in _make_n("train") and "--force" not in _make_n("train")
    sim = _make_n("sim", "FORCE=1", "RUN=/tmp/r", "CLOCK_MHZ=0", "MODEL=B-8N,F")
    assert "-m hw_build sim --dataset mnist --model \"B-8N,F\"" in sim and "--run /tmp/r --force" in sim \
        and "--clock-mhz 0" in sim and "-m train " not in sim  # hw_build refuses F before training


def test_every_hint_names_the_make_variable():
    for path in ("train/trainer.py", "train/run_state.py", "train/__main__.py", "hw_build/__main__.py"):
        text = (REPO / path).read_text()
        for m in re.finditer(r"pass --resume|--force to|with --force|rerun with --resume", text):
            line = text[m.start():text.index("\n", m.start())]
            assert "RESUME=1" in line or "FORCE" in line or "FORCE_HINT" in line, (path, line)


# ---- a float shortcut on the hardware path is refused before training -------------------------

def test_float_shortcut_refused_before_training_on_the_hardware_path(tmp_path, monkeypatch, mnist_dir, capsys,
                                                                      tiny):
    from hw_build.__main__ import main

    monkeypatch.setenv("RESBIN_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("RESBIN_DATA", str(mnist_dir.parent))
    for model in ("B-8N,F", "F-8"):
        assert main(["sim", "--dataset", "mnist", "--model", model, "--quiet"]) == 2
        assert "cannot go to the FPGA" in _one_line(capsys.readouterr().err)
    assert not (tmp_path / "runs").exists()
    m = train_run(tiny, "B-8N,F", recipe=replace(FAST, epochs=1), run_dir=tmp_path / "f", progress=False)
    assert m["finished"] and not m["fpga_able"]  # `make train` of a float baseline stays allowed


# ---- numeric options: every one has a range --------------------------------------------------

BAD = [
    ("train", ["--dataset", "mnist", "--model", "B-8"], ["--epochs", "0"], ["--seed", "-1"], ["--input-bits", "9"],
     ["--shortcut-bits", "1"], ["--add-bits", "17"], ["--output-bits", "0"], ["--pool-window", "0"],
     ["--dropout", "1"], ["--limit-train", "0"], ["--threads", "0"]),
    ("train", ["size", "B-8", "--inputs", "4", "--outputs", "2"], ["--pool-window", "0"], ["--inputs", "-1"]),
    ("train", ["variants", "--widths", "8"], ["--inputs", "0"]),
    ("export", ["run"], ["--n-check", "0"]),
    ("hw_build", ["sim", "--run", "r"], ["--clock-mhz", "0"], ["--target-fps", "-1"], ["--target-fps", "nan"],
     ["--budget", "0"], ["--budget", "1.5"], ["--verify-n", "-3"], ["--epochs", "0"], ["--seed", "-2"],
     ["--n", "0"], ["--input-bits", "0"], ["--dropout", "-0.1"]),
    ("hw_build", ["bench", "--runs", "r", "--out", "o"], ["--n", "-5"], ["--clock-mhz", "1e9"],
     ["--targets", "-1"]),
    ("dse", ["sweep", "--dataset", "mnist", "--widths", "8"], ["--limit", "-5"], ["--epochs", "0"],
     ["--sample", "0"], ["--seed", "-1"], ["--parallel", "0"], ["--first-width", "0"], ["--input-bits", "0,9"],
     ["--pool-window", "0"], ["--target-fps", "0"], ["--widths", "8,0"]),
    ("dse", ["search"], ["--screen-epochs", "0"], ["--screen-limit", "-1"], ["--limit", "0"],
     ["--target-fps", "inf"], ["--first-width", "4097"]),
    ("dse", ["pareto", "--board", "Pynq-Z2"], ["--min-accuracy", "2"], ["--target-fps", "0"]),
    ("dse", ["bench"], ["--sample", "0"], ["--limit", "-5"], ["--widths1", "x"]),
]


def _main(cli):
    return {"train": "train.__main__", "export": "export.__main__", "hw_build": "hw_build.__main__",
            "dse": "dse.__main__"}.get(cli, cli)


@pytest.mark.parametrize("cli,base,bad", [(c, b, x) for c, b, *xs in BAD for x in xs],
                         ids=lambda v: " ".join(v) if isinstance(v, list) else v)
def test_numeric_option_out_of_range_is_a_one_line_error(cli, base, bad, capsys):
    import importlib

    main = importlib.import_module(_main(cli)).main
    with pytest.raises(SystemExit) as e:
        main([*base, *bad])
    err = capsys.readouterr().err
    assert e.value.code == 2 and f"error: argument {bad[0]}" in err and "Traceback" not in err, err


class _Parsed(Exception):
    pass


@pytest.mark.parametrize("cli,argv", [("train", ["--dataset", "d", "--model", "m"]), ("train", ["size", "m"]),
                                      ("train", ["variants", "--widths", "8"]), ("export", ["r"]),
                                      ("hw_build", ["estimate"]), ("dse", ["sweep"]),
                                      ("bench.accuracy", []), ("bench.sim", [])])
def test_no_numeric_option_is_left_unchecked(cli, argv, monkeypatch):
    """Every option of every parser: no bare int/float type (each must be a range-checked type)."""
    import importlib

    seen = []

    def capture(self, args=None, namespace=None):
        seen.append(self)
        raise _Parsed
    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", capture)
    monkeypatch.setattr(argparse.ArgumentParser, "parse_known_args", lambda self, *a, **k: (argparse.Namespace(
        pool_window="9"), []))
    with pytest.raises(_Parsed):
        importlib.import_module(_main(cli)).main(argv)
    parsers = [seen[0]]
    for p in parsers:  # subcommands' parsers too
        for a in p._actions:
            if isinstance(a, argparse._SubParsersAction):
                parsers.extend(a.choices.values())
            assert a.type not in (int, float), f"{cli} {a.option_strings}: bare {a.type.__name__}"
    assert sum(len(p._actions) for p in parsers) >= 3


# ---- the strong recipe's teacher: checkpointed per epoch, resumed ------------------------------

def test_interrupted_teacher_resumes_where_it_stopped(tmp_path, tiny, monkeypatch, capsys):
    import torch

    from train import fitting

    ref = train_run(tiny, "B-16N,QN", recipe=FAST_KD, run_dir=tmp_path / "a" / "ref", progress=True)
    assert "teacher F-16N: 3 epochs (recipe fast-kd's teacher_epochs; --epochs sets the student's only)" \
        in capsys.readouterr().err
    real, calls = fitting.train_epoch, []

    def interrupted(*a, desc, **k):
        calls.append(desc)
        if desc.startswith("teacher") and desc.endswith("2/3"):
            raise KeyboardInterrupt
        return real(*a, desc=desc, **k)
    monkeypatch.setattr(fitting, "train_epoch", interrupted)
    run = tmp_path / "b" / "run"
    with pytest.raises(KeyboardInterrupt):
        train_run(tiny, "B-16N,QN", recipe=FAST_KD, run_dir=run, progress=False)
    assert torch.load(run / "teacher-checkpoint.pt", weights_only=False)["epoch"] == 1
    with pytest.raises(TrainError, match=r"interrupted run; pass --resume \(make RESUME=1\)"):
        train_run(tiny, "B-16N,QN", recipe=FAST_KD, run_dir=run, progress=False)
    calls.clear()
    monkeypatch.setattr(fitting, "train_epoch", lambda *a, desc, **k: calls.append(desc) or real(*a, desc=desc, **k))
    m = train_run(tiny, "B-16N,QN", recipe=FAST_KD, run_dir=run, progress=True, resume=True)
    assert "teacher F-16N: resuming at epoch 1/3" in capsys.readouterr().err
    assert calls == ["teacher F-16N 2/3", "teacher F-16N 3/3", "epoch 1/1"]  # teacher epoch 1 not redone
    assert not (run / "teacher-checkpoint.pt").exists()
    t_ref = torch.load(tmp_path / "a" / "ref" / "teacher.pt", weights_only=False)
    t_res = torch.load(run / "teacher.pt", weights_only=False)
    assert t_res["val_acc"] == t_ref["val_acc"]
    assert all(torch.equal(t_res["model"][k], v) for k, v in t_ref["model"].items())  # bit for bit
    assert m["test_acc"] == ref["test_acc"]


# ---- concurrency: one process per run folder and per build folder ------------------------------

def test_second_training_of_one_run_folder_is_refused(tmp_path, tiny, capsys):
    from train.run_lock import training_lock

    run = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; sys.path.insert(0, sys.argv[1]);"
                               "from train.run_lock import training_lock\n"
                               "with training_lock(sys.argv[2]):\n print('locked', flush=True); time.sleep(60)",
                               str(REPO), str(run)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(TrainError, match=re.escape(f"another process is training {run} (pid {holder.pid}); "
                                                       "wait for it or use another --run-dir")):
            train_run(tiny, "B-8N,QN", recipe=replace(FAST, epochs=1), run_dir=run, progress=False)
        assert not (run / "config.json").exists()
    finally:
        holder.kill()  # killed, not released: the kernel drops its flock
        holder.wait()
    assert train_run(tiny, "B-8N,QN", recipe=replace(FAST, epochs=1), run_dir=run, progress=False)["finished"]
    with training_lock(run):  # and in one process: a second holder is refused too
        with pytest.raises(TrainError, match=rf"pid {os.getpid()}"):
            train_run(tiny, "B-8N,QN", recipe=replace(FAST, epochs=1), run_dir=run, progress=False)


def test_second_build_of_one_build_folder_is_refused(run_copy, capsys):
    from hw_build.__main__ import main
    from train.run_lock import build_lock

    out = run_copy / "hw" / "mine"
    with build_lock(out):
        assert main(["estimate", "--run", str(run_copy), "--out", str(out), "--quiet"]) == 2
    err = _one_line(capsys.readouterr().err)
    assert f"another process is building {out} (pid {os.getpid()}); wait for it or use another --out" in err
