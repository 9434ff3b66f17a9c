"""Accuracy, confusion matrix, throughput and latency of the accelerator on a packaged test set.

    python -m deploy.validate [--dataset NAME] --backend sim|pynq [--package DIR] [--batch N]
                              [--limit N] [--out results.json]

--dataset: the package's test set (default; its manifest `data_name`, or the original data-set
string). Every file is checked against the manifest's sha256, labels against its n_classes.

Runs on the board (numpy + pynq) and on any PC (sim backend). Writes JSON and prints a table.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

from deploy.accelerator import AcceleratorInputError
from deploy.bundle import PackageError, open_package
from deploy.golden import GoldenError
from deploy.pynq_driver import BoardError

ERRORS = (PackageError, GoldenError, BoardError, AcceleratorInputError)


def confusion_matrix(y: np.ndarray, pred: np.ndarray, n_classes: int) -> np.ndarray:
    """rows: true label, columns: predicted label."""
    cm = np.zeros((n_classes, n_classes), np.int64)
    np.add.at(cm, (y, pred), 1)
    return cm


def run_validation(package=None, dataset: str | None = None, backend: str = "sim",
                   batch: int = 1000, limit: int | None = None, accel=None,
                   latency_runs: int = 20) -> dict:
    """Execute the test set batch by batch; returns the results dict (see module docstring)."""
    pkg = open_package(package)
    if batch < 1:
        raise AcceleratorInputError(f"--batch {batch} must be >= 1")
    if accel is None:
        accel = pkg.accelerator(backend, batch_size=batch)   # checks every file's sha256
    x, y = pkg.test_set(dataset, limit)
    dataset = pkg.data_name if dataset in (None, pkg.manifest["dataset"]) else dataset
    preds, lat = [], []
    t_all = time.perf_counter()
    for s in range(0, len(x), batch):
        t0 = time.perf_counter()
        preds.append(accel.execute(x[s:s + batch]))
        lat.append(time.perf_counter() - t0)
    total = time.perf_counter() - t_all
    pred = np.concatenate(preds)
    one = []
    for i in range(min(latency_runs, len(x))):
        t0 = time.perf_counter()
        accel.execute(x[i:i + 1])
        one.append(time.perf_counter() - t0)
    n_classes = pkg.n_classes or int(max(y.max(), pred.max()) + 1)
    if pred.ndim != 1 or pred.min() < 0 or pred.max() >= n_classes:
        raise PackageError(f"{pkg.golden_path}: predictions {int(pred.min())}..{int(pred.max())} "
                           f"outside the {n_classes} classes of the manifest")
    cm = confusion_matrix(y, pred, n_classes)
    res = {
        "dataset": dataset, "backend": accel.backend, "package": str(pkg.root),
        "model": pkg.manifest.get("model"), "build_id": pkg.build_id,
        "n_images": int(len(x)), "batch": int(batch),
        "accuracy": float((pred == y).mean()), "correct": int((pred == y).sum()),
        "confusion_matrix": cm.tolist(),
        "images_per_s": float(len(x) / total), "total_s": float(total),
        "batch_latency_ms": {"median": float(np.median(lat) * 1e3),
                             "mean": float(np.mean(lat) * 1e3), "max": float(np.max(lat) * 1e3)},
        "latency_1img_ms": {"median": float(np.median(one) * 1e3),
                            "min": float(np.min(one) * 1e3)},
        "python": platform.python_version(), "numpy": np.__version__,
        "machine": platform.machine(),
    }
    if hasattr(accel, "throughput_test"):
        res["throughput_test"] = accel.throughput_test()
    return res


def format_table(res: dict) -> str:
    lines = [
        f"{res['dataset']} test set, backend {res['backend']}, build {res['build_id']}"
        f" ({res.get('model') or 'model ?'})",
        f"  images        {res['n_images']:>10}   batch {res['batch']}",
        f"  accuracy      {res['accuracy']:>10.4f}   ({res['correct']} correct)",
        f"  images/s      {res['images_per_s']:>10.0f}   (end to end, {res['total_s']:.3f} s)",
        f"  batch latency {res['batch_latency_ms']['median']:>10.3f} ms (median)",
        f"  1-image lat.  {res['latency_1img_ms']['median']:>10.3f} ms (median)",
    ]
    tt = res.get("throughput_test")
    if tt:
        lines.append(f"  FPGA only     {tt['throughput[images/s]']:>10.0f} images/s at "
                     f"{tt['fclk[mhz]']:.1f} MHz, DRAM in {tt['DRAM_in_bandwidth[MB/s]']:.1f} "
                     f"MB/s, out {tt['DRAM_out_bandwidth[MB/s]']:.2f} MB/s")
    cm = np.array(res["confusion_matrix"])
    lines.append("  confusion matrix (rows: true, columns: predicted)")
    w = max(4, len(str(cm.max())) + 1)
    lines.append("      " + "".join(f"{j:>{w}}" for j in range(cm.shape[1])))
    for i, row in enumerate(cm):
        lines.append(f"  {i:>3} " + "".join(f"{v:>{w}}" for v in row))
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m deploy.validate", description=__doc__.split(
        "\n")[0])
    ap.add_argument("--dataset", default=None, help="test set name in <package>/data (default: the "
                    "package's)")
    ap.add_argument("--backend", choices=("sim", "pynq"), default="sim")
    ap.add_argument("--package", default=None,
                    help="board package folder (default: the folder holding deploy/)")
    ap.add_argument("--batch", type=int, default=1000, help="images per accelerator call")
    ap.add_argument("--limit", type=int, default=None, help="use the first N test images")
    ap.add_argument("--out", default=None, help="results JSON (default: <package>/results/"
                    "validate-<dataset>-<backend>.json)")
    a = ap.parse_args(argv)
    try:
        res = run_validation(a.package, a.dataset, a.backend, a.batch, a.limit)
    except ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(a.out) if a.out else Path(res["package"]) / "results" / \
        f"validate-{res['dataset']}-{a.backend}.json"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(res, indent=1) + "\n")
    except OSError as e:
        print(f"error: cannot write {out}: {e}", file=sys.stderr)
        return 2
    print(format_table(res))
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
