"""A user's own data set (idx:<dir>, npz:<file>) through the whole flow: loaders and validation,
the --val split, safe names, then `make deploy` -> deploy.validate -> notebook, bit-exact."""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from train.data import DataError, dataset_info, default_n_val, load_dataset, parse_val, val_suffix

REPO = Path(__file__).resolve().parent.parent
IDX = {"train_images": "train-images-idx3-ubyte", "train_labels": "train-labels-idx1-ubyte",
       "test_images": "t10k-images-idx3-ubyte", "test_labels": "t10k-labels-idx1-ubyte"}


# ------------------------------------------------------------------ generated data sets

def images(n_train=300, n_test=100, classes=3, hw=(8, 8), seed=0):
    """Learnable images: one random prototype per class plus noise (uint8)."""
    rng = np.random.default_rng(seed)
    protos = rng.integers(0, 256, (classes, *hw))
    y = rng.permutation(np.arange(n_train + n_test) % classes)
    x = np.clip(protos[y] + rng.normal(0, 40, (len(y), *hw)), 0, 255).astype(np.uint8)
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:]


def write_idx(d: Path, x_tr, y_tr, x_te, y_te) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    for role, arr in zip(IDX, (x_tr, y_tr, x_te, y_te)):
        arr = np.asarray(arr, dtype=np.uint8)
        raw = bytes([0, 0, 8, arr.ndim]) + np.array(arr.shape, ">u4").tobytes() + arr.tobytes()
        (d / (IDX[role] + ".gz")).write_bytes(gzip.compress(raw))
    return d


def write_npz(path: Path, **arrays) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
    return path


def npz_arrays(**override):
    x_tr, y_tr, x_te, y_te = images(n_train=40, n_test=12)
    a = {"x_train": x_tr, "y_train": y_tr, "x_test": x_te, "y_test": y_te}
    a.update(override)
    return {k: v for k, v in a.items() if v is not None}


# ------------------------------------------------------------------ npz: loading and validation

def test_npz_loads_images_text_and_explicit_validation(tmp_path):
    a = npz_arrays()
    ds = load_dataset(f"npz:{write_npz(tmp_path / 'img.npz', **a)}")
    assert (ds.x_train.shape, ds.x_val.shape, ds.x_test.shape) == ((36, 64), (4, 64), (12, 64))
    assert (ds.n_classes, ds.n_outputs, ds.input_max, ds.image_shape) == (3, 3, 255, (8, 8, 1))
    np.testing.assert_array_equal(ds.full_train()[0], a["x_train"].reshape(40, 64))
    assert ds.x_train.dtype == np.uint8 and ds.y_train.dtype == np.int64
    # flat inputs with an image_shape; explicit x_val/y_val are used as they are
    flat = {k: (v.reshape(len(v), -1) if k.startswith("x") else v) for k, v in a.items()}
    p = write_npz(tmp_path / "flat.npz", **flat, image_shape=np.array([4, 16]), x_val=flat["x_test"][:5],
                  y_val=flat["y_test"][:5])
    ds = load_dataset(f"npz:{p}")
    assert ds.image_shape == (4, 16, 1) and len(ds.x_val) == 5 and len(ds.x_train) == 40
    with pytest.raises(DataError, match="holds x_val/y_val, so --val does not apply"):
        load_dataset(f"npz:{p}", n_val=3)
    # multi-hot text: bool 0/1 inputs, no image shape, binary labels -> one sigmoid output
    rng = np.random.default_rng(1)
    text = {"x_train": rng.random((30, 20)) < 0.3, "y_train": np.arange(30) % 2,
            "x_test": rng.random((6, 20)) < 0.3, "y_test": np.arange(6) % 2}
    p = write_npz(tmp_path / "text.npz", **text)
    ds = load_dataset(f"npz:{p}")
    assert (ds.input_max, ds.image_shape, ds.n_outputs, ds.x_train.dtype) == (1, None, 1, np.uint8)
    assert dataset_info(f"npz:{p}") == (20, 1, 1, None)
    from train.data import main as data_main

    assert data_main(["info", f"npz:{p}"]) == 0 and data_main(["fetch", f"npz:{p}"]) == 0
    assert data_main(["fetch", f"npz:{tmp_path / 'nope.npz'}"]) == 2


