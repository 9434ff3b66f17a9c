"""`python -m bench.train_speed`: training speed of binary (fast path, Brevitas) vs float models.

    python -m bench.train_speed --out docs/results/train-speed.md [--reps 7] [--steps 30] [--threads 1]

Part 1, steps/s: one Adam step (forward, backward, update) on one fixed batch of random pixels,
for each path and batch size, measured side by side in ONE process with the repetitions
interleaved (path A, B, C, A, B, C, ...), so load from other processes hits every path alike;
medians are reported with the time ratio to the float model. Binary models are first stepped
past Brevitas' 100 statistics steps (the steady state of a long run). Wall clock and process CPU
time are both given; on a shared machine the CPU-time ratio is the steadier one.
Part 2, one epoch end to end: `python -m train --recipe thesis --epochs 1` (50,000 real MNIST
images, batch 32, with evaluation) for each path, in a fresh process each, wall time.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BINARY = "B-D128N,D88N,D88N,QN,D"
FLOAT = "F-128,88,88"


class BenchError(ValueError):
    """Bad arguments."""


def _float_twin(binary: str) -> str:
    """The float model of the binary model's topology (same dropout, batch-norm and shortcut)."""
    return "F-" + binary.split("-", 1)[1]


def _stepper(name: str, path: str, batch: int, seed: int = 0):
    import torch
    import torch.nn.functional as F

    from train.fitting import make_optimizer
    from train.models import build_model
    from train.recipes import Recipe
    from train.trainer import training_forward

    torch.manual_seed(seed)
    model = build_model(name, 784, 10, image_shape=(28, 28, 1))
    forward = training_forward(model, "fast" if path == "fast" else "brevitas")
    opt = make_optimizer(model, Recipe("bench", optimizer="adam", lr=1e-3))  # the trainer's Adam
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (batch, 784), generator=gen).float()
    y = torch.randint(0, 10, (batch,), generator=gen)

    def step():
        loss = F.cross_entropy(forward(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def measure_steps(paths: dict[str, tuple[str, str]], batches, reps: int, steps: int, warmup: int) -> list[dict]:
    """paths: label -> (model name, "fast" | "brevitas"); returns one row per (label, batch)."""
    rows = []
    for batch in batches:
        steppers = {label: _stepper(name, path, batch) for label, (name, path) in paths.items()}
        for s in steppers.values():
            for _ in range(warmup):
                s()
        wall = {k: [] for k in steppers}
        cpu = {k: [] for k in steppers}
        for _ in range(reps):
            for label, s in steppers.items():
                s()
                t0, c0 = time.perf_counter(), time.process_time()
                for _ in range(steps):
                    s()
                wall[label].append(steps / (time.perf_counter() - t0))
                cpu[label].append(steps / max(1e-9, time.process_time() - c0))
        for label in steppers:
            rows.append({"batch": batch, "path": label, "model": paths[label][0],
                         "steps_per_s": statistics.median(wall[label]),
                         "steps_per_cpu_s": statistics.median(cpu[label]),
                         "wall_reps": wall[label], "cpu_reps": cpu[label]})
    return rows


def measure_epoch(model: str, trainer: str, data_dir: str | None, threads: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "train", "--dataset", "mnist", "--model", model, "--recipe", "thesis",
               "--epochs", "1", "--run-dir", str(Path(tmp) / "run"), "--no-progress", "--force",
               "--threads", str(threads), "--trainer", trainer]
        if data_dir:
            cmd += ["--data-dir", data_dir]
        t0 = time.perf_counter()
        res = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if res.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed: {res.stderr.strip().splitlines()[-1:]}")
        metrics = json.loads((Path(tmp) / "run" / "metrics.json").read_text())
    return {"model": model, "trainer": trainer, "wall_s": wall, "train_s": metrics["seconds"],
            "test_acc": metrics["test_acc"], "command": " ".join(cmd[1:])}


def _report(rows, epochs, args) -> str:
    lines = ["# Training speed: binary (fast path, Brevitas) vs float", "",
             f"Written by `python -m bench.train_speed` ({' '.join(sys.argv[1:]) or 'defaults'}); "
             f"torch threads: {args.threads}; {args.reps} interleaved repetitions of {args.steps} steps "
             f"after {args.warmup} warm-up steps; medians. On a shared machine absolute numbers are "
             "noisy, the ratios (time per step relative to the float model, measured side by side) count.", "",
             "Paths: **binary fast** = `train.fast_model` (the default trainer of binary models, Brevitas' "
             "arithmetic bit for bit); **binary brevitas** = the Brevitas modules (`--trainer brevitas`); "
             "**float** = the float baseline of the same widths; **float, binary's topology** = the float "
             "model with the binary model's dropout, batch-norm and shortcut layers and no quantizer, i.e. "
             "the part of the gap that is the binary model's extra layers, not quantization.", "",
             "Optimizer: the trainer's own (`train.fitting.make_optimizer`: Adam, foreach), lr 1e-3.", "",
             "## One Adam step (steps/s; time ratio to the float model)", "",
             "| batch | path | model | steps/s (wall) | x float (wall) | steps/s (CPU time) | x float (CPU) |",
             "|---|---|---|---|---|---|---|"]
    for batch in sorted({r["batch"] for r in rows}):
        ref = next(r for r in rows if r["batch"] == batch and r["path"] == "float")
        for r in (r for r in rows if r["batch"] == batch):
            lines.append(f"| {batch} | {r['path']} | `{r['model']}` | {r['steps_per_s']:.0f} | "
                         f"{ref['steps_per_s'] / r['steps_per_s']:.2f} | {r['steps_per_cpu_s']:.0f} | "
                         f"{ref['steps_per_cpu_s'] / r['steps_per_cpu_s']:.2f} |")
    lines += ["", "## The goal: binary at most 2.0x the float model's step time (CPU-time ratios)", ""]
    for batch in sorted({r["batch"] for r in rows}):
        by = {r["path"]: r["steps_per_cpu_s"] for r in rows if r["batch"] == batch}
        if not {"float", "binary fast", "float, binary's topology"} <= by.keys():
            continue
        fast, twin = by["float"] / by["binary fast"], by["float"] / by["float, binary's topology"]
        lines.append(f"- batch {batch}: binary fast **{fast:.2f}x** ({'met' if fast <= 2.0 else 'not met'}); "
                     f"the float model with the binary model's layers and no quantizer alone is {twin:.2f}x, "
                     f"so the quantizers add {fast / twin:.2f}x on top of the topology.")
    if epochs:
        ref = next((e for e in epochs if e["model"].startswith("F-")), None)
        lines += ["", "## One epoch end to end (`python -m train --recipe thesis --epochs 1`, real MNIST)", "",
                  "| model | trainer | wall s | training s | x float (training) | test acc |", "|---|---|---|---|---|---|"]
        for e in epochs:
            ratio = f"{e['train_s'] / ref['train_s']:.2f}" if ref else "-"
            lines.append(f"| `{e['model']}` | {e['trainer']} | {e['wall_s']:.1f} | {e['train_s']:.1f} | {ratio} | "
                         f"{e['test_acc']:.4f} |")
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.train_speed", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="Markdown report (a .json with the raw numbers beside it)")
    p.add_argument("--binary", default=BINARY, help=f"binary model (default {BINARY})")
    p.add_argument("--float", dest="float_model", default=FLOAT, help=f"float model (default {FLOAT})")
    p.add_argument("--batches", default="32,128")
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=110)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--no-epoch", action="store_true", help="skip the end-to-end epochs")
    p.add_argument("--data-dir", help="MNIST folder (default $RESBIN_DATA/mnist or the cache)")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        batches = [int(b) for b in args.batches.split(",")]
        if any(b < 1 for b in batches) or min(args.reps, args.steps) < 1 or args.warmup < 0 or args.threads < 1:
            raise ValueError
    except ValueError:
        print("error: --batches must be positive integers (e.g. 32,128); --reps, --steps, --threads >= 1",
              file=sys.stderr)
        return 2
    import torch

    from train.data import DataError
    from train.models import ModelError
    from train.spec import SpecError

    torch.set_num_threads(args.threads)
    paths = {"binary fast": (args.binary, "fast"), "binary brevitas": (args.binary, "brevitas"),
             "float": (args.float_model, "brevitas"), "float, binary's topology": (_float_twin(args.binary), "brevitas")}
    try:
        rows = measure_steps(paths, batches, args.reps, args.steps, args.warmup)
        epochs = [] if args.no_epoch else [measure_epoch(m, t, args.data_dir, args.threads) for m, t in
                                           ((args.binary, "fast"), (args.binary, "brevitas"), (args.float_model, "fast"))]
    except (SpecError, ModelError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(_report(rows, epochs, args))
    out.with_suffix(".json").write_text(json.dumps({"steps": rows, "epochs": epochs, "threads": args.threads,
                                                    "cpu_count": os.cpu_count()}, indent=2) + "\n")
    print(out.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
