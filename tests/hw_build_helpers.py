"""Shared by tests/test_hw_build.py and tests/test_folding.py: one tiny trained + exported run."""
from __future__ import annotations

from pathlib import Path

# two binary hidden layers and the 8-bit Q shortcut: every layer kind of the thesis model
TINY_MODEL = "B-D16N,12N,QN,D"
_CACHE: dict[str, Path] = {}


def tiny_run(root: Path, mnist_dir: Path) -> Path:
    """Train (1 epoch, 2,000 real MNIST images) and export a tiny residual model, once per session."""
    if "run" in _CACHE:
        return _CACHE["run"]
    from export.qonnx_export import export_run
    from train.trainer import train_run

    run = Path(root) / "mnist-tiny"
    train_run("mnist", TINY_MODEL, recipe="thesis", epochs=1, limit_train=2000, seed=0,
              run_dir=run, data_dir=mnist_dir, progress=False, device="cpu")
    export_run(run, n_check=200)
    _CACHE["run"] = run
    return run


def estimate_build(run: Path) -> dict:
    """The default (`auto`) estimate-only build of the tiny run, once per session."""
    if "auto" not in _CACHE:
        from hw_build.build import build

        _CACHE["auto"] = build(run, until="estimate", progress=False)
    return _CACHE["auto"]
