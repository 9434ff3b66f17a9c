"""Speed of the `sim` backend (deploy.sim) next to FINN's Python execution and PyTorch.

    python -m bench.sim --run runs/mnist/<slug> [--build <hw build dir>]
        [--finn-images 200] [--threads 2] [--repeats 5] [--out docs/results/sim-speed.md]

One process, one data set (the 10k test images), the same trained model:
- deploy.sim on all test images (best of --repeats, after one warm-up run);
- FINN's Python execution of the HW graph (hw_graph.onnx, one image at a time as FINN runs a
  batch-1 graph) on the first --finn-images images, scaled to 10k; its integer outputs must
  equal the simulator's on those images (bit-exactness is part of the benchmark);
- the PyTorch forward of the trained model (float32, --threads threads) on all test images.
Writes a markdown table (and a JSON twin) with the machine and its load.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from core.labels import labels_from_outputs


class BenchError(RuntimeError):
    """Missing run/build artifacts or a sim/FINN mismatch (one line)."""


def _best(fn, repeats: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _find_build_or_error(run: Path, build: Path | None) -> Path:
    from deploy.golden import GoldenError, find_build
    try:
        return find_build(build if build is not None else run)
    except GoldenError as e:
        raise BenchError(str(e)) from None


def bench(run, build=None, finn_images: int = 200, threads: int = 2, repeats: int = 5,
          data_dir=None, progress: bool = True) -> dict:
    import torch

    from deploy.sim import SimAccelerator
    from hw_build.finn_env import ensure_finn
    from train.data import load_dataset
    from train.trainer import load_run

    run = Path(run)
    if not (run / "config.json").is_file():
        raise BenchError(f"{run}/config.json: not a training run folder")
    build = _find_build_or_error(run, Path(build) if build else None)
    cfg = json.loads((run / "config.json").read_text())
    ds = load_dataset(cfg.get("dataset", "mnist"), data_dir, download=False)
    x, y = np.ascontiguousarray(ds.x_test), ds.y_test
    n = len(x)

    sim = SimAccelerator(build / "golden.npz")
    t_sim = _best(lambda: sim.execute(x), repeats)
    pred = sim.execute(x)
    ints = sim.execute_int(x)

    torch.set_num_threads(threads)
    model, *_ = load_run(run)
    xt = torch.tensor(x, dtype=torch.float32)
    with torch.no_grad():
        t_torch = _best(lambda: model(xt), repeats)
        logits = model(xt).numpy()
    torch_pred = labels_from_outputs(logits)

    ensure_finn()
    import finn.custom_op.fpgadataflow.reshape  # noqa: F401  (registers FINN's HW Reshape)
    from finn.core.onnx_exec import execute_onnx
    from qonnx.core.modelwrapper import ModelWrapper

    m = ModelWrapper(str(build / "hw_graph.onnx"))
    iname = m.graph.input[0].name
    shape = m.get_tensor_shape(iname)
    k = min(finn_images, n)
    name = sim.golden.output["int_tensor"]
    finn_ints = []
    rows = range(k)
    if progress:
        from tqdm import tqdm
        rows = tqdm(rows, desc="FINN python exec", unit="img", leave=False, disable=None)
    t0 = time.perf_counter()
    for i in rows:
        ctx = execute_onnx(m, {iname: x[i:i + 1].astype(np.float32).reshape(shape)},
                           return_full_exec_context=True)
        finn_ints.append(np.asarray(ctx[name]).reshape(-1))
    t_finn = time.perf_counter() - t0
    finn_ints = np.stack(finn_ints).astype(np.int64)
    if not np.array_equal(finn_ints, ints[:k]):
        bad = int(np.argmax(np.any(finn_ints != ints[:k], axis=1)))
        raise BenchError(f"sim differs from FINN's execution of {build}/hw_graph.onnx on test "
                         f"image {bad}: the golden model is not bit-exact")

    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    rec = cfg.get("recipe") or {}
    training = (f"recipe {rec.get('name', '?')}, {cfg.get('epochs', rec.get('epochs', '?'))} "
                f"epoch(s)" + (f" on {cfg['limit_train']:,} training images"
                               if cfg.get("limit_train") else ""))
    return {
        "model": cfg.get("model"), "training": training, "run": str(run), "build": str(build),
        "build_id": sim.build_id, "n_images": n,
        "sim": {"seconds": t_sim, "images_per_s": n / t_sim,
                "accuracy": float((pred == y).mean())},
        "finn_python": {"images": k, "seconds": t_finn, "images_per_s": k / t_finn,
                        "seconds_scaled_to_all": t_finn * n / k,
                        "bit_exact_with_sim": True},
        "torch_fp32": {"threads": threads, "seconds": t_torch, "images_per_s": n / t_torch,
                       "accuracy": float((torch_pred == y).mean()),
                       "labels_equal_to_sim": int((torch_pred == pred).sum())},
        "machine": {"cpu_count": os.cpu_count(), "load_avg_1_5_15": [round(v, 2) for v in load],
                    "python": platform.python_version(), "numpy": np.__version__,
                    "torch": torch.__version__, "processor": platform.processor() or
                    platform.machine()},
        "repeats": repeats,
    }


def to_markdown(r: dict) -> str:
    n = r["n_images"]
    s, f, t = r["sim"], r["finn_python"], r["torch_fp32"]
    mach = r["machine"]
    return "\n".join([
        "# Speed of the sim backend",
        "",
        f"Model `{r['model']}` ({r.get('training', '?')}; build `{r['build_id']}`), {n:,} "
        f"test images; measured by "
        f"`python -m bench.sim` in one process (best of {r['repeats']} runs after a "
        "warm-up for sim and PyTorch).",
        "",
        "| executor | what it computes | time for all images | images/s |",
        "|---|---|---|---|",
        f"| `deploy.sim` (numpy) | the accelerator, bit-exact | {s['seconds']:.3f} s | "
        f"{s['images_per_s']:,.0f} |",
        f"| FINN Python execution of the HW graph | the accelerator | "
        f"{f['seconds_scaled_to_all']:.1f} s (scaled from {f['images']} images) | "
        f"{f['images_per_s']:,.0f} |",
        f"| PyTorch forward, fp32, {t['threads']} threads | the trained model | "
        f"{t['seconds']:.3f} s | {t['images_per_s']:,.0f} |",
        "",
        f"- sim vs FINN: integer outputs identical on all {f['images']} images executed by FINN.",
        f"- accuracy: sim {s['accuracy']:.4f}, PyTorch {t['accuracy']:.4f}; labels equal on "
        f"{t['labels_equal_to_sim']:,} of {n:,} images.",
        f"- speed-up of sim over FINN's Python execution: "
        f"{s['images_per_s'] / f['images_per_s']:,.0f}x.",
        f"- machine: {mach['cpu_count']} CPUs ({mach['processor']}), load average "
        f"{mach['load_avg_1_5_15']} during the run, Python {mach['python']}, numpy "
        f"{mach['numpy']}, torch {mach['torch']}. Other jobs sharing the CPUs slow every "
        "column alike.",
        "",
    ])


def main(argv=None) -> int:
    from train.cli_types import positive_int

    ap = argparse.ArgumentParser(prog="python -m bench.sim",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("--run", required=True, help="training run folder (config.json, checkpoint)")
    ap.add_argument("--build", default=None, help="hardware build folder (default: the newest "
                    "<run>/hw/*/ with golden.npz)")
    ap.add_argument("--finn-images", type=positive_int, default=200)
    ap.add_argument("--threads", type=positive_int, default=2, help="PyTorch threads")
    ap.add_argument("--repeats", type=positive_int, default=5)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--out", default="docs/results/sim-speed.md")
    a = ap.parse_args(argv)
    from deploy.golden import GoldenError
    from train.data import DataError
    from train.trainer import TrainError

    try:
        r = bench(a.run, a.build, a.finn_images, a.threads, a.repeats, a.data_dir)
    except (BenchError, GoldenError, DataError, TrainError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    md = to_markdown(r)
    out.write_text(md)
    out.with_suffix(".json").write_text(json.dumps(r, indent=1) + "\n")
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
