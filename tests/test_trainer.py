"""Training loop on real MNIST subsets: learns, resumes bit for bit, refuses mismatches, CLI."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from train.data import Dataset, load_dataset
from train.models import ModelOptions, build_model
from train.recipes import RECIPES, Recipe, get_recipe
from train.fitting import random_shift
from train.trainer import TrainError, load_checkpoint_into, load_run, train_run

REPO = Path(__file__).resolve().parent.parent
FAST = Recipe("fast", optimizer="adam", lr=5e-3, batch_size=64, epochs=2, schedule="cosine", shift_px=0)
FAST_KD = replace(FAST, name="fast-kd", shift_px=1, distill_alpha=0.5, teacher_epochs=1)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def mnist(mnist_dir):
    return load_dataset("mnist", mnist_dir, download=False)


@pytest.fixture(scope="module")
def small(mnist):
    """3,000 training images, 2,000 validation and 2,000 test images of the real data."""
    return replace(mnist, x_train=mnist.x_train[:3000], y_train=mnist.y_train[:3000],
                   x_val=mnist.x_val[:2000], y_val=mnist.y_val[:2000],
                   x_test=mnist.x_test[:2000], y_test=mnist.y_test[:2000])


@pytest.fixture(scope="module")
def tiny(small):
    return replace(small, x_train=small.x_train[:1000], y_train=small.y_train[:1000], x_val=small.x_val[:500],
                   y_val=small.y_val[:500], x_test=small.x_test[:500], y_test=small.y_test[:500])


def test_tiny_binary_model_learns_real_mnist(small, tmp_path):
    m = train_run(small, "B-32N,16N,QN", recipe=FAST, run_dir=tmp_path / "run", progress=False)
    assert m["test_acc"] > 0.8 and m["val_acc"] > 0.8
    files = {p.name for p in (tmp_path / "run").iterdir()}
    assert {"config.json", "checkpoint.pt", "history.csv", "metrics.json"} <= files
    hist = list(csv.DictReader(open(tmp_path / "run" / "history.csv")))
    assert [int(r["epoch"]) for r in hist] == [1, 2]
    assert set(hist[0]) == {"epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds"}
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["model"] == "B-32N,16N,QN" and cfg["seed"] == 0 and cfg["recipe"]["name"] == "fast"
    assert "brevitas" in cfg["versions"] and "torch" in cfg["versions"]
    assert m["deployed_size_bits"] > 0 and m["thesis_size_kib"] > 0
    # load_run rebuilds the same model: same test accuracy
    model, spec, options, config = load_run(tmp_path / "run")
    assert not model.training and spec.name == "B-32N,16N,QN" and options == ModelOptions()
    with torch.no_grad():
        pred = model(torch.from_numpy(small.x_test).float()).argmax(1).numpy()
    assert np.mean(pred == small.y_test) == pytest.approx(m["test_acc"])


def test_binary_task_uses_one_sigmoid_unit(small, tmp_path):
    y = lambda a: (a >= 5).astype(np.int64)  # noqa: E731
    ds = replace(small, name="mnist-ge5", y_train=y(small.y_train), y_val=y(small.y_val), y_test=y(small.y_test),
                 n_classes=2, n_outputs=1)
    m = train_run(ds, "B-16N,PN", recipe=replace(FAST, epochs=1), run_dir=tmp_path / "bin", progress=False)
    assert m["test_acc"] > 0.75
    model, *_ = load_run(tmp_path / "bin")
    assert model.output.out_features == 1


def _weights(run: Path):
    ck = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=False)
    return ck


def test_resume_is_bit_identical_to_a_straight_run(tiny, tmp_path):
    # Q shortcut + N + dropout + shifts + distillation; the add quantizers are still collecting
    # statistics (100 calls; add_quant is called twice per step) when the run is interrupted
    # after epoch 1 (16 steps).
    kw = dict(recipe=FAST_KD, progress=False)
    train_run(tiny, "B-D32N,16N,QN,D", run_dir=tmp_path / "straight", **kw)
    part = train_run(tiny, "B-D32N,16N,QN,D", run_dir=tmp_path / "resumed", stop_after=1, **kw)
    assert part["finished"] is False and not (tmp_path / "resumed" / "metrics.json").exists()
    with pytest.raises(TrainError, match="interrupted run.*--resume"):
        train_run(tiny, "B-D32N,16N,QN,D", run_dir=tmp_path / "resumed", **kw)
    train_run(tiny, "B-D32N,16N,QN,D", run_dir=tmp_path / "resumed", resume=True, **kw)
    a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "resumed")
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for k in a["quant_state"]:
        assert a["quant_state"][k]["counter"] == b["quant_state"][k]["counter"] > 0
        assert torch.equal(a["quant_state"][k]["value"], b["quant_state"][k]["value"])
    strip = lambda h: [{k: v for k, v in r.items() if k != "seconds"} for r in h]  # noqa: E731
    assert strip(a["history"]) == strip(b["history"])
    ma = json.loads((tmp_path / "straight" / "metrics.json").read_text())
    mb = json.loads((tmp_path / "resumed" / "metrics.json").read_text())
    assert ma["test_acc"] == mb["test_acc"] and ma["test_loss"] == mb["test_loss"]


def test_finished_run_is_reused_and_mismatches_refused(tiny, tmp_path):
    run = tmp_path / "run"
    first = train_run(tiny, "B-16N,8N,Q", recipe=replace(FAST, epochs=1), run_dir=run, progress=False)
    stamp = (run / "checkpoint.pt").stat().st_mtime_ns
    again = train_run(tiny, "B-16N,8N,Q", recipe=replace(FAST, epochs=1), run_dir=run, progress=False)
    assert again == first and (run / "checkpoint.pt").stat().st_mtime_ns == stamp
    with pytest.raises(TrainError, match=r"holds B-16N,8N,Q on mnist, not B-16N,8N,QN on mnist"):
        train_run(tiny, "B-16N,8N,QN", recipe=replace(FAST, epochs=1), run_dir=run, progress=False)
    with pytest.raises(TrainError, match=r"holds B-16N,8N,Q on mnist, not B-16N,8N,Q in4 on mnist"):
        train_run(tiny, "B-16N,8N,Q", recipe=replace(FAST, epochs=1), run_dir=run, progress=False,
                  options=ModelOptions(input_bits=4))
    with pytest.raises(TrainError, match=r"another recipe, epochs; use --force"):
        train_run(tiny, "B-16N,8N,Q", recipe=replace(FAST, epochs=2), run_dir=run, progress=False)
    other = build_model("B-16N,8N,QN", 784, 10)
    with pytest.raises(TrainError, match=r"holds B-16N,8N,Q on mnist, not B-16N,8N,QN on mnist"):
        load_checkpoint_into(other, run / "checkpoint.pt")
    # --force retrains
    forced = train_run(tiny, "B-16N,8N,Q", recipe=replace(FAST, epochs=1), run_dir=run, progress=False, force=True)
    assert forced["test_acc"] == first["test_acc"]  # deterministic
    assert (run / "checkpoint.pt").stat().st_mtime_ns != stamp


def test_float_baseline_trains(small, tmp_path):
    m = train_run(small, "F-32,16", recipe=FAST, run_dir=tmp_path / "f", progress=False)
    assert m["test_acc"] > 0.7 and m["fpga_able"] is False


def test_random_shift_moves_images_within_bounds():
    img = torch.zeros(3, 28, 28, 1, dtype=torch.uint8)
    img[:, 10:18, 10:18] = 255
    out = random_shift(img.reshape(3, -1), (28, 28, 1), 2, torch.Generator().manual_seed(1)).reshape(3, 28, 28)
    assert out.dtype == torch.uint8
    for o in out:
        rows, cols = torch.nonzero(o, as_tuple=True)
        assert len(rows) == 64 and 8 <= rows.min() <= 12 and 8 <= cols.min() <= 12
    assert not all(torch.equal(out[0], o) for o in out[1:])  # per-image shifts


@pytest.mark.parametrize("shape,max_px,n", [((28, 28, 1), 1, 128), ((28, 28, 1), 3, 7), ((32, 32, 3), 2, 33)])
def test_random_shift_is_the_window_of_the_padded_image(shape, max_px, n):
    """Its definition, image by image: the window at the drawn offset of the zero-padded image,
    with the offsets drawn as randint(0, 2 max_px + 1, (2, n)) from the generator."""
    h, w, c = shape
    x = torch.randint(0, 256, (n, h * w * c), dtype=torch.uint8, generator=torch.Generator().manual_seed(n))
    out = random_shift(x, shape, max_px, torch.Generator().manual_seed(5))
    d = torch.randint(0, 2 * max_px + 1, (2, n), generator=torch.Generator().manual_seed(5))
    padded = torch.zeros(n, h + 2 * max_px, w + 2 * max_px, c, dtype=torch.uint8)
    padded[:, max_px:max_px + h, max_px:max_px + w] = x.reshape(n, h, w, c)
    for b in range(n):
        ref = padded[b, d[0, b]:d[0, b] + h, d[1, b]:d[1, b] + w].reshape(-1)
        assert torch.equal(out[b], ref), f"image {b}"


def test_recipes():
    assert get_recipe("thesis").optimizer == "rmsprop" and get_recipe("thesis").batch_size == 32
    assert get_recipe("thesis").lr == 1e-3 and get_recipe("thesis").epochs == 10
    assert set(RECIPES) == {"thesis", "strong"}
    with pytest.raises(ValueError, match="unknown recipe 'x'"):
        get_recipe("x")


def test_cli_trains_and_reports_errors_in_one_line(mnist_dir, tmp_path):
    env = dict(os.environ, RESBIN_RUNS=str(tmp_path / "runs"), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "train", "--dataset", "mnist", "--data-dir", str(mnist_dir), "--model", "B-16N,QN",
           "--recipe", "thesis", "--epochs", "1", "--limit-train", "1000", "--no-progress"]
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "test accuracy" in r.stdout
    run = tmp_path / "runs" / "mnist" / "B-16N_QN"
    assert json.loads((run / "metrics.json").read_text())["test_acc"] > 0.5
    # the CLI fixes torch's thread count (not the machine's core count) and records it
    from train.cli_types import TRAIN_THREADS
    assert json.loads((run / "config.json").read_text())["threads"] == TRAIN_THREADS
    bad = subprocess.run(cmd[:8] + ["B-16N,X"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "unknown layer token 'X'" in bad.stderr
    size = subprocess.run([sys.executable, "-m", "train", "size", "B-128", "--inputs", "784", "--outputs", "10"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert size.returncode == 0 and "17.79 KiB" in size.stdout and "deployed" in size.stdout


def test_teacher_is_shared_by_sibling_runs(tiny, tmp_path, monkeypatch):
    from train import fitting

    kw = dict(recipe=replace(FAST_KD, epochs=1), progress=False)
    train_run(tiny, "B-32N,QN", run_dir=tmp_path / "a", **kw)
    cached = list((tmp_path / ".teachers").glob("F-32N-*.pt"))
    assert len(cached) == 1
    trained = []
    real = fitting.train_epoch
    monkeypatch.setattr(fitting, "train_epoch", lambda *a, **k: trained.append(k["desc"]) or real(*a, **k))
    train_run(tiny, "B-32N,QN", run_dir=tmp_path / "b", options=ModelOptions(input_bits=4), **kw)
    assert trained and not any(d.startswith("teacher") for d in trained)  # the cached teacher was used
    a = torch.load(tmp_path / "a" / "teacher.pt", weights_only=False)
    b = torch.load(tmp_path / "b" / "teacher.pt", weights_only=False)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    # a teacher of another recipe is not taken from the cache
    trained.clear()
    train_run(tiny, "B-32N,QN", run_dir=tmp_path / "c", recipe=replace(FAST_KD, epochs=1, teacher_epochs=2),
              progress=False)
    assert sum(d.startswith("teacher") for d in trained) == 2
    assert len(list((tmp_path / ".teachers").glob("F-32N-*.pt"))) == 2