NPZ_BAD = {
    "missing": (dict(y_test=None), r"lacks y_test \(expected x_train, y_train, x_test, y_test"),
    "unknown": (dict(X_val=np.zeros((2, 8, 8), np.uint8)), "has unknown arrays X_val"),
    "val_alone": (dict(x_val=np.zeros((2, 8, 8), np.uint8)), "x_val and y_val go together"),
    "float": (dict(x_train=np.full((40, 8, 8), np.nan, np.float32)),
              r"x_train is float32 and holds NaN \(expected unsigned integers 0..255"),
    "signed": (dict(x_test=np.zeros((12, 8, 8), np.int16)), r"x_test is int16 \(expected unsigned"),
    "too_big": (dict(x_train=np.full((40, 8, 8), 1000, np.uint16)), "values up to 1000 .* 8-bit"),
    "one_dim": (dict(x_test=np.zeros(12, np.uint8)), r"x_test has shape \(12,\)"),
    "object": (dict(x_train=np.array([[1]] * 40, dtype=object)), "x_train is an object array"),
    "counts": (dict(y_train=np.arange(39) % 3), "39 labels y_train for 40 inputs x_train"),
    "empty_test": (dict(x_test=np.zeros((0, 8, 8), np.uint8), y_test=np.zeros(0, np.int64)),
                   "x_test is empty"),
    "features": (dict(x_test=np.zeros((12, 8, 7), np.uint8)), r"x_test examples are \(8, 7\), x_train"),
    "image_shape": (dict(image_shape=np.array([9, 9])), r"image_shape \(9, 9, 1\) does not hold the 64"),
    "image_shape_kind": (dict(image_shape=np.array([8.0, 8.0])), r"image_shape is \[8.0, 8.0\]"),
    "label_200": (dict(y_train=np.r_[np.arange(39) % 10, 200]),
                  r"190 of the classes 0..200 never occur in the training labels \(10, 11, 12, 13, 14, "
                  r"...; largest label 200 in y_train\)"),
    "negative": (dict(y_test=np.r_[-1, np.arange(11) % 3]), "y_test has the negative label -1"),
    "one_class": (dict(y_train=np.zeros(40, np.int64), y_test=np.zeros(12, np.int64)),
                  "the training labels hold 1 class"),
    "test_only_class": (dict(y_test=np.r_[3, np.arange(11) % 3]), r"classes 0..3 never occur .*\(3; "),
    "float_labels": (dict(y_train=np.zeros(40, np.float32)), r"y_train is float32 \(40,\) \(expected a 1-D "
                                                              r"integer array\)"),
}


@pytest.mark.parametrize("case", list(NPZ_BAD))
def test_npz_bad_input_is_one_line_data_error(tmp_path, case):
    override, msg = NPZ_BAD[case]
    p = write_npz(tmp_path / "bad.npz", **npz_arrays(**override))
    with pytest.raises(DataError, match=msg) as e:
        load_dataset(f"npz:{p}")
    assert "\n" not in str(e.value) and str(e.value).startswith("bad.npz: ")


def test_corrupt_files_are_one_line_data_errors(tmp_path):
    p = write_npz(tmp_path / "ok.npz", **npz_arrays())
    raw = p.read_bytes()
    for cut in (len(raw) // 3, len(raw) - 30):
        (tmp_path / "cut.npz").write_bytes(raw[:cut])
        with pytest.raises(DataError, match=r"^cut.npz: corrupt or truncated npz archive") as e:
            load_dataset(f"npz:{tmp_path / 'cut.npz'}")
        assert "\n" not in str(e.value)
    (tmp_path / "text.npz").write_text("not a zip")
    with pytest.raises(DataError, match="text.npz: corrupt or truncated npz archive"):
        load_dataset(f"npz:{tmp_path / 'text.npz'}")
    with pytest.raises(DataError, match="no such file"):
        load_dataset(f"npz:{tmp_path / 'none.npz'}")
    d = write_idx(tmp_path / "idx", *images(n_train=30, n_test=10))
    gz = d / (IDX["train_images"] + ".gz")
    gz.write_bytes(gz.read_bytes()[:-40])
    with pytest.raises(DataError, match=r"^train-images-idx3-ubyte.gz: truncated gzip stream"):
        load_dataset(f"idx:{d}")


def test_idx_bad_labels_one_line_exit_2(tmp_path, capsys):
    """An IDX set with one label 200 among the classes 0..9: refused, never a 201-class model."""
    x_tr, _, x_te, _ = images(n_train=60, n_test=20)
    y_tr, y_te = np.arange(60) % 10, np.arange(20) % 10
    y_tr[7] = 200
    d = write_idx(tmp_path / "labels", x_tr, y_tr, x_te, y_te)
    msg = r"labels: 190 of the classes 0..200 never occur in the training labels .*largest label 200 in y_train"
    with pytest.raises(DataError, match=msg):
        load_dataset(f"idx:{d}")
    with pytest.raises(DataError, match=msg):
        dataset_info(f"idx:{d}")
    from train.__main__ import main

    assert main(["--dataset", f"idx:{d}", "--model", "B-16N,QN", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "200" in err


# ------------------------------------------------------------------ --val, names

def test_val_option_and_default_split(tmp_path, capsys):
    assert [parse_val(v) for v in (None, "5000", "0.1", "10%", 7)] == [None, 5000, 0.1, 0.1, 7]
    for bad in ("0", "1.5", "-3", "abc", "0%"):
        with pytest.raises(DataError, match="--val"):
            parse_val(bad)
    assert [default_n_val(n) for n in (1, 14, 49_999, 50_000, 60_000)] == [1, 1, 5000, 10_000, 10_000]
    assert (val_suffix(None), val_suffix("500"), val_suffix("0.25")) == ("", "__val500", "__val0p25")
    d = write_idx(tmp_path / "small", *images(n_train=50, n_test=10))
    assert len(load_dataset(f"idx:{d}").x_val) == 5        # 10 % of a small set
    assert len(load_dataset(f"idx:{d}", n_val="20%").x_val) == 10
    from train.__main__ import main

    def run_dir(*extra):
        assert main(["--dataset", f"idx:{d}", "--model", "B-16N,QN", "--print-run-dir", *extra]) == 0
        return capsys.readouterr().out.strip()
    assert run_dir().endswith("/B-16N_QN") and run_dir("--val", "0.2").endswith("/B-16N_QN__val0p2")
    assert main(["--dataset", f"idx:{d}", "--model", "B-16N,QN", "--val", "0", "--print-run-dir"]) == 2
    assert "--val 0: expected a count >= 1" in capsys.readouterr().err
    assert main(["--dataset", f"idx:{d}", "--model", "B-16N,QN", "--val", "50", "--no-progress"]) == 2
    assert "cannot hold out 50 validation examples from 50" in capsys.readouterr().err


def test_val_split_is_part_of_the_run_identity(tmp_path, monkeypatch, one_thread):
    """Two splits never share a run folder; the split is in config.json and the folder name."""
    from train.trainer import TrainError, train_run

    monkeypatch.setenv("RESBIN_RUNS", str(tmp_path / "runs"))
    d = write_idx(tmp_path / "set", *images(n_train=60, n_test=20))
    kw = dict(recipe="thesis", epochs=1, progress=False, device="cpu")
    a = train_run(f"idx:{d}", "B-16N,QN", **kw)
    b = train_run(f"idx:{d}", "B-16N,QN", val="0.5", **kw)
    assert Path(a["run_dir"]).name == "B-16N_QN" and Path(b["run_dir"]).name == "B-16N_QN__val0p5"
    cfg_a, cfg_b = (json.loads((Path(m["run_dir"]) / "config.json").read_text()) for m in (a, b))
    assert (cfg_a["val"], cfg_a["n_val"], cfg_b["val"], cfg_b["n_val"]) == (None, 6, 0.5, 30)
    # the same folder asked for with another split: refused, not silently reused
    with pytest.raises(TrainError, match="with another val"):
        train_run(f"idx:{d}", "B-16N,QN", val=10, run_dir=a["run_dir"], **kw)


def test_dataset_names_never_clash_or_escape(tmp_path, monkeypatch):
    from train.runs import dataset_slug, run_dir, runs_root

    monkeypatch.setenv("RESBIN_RUNS", str(tmp_path / "runs"))
    for sub in ("a/data", "b/data", "a/data/sub"):
        (tmp_path / sub).mkdir(parents=True)
    one, two = run_dir(f"idx:{tmp_path}/a/data", "M"), run_dir(f"idx:{tmp_path}/b/data", "M")
    assert one != two and one.parent.name.startswith("idx-data-") and two.parent.name.startswith("idx-data-")
    # the same folder however spelled: one run folder
    assert run_dir(f"idx:{tmp_path}/a/data/sub/..", "M") == one
    monkeypatch.chdir(tmp_path / "a" / "data")
    assert run_dir("idx:sub/..", "M") == one and run_dir("idx:.", "M") == one
    root = runs_root().resolve()
    for name in ("idx:sub/..", "idx:/", "idx:..", "npz:../../x.npz", "idx:~", "../../etc", "mnist/../..", ".."):
        p = run_dir(name, "M").resolve()
        assert root in p.parents and p.parent.parent == root, (name, p)
        assert "/" not in dataset_slug(name) and not dataset_slug(name).startswith(".")
    assert dataset_slug("mnist") == "mnist"
    assert dataset_slug(f"npz:{tmp_path}/my set.npz").startswith("npz-my_set-")


# ------------------------------------------------------------------ the whole flow

def _stamp() -> str:
    h = hashlib.sha256((REPO / "env/requirements.lock").read_bytes() + (REPO / "env/finn-plus.txt").read_bytes())
    return f".venv/.resbin-lock-{h.hexdigest()[:16]}"


def make_deploy(work: Path, dataset: str, *variables: str, model: str = "B-16N,QN") -> subprocess.CompletedProcess:
    """`make deploy` as a user runs it (runs and packages inside `work`; setup not re-run)."""
    env = {**os.environ, "RESBIN_RUNS": str(work / "runs"), "OMP_NUM_THREADS": "1"}
    cmd = ["make", "-s", "-o", _stamp(), "deploy", f"DATASET={dataset}", f"MODEL={model}", "RECIPE=thesis",
           "EPOCHS=1", f"DIST={work / 'dist'}", *variables]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)


def one(folder: Path, pattern: str = "*") -> Path:
    found = [p for p in folder.glob(pattern) if p.is_dir() and not p.name.startswith(".")]
    assert len(found) == 1, found
    return found[0]


def run_blocked(module: str, args: list[str], cwd: Path):
    from tests.test_deploy import run_blocked as rb

    return rb(module, args, cwd)


def check_chain(work: Path, dataset: str, n_test: int) -> dict:
    """After `make deploy`: names inside runs/ and dist/, validate (board runtime only) and
    the notebook on the package, everything bit-exact with FINN's HW graph and the QONNX model."""
    from deploy.sim import SimAccelerator
    from hw_build.finn_env import ensure_finn
    from train.runs import dataset_slug

    ensure_finn()
    from hw_build.verify import integer_outputs

    slug = dataset_slug(dataset)
    run = one(work / "runs" / slug)
    build = run / "hw" / "Pynq-Z2-auto"
    pkg = one(work / "dist")
    assert pkg.name == f"resbin-{slug}-{run.name}-Pynq-Z2-auto" and (work / "dist" / f"{pkg.name}.zip").is_file()
    m = json.loads((pkg / "manifest.json").read_text())
    assert (m["dataset"], m["data_name"], m["board"], m["target"], m["fits"]) == \
        (dataset, slug, "Pynq-Z2", "auto", True)
    assert f"--dataset {slug} --backend sim" in (pkg / "README.md").read_text()
    x = np.load(pkg / "data" / f"{slug}_test_x.npy")
    y = np.load(pkg / "data" / f"{slug}_test_y.npy")
    assert len(x) == len(y) == n_test
    # bit-exact: numpy simulator of golden.npz == QONNX integer outputs == FINN HW graph (sim.json)
    sim = SimAccelerator(pkg / "golden.npz")
    q_int = integer_outputs(run / "model.qonnx.onnx", x)
    np.testing.assert_array_equal(sim.execute_int(x), q_int)
    pred = sim.execute(x)
    np.testing.assert_array_equal(pred, q_int.argmax(1))
    sim_json = json.loads((build / "sim.json").read_text())
    assert sim_json["identical"] == f"{n_test}/{n_test}" and sim_json["accuracy"] == float((pred == y).mean())
    # validate inside the unpacked zip, with torch/FINN/qonnx unimportable
    unpacked = work / "unzipped"
    zipfile.ZipFile(work / "dist" / f"{pkg.name}.zip").extractall(unpacked)
    r = run_blocked("deploy.validate", ["--dataset", slug, "--backend", "sim"], cwd=unpacked / pkg.name)
    assert r.returncode == 0, r.stderr
    res = json.loads((unpacked / pkg.name / "results" / f"validate-{slug}-sim.json").read_text())
    assert res["accuracy"] == sim_json["accuracy"] and res["n_images"] == n_test
    cm = np.array(res["confusion_matrix"])
    assert cm.shape == (3, 3) and np.trace(cm) == int((pred == y).sum())
    # the notebook, executed against the package
    nb_res = run_notebook(unpacked / pkg.name)
    assert nb_res["accuracy"] == res["accuracy"] and nb_res["n_images"] == n_test
    return {"run": run, "build": build, "pkg": pkg, "slug": slug, "pred": pred}


def run_notebook(pkg: Path) -> dict:
    import nbformat
    from nbclient import NotebookClient

    nb_path = pkg / "notebooks" / "resbin_pynq_z2.ipynb"
    nb = nbformat.read(nb_path, as_version=4)
    env_keep = {k: os.environ.pop(k) for k in ("RESBIN_LIMIT", "RESBIN_BACKEND", "RESBIN_PACKAGE", "MPLBACKEND")
                if k in os.environ}
    try:
        NotebookClient(nb, timeout=300, kernel_name="python3",
                       resources={"metadata": {"path": str(nb_path.parent)}}).execute()
    finally:
        os.environ.update(env_keep)
    m = json.loads((pkg / "manifest.json").read_text())
    return json.loads((pkg / "results" / f"validate-{m['data_name']}-sim-notebook.json").read_text())


@pytest.fixture(scope="module")
def idx_chain(tmp_path_factory):
    """A generated IDX set in a folder named data/, spelled with '/sub/..', through `make deploy`."""
    work = tmp_path_factory.mktemp("own-idx")
    d = write_idx(work / "a" / "data", *images())
    (d / "sub").mkdir()
    dataset = f"idx:{d}/sub/.."
    # B-32N,QN: the fastest folding fits the Z2 ("auto"), the fully parallel one (1e12 fps) does not
    r = make_deploy(work, dataset, "VAL=0.2", model="B-32N,QN")
    assert r.returncode == 0, r.stderr[-4000:]
    return work, dataset, check_chain(work, dataset, n_test=100)


@pytest.mark.finn
def test_idx_set_through_make_deploy_validate_notebook(idx_chain):
    work, dataset, c = idx_chain
    cfg = json.loads((c["run"] / "config.json").read_text())
    # the run records the folder resolved (one name however spelled); the package keeps the spelling
    resolved = "idx:" + str(Path(dataset[4:]).resolve())
    assert (cfg["dataset"], cfg["val"], cfg["n_val"], c["run"].name) == (resolved, 0.2, 60, "B-32N_QN__in4__val0p2")  # make's default 4-bit input
    assert (work / "runs").resolve() in c["run"].resolve().parents
    assert not (REPO / "dist" / c["pkg"].name).exists()


@pytest.mark.slow
@pytest.mark.finn
def test_npz_set_through_make_deploy_validate_notebook(tmp_path):
    """Flat inputs (no image shape), an explicit validation split, through the same flow."""
    x_tr, y_tr, x_te, y_te = images(n_train=300, n_test=80, seed=3)
    flat = {"x_train": x_tr.reshape(300, -1)[:260], "y_train": y_tr[:260], "x_val": x_tr.reshape(300, -1)[260:],
            "y_val": y_tr[260:], "x_test": x_te.reshape(80, -1), "y_test": y_te}
    p = write_npz(tmp_path / "my_data.npz", **flat)
    r = make_deploy(tmp_path, f"npz:{p}")
    assert r.returncode == 0, r.stderr[-4000:]
    c = check_chain(tmp_path, f"npz:{p}", n_test=80)
    m = json.loads((c["pkg"] / "manifest.json").read_text())
    assert m["image_shape"] is None and c["slug"].startswith("npz-my_data-")
    assert json.loads((c["run"] / "config.json").read_text())["n_val"] == 40


def package_cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "deploy.package", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=600)


def one_line_error(r) -> str:
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in r.stderr
    return lines[0]


@pytest.fixture(scope="module")
def no_fit_build(idx_chain) -> Path:
    """`make estimate ... TARGET_FPS=1e12` after the chain: a newer build that does not fit (exit 4)."""
    run = idx_chain[2]["run"]
    r = subprocess.run([sys.executable, "-m", "hw_build", "estimate", "--run", str(run), "--target-fps", "1e12",
                        "--verify-n", "0", "--quiet"], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert r.returncode == 4, r.stderr[-2000:]
    return run / "hw" / "Pynq-Z2-fps1e12"


@pytest.mark.finn
def test_deploy_packages_the_named_build_not_the_newest(idx_chain, no_fit_build, tmp_path):
    """Issue 11, worst case 1: a newer build that does not fit must not be packaged by default."""
    work, _, c = idx_chain
    run = c["run"]
    newest = max(run.glob("hw/*/golden.npz"), key=lambda p: p.stat().st_mtime)
    assert newest.parent.name == "Pynq-Z2-fps1e12"
    auto = json.loads((c["build"] / "report.json").read_text())
    r = package_cli("--build", run, "--board", "Pynq-Z2", "--out", tmp_path, "--no-zip")
    assert r.returncode == 0, r.stderr
    m = json.loads((one(tmp_path) / "manifest.json").read_text())
    assert (m["target"], m["fits"], m["estimated_fps"]) == ("auto", True, auto["estimated_fps"])
    # the non-fitting build: refused unless asked for explicitly; then the package says so
    msg = one_line_error(package_cli("--build", run, "--target-fps", "1e12", "--out", tmp_path / "x"))
    assert "Pynq-Z2-fps1e12: the design does not fit Pynq-Z2 (LUT" in msg and "--allow-no-fit" in msg
    assert not (tmp_path / "x").exists() or not any((tmp_path / "x").iterdir())
    r = package_cli("--build", run, "--target-fps", "1e12", "--allow-no-fit", "--out", tmp_path / "x", "--no-zip")
    assert r.returncode == 0 and "does NOT fit" in r.stdout, r.stderr
    p = one(tmp_path / "x")
    m = json.loads((p / "manifest.json").read_text())
    assert (m["target"], m["fits"], m["board"]) == ("fps1e12", False, "Pynq-Z2")
    assert "target `fps1e12`" in (p / "README.md").read_text() and \
        "**does NOT fit the board**" in (p / "README.md").read_text()
    # a build folder the options do not name, and a build that does not exist
    assert "is a build for target fps1e12, not fps1e5" in one_line_error(
        package_cli("--build", newest.parent, "--target-fps", "1e5", "--out", tmp_path / "y"))
    assert "no build for Pynq-Z2 at fps1e5 (this run has Pynq-Z2-auto, Pynq-Z2-fps1e12)" in one_line_error(
        package_cli("--build", run, "--target-fps", "1e5", "--out", tmp_path / "y"))


@pytest.mark.finn
def test_redeploy_keeps_validation_results(idx_chain, no_fit_build, tmp_path):
    """Issue 11, worst case 4a: a second `deploy` keeps results/ of the same build; another
    build's results are refused without --force."""
    work, _, c = idx_chain
    pkg = tmp_path / "dist" / c["pkg"].name
    shutil.copytree(c["pkg"], pkg)
    r = subprocess.run([sys.executable, "-m", "deploy.validate", "--package", str(pkg), "--limit", "10"],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    result = pkg / "results" / f"validate-{c['slug']}-sim.json"
    before = result.read_bytes()
    r = package_cli("--build", c["run"], "--out", tmp_path / "dist")
    assert r.returncode == 0, r.stderr
    assert result.read_bytes() == before
    assert not any("results/" in n for n in zipfile.ZipFile(f"{pkg}.zip").namelist())
    # the same package name for another build (another folding of the same model)
    other = ["--build", c["run"], "--target-fps", "1e12", "--allow-no-fit", "--name", pkg.name,
             "--out", tmp_path / "dist"]
    msg = one_line_error(package_cli(*other))
    assert "results holds validation results of build" in msg and "(Pynq-Z2, auto)" in msg and "--force" in msg
    assert result.read_bytes() == before
    r = package_cli(*other, "--force")
    assert r.returncode == 0, r.stderr
    assert not (pkg / "results").exists()
    assert json.loads((pkg / "manifest.json").read_text())["target"] == "fps1e12"


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.finn
def test_package_files_and_labels_are_checked(idx_chain, tmp_path):
    """Issue 11, worst case 5 in the package: every file's sha256, labels 0..n_classes-1, and a
    test set of the wrong width, each a one-line error of deploy.validate (board runtime only)."""
    _, _, c = idx_chain
    slug, src = c["slug"], c["pkg"]
    y = np.load(src / "data" / f"{slug}_test_y.npy")
    x = np.load(src / "data" / f"{slug}_test_x.npy")

    def variant(name: str, file: str, write, update_sha: bool = True) -> Path:
        p = tmp_path / name
        shutil.copytree(src, p)
        write(p / file)
        if update_sha:
            m = json.loads((p / "manifest.json").read_text())
            m["sha256"][file] = _sha(p / file)
            (p / "manifest.json").write_text(json.dumps(m))
        return p

    def validate(p: Path) -> str:
        return one_line_error(run_blocked("deploy.validate", ["--backend", "sim"], cwd=p))

    yfile, xfile = f"data/{slug}_test_y.npy", f"data/{slug}_test_x.npy"
    bad = y.copy()
    bad[0] = 250
    p = variant("tampered", yfile, lambda f: np.save(f, bad), update_sha=False)
    assert f"{slug}_test_y.npy: not the file of build" in validate(p)
    for v, span in ((-1, "-1..2"), (250, "0..250")):
        bad = y.copy()
        bad[3] = v
        p = variant(f"label{v}", yfile, lambda f: np.save(f, bad))
        assert f"labels {span}, expected 0..2 (manifest n_classes 3)" in validate(p)
    p = variant("narrow", xfile, lambda f: np.save(f, x[:, :63]))
    assert "input shape (100, 63), expected (N, 64)" in validate(p)
    p = variant("truncated", xfile, lambda f: f.write_bytes(f.read_bytes()[:3000]))
    assert "unreadable test set" in validate(p)
    p = variant("golden", "golden.npz", lambda f: f.write_bytes(f.read_bytes()[:5000]), update_sha=False)
    assert "golden.npz: not a readable golden.npz" in validate(p)
    assert f"{slug}_test_x.npy: missing (listed in manifest.json)" in validate(
        variant("gone", xfile, lambda f: f.unlink(), update_sha=False))
    assert "--limit 0: expected at least 1 image" in one_line_error(
        run_blocked("deploy.validate", ["--limit", "0"], cwd=src))
    # the original data-set string names the same test set
    r = run_blocked("deploy.validate", ["--dataset", json.loads((src / "manifest.json").read_text())["dataset"],
                                        "--limit", "5", "--out", str(tmp_path / "r.json")], cwd=src)
    assert r.returncode == 0 and json.loads((tmp_path / "r.json").read_text())["dataset"] == slug, r.stderr


@pytest.mark.finn
def test_package_names_and_data_set_checked(idx_chain, tmp_path):
    _, _, c = idx_chain
    for name in ("../evil", ".hidden", "a/b"):
        assert "use letters, digits" in one_line_error(package_cli("--build", c["run"], "--name", name,
                                                                    "--out", tmp_path / "dist"))
    assert not (tmp_path / "evil").exists()
    msg = one_line_error(package_cli("--build", c["run"], "--dataset", "mnist", "--out", tmp_path / "dist"))
    assert "--dataset mnist: the build's model was trained on idx:" in msg
