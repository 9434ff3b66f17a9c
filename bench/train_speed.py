"""`python -m bench.train_speed`: training speed of binary (fast path, Brevitas) vs float models.

    python -m bench.train_speed --out docs/results/train-speed.md [--reps 7] [--steps 30] [--threads 1,2]

Part 1, steps/s: one Adam step (forward, backward, update) on one fixed batch of random pixels,
for each path and batch size, measured side by side in ONE process with the repetitions
interleaved (path A, B, C, A, B, C, ...), so load from other processes hits every path alike;
medians are reported with the time ratio to the float model. Binary models are first stepped
past Brevitas' 100 statistics steps (the steady state of a long run). Wall clock and process CPU
time are both given; on a shared machine the CPU-time ratio is the steadier one. Measured at each
torch thread count of --threads (1, and 2: the trainer's). Then every other variant kind (--kinds: no / P / F
shortcut, 1 to 4 layers) against the float model of its widths, the same way. Beside it, the optimizer step alone
(Adam on fixed gradients) of each model and its parameter count: the part of a step that grows
with the parameters, not with the batch.
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

from train.cli_types import TRAIN_THREADS

BINARY = "B-D128N,D88N,D88N,QN,D"
FLOAT = "F-128,88,88"
# the other variant kinds beside BINARY: no / P / F shortcut at 3 layers, Q at 1, 2 and 4 layers
KINDS = ("B-D128N,D88N,D88N,D", "B-D128N,D88N,D88N,PN,D", "B-D128N,D88N,D88N,FN,D", "B-D128N,QN,D",
         "B-D128N,D88N,QN,D", "B-D128N,D88N,D88N,D88N,QN,D")


class BenchError(ValueError):
    """Bad arguments."""


def _float_baseline(binary: str) -> str:
    """The plain float MLP of the binary model's widths (the issue's reference)."""
    from train.spec import ModelSpec

    return "F-" + ",".join(str(w) for w in ModelSpec.parse(binary).widths)


def _float_twin(binary: str) -> str:
    """The float model of the binary model's topology (same dropout, batch-norm and shortcut)."""
    return "F-" + binary.split("-", 1)[1]


def _model_and_optimizer(name: str, seed: int):
    """The MNIST model `name` (seeded) and the trainer's own optimizer (Adam, lr 1e-3)."""
    import torch

    from train.fitting import make_optimizer
    from train.models import build_model
    from train.recipes import Recipe

    torch.manual_seed(seed)
    model = build_model(name, 784, 10, image_shape=(28, 28, 1))
    return model, make_optimizer(model, Recipe("bench", optimizer="adam", lr=1e-3))


def _stepper(name: str, path: str, batch: int, seed: int = 0):
    import torch
    import torch.nn.functional as F

    from train.trainer import training_forward

    model, opt = _model_and_optimizer(name, seed)
    forward = training_forward(model, "fast" if path == "fast" else "brevitas")
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (batch, 784), generator=gen).float()
    y = torch.randint(0, 10, (batch,), generator=gen)

    def step():
        loss = F.cross_entropy(forward(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def _optimizer_stepper(name: str, seed: int = 0):
    import torch

    model, opt = _model_and_optimizer(name, seed)
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3

    def step():
        opt.step()
    step.n_params = sum(p.numel() for p in params)
    return step


def _interleaved(fns: dict, reps: int, steps: int, warmup: int) -> dict:
    """label -> (median calls/s wall, median calls/s CPU time, reps wall, reps CPU), interleaved."""
    for f in fns.values():
        for _ in range(warmup):
            f()
    wall = {k: [] for k in fns}
    cpu = {k: [] for k in fns}
    for _ in range(reps):
        for label, f in fns.items():
            f()
            t0, c0 = time.perf_counter(), time.process_time()
            for _ in range(steps):
                f()
            wall[label].append(steps / (time.perf_counter() - t0))
            cpu[label].append(steps / max(1e-9, time.process_time() - c0))
    return {k: (statistics.median(wall[k]), statistics.median(cpu[k]), wall[k], cpu[k]) for k in fns}


def measure_optimizer(models: list[str], reps: int, steps: int, threads: int) -> list[dict]:
    import torch

    torch.set_num_threads(threads)
    fns = {m: _optimizer_stepper(m) for m in models}
    res = _interleaved(fns, reps, steps, 10)
    return [{"threads": threads, "model": m, "params": fns[m].n_params, "ms": 1e3 / res[m][0],
             "cpu_ms": 1e3 / res[m][1]} for m in models]


def measure_steps(paths: dict[str, tuple[str, str]], batches, reps: int, steps: int, warmup: int,
                  threads: int) -> list[dict]:
    """paths: label -> (model name, "fast" | "brevitas"); returns one row per (label, batch)."""
    import torch

    torch.set_num_threads(threads)
    rows = []
    for batch in batches:
        steppers = {label: _stepper(name, path, batch) for label, (name, path) in paths.items()}
        res = _interleaved(steppers, reps, steps, warmup)
        for label in steppers:
            w, c, w_reps, c_reps = res[label]
            rows.append({"threads": threads, "batch": batch, "path": label, "model": paths[label][0],
                         "steps_per_s": w, "steps_per_cpu_s": c, "wall_reps": w_reps, "cpu_reps": c_reps})
    return rows


def measure_kinds(kinds, batches, reps: int, steps: int, warmup: int, threads: int) -> list[dict]:
    """Each binary variant's fast step against its float baseline, all interleaved in one loop."""
    import torch

    torch.set_num_threads(threads)
    rows = []
    for batch in batches:
        names = list(dict.fromkeys([*kinds, *(_float_baseline(k) for k in kinds)]))
        res = _interleaved({n: _stepper(n, "fast", batch) for n in names}, reps, steps, warmup)
        for k in kinds:
            f = _float_baseline(k)
            rows.append({"threads": threads, "batch": batch, "model": k, "float": f,
                         "steps_per_cpu_s": res[k][1], "float_steps_per_cpu_s": res[f][1],
                         "ratio_cpu": res[f][1] / res[k][1], "ratio_wall": res[f][0] / res[k][0]})
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
    return {"model": model, "trainer": trainer, "threads": threads, "wall_s": wall, "train_s": metrics["seconds"],
            "test_acc": metrics["test_acc"], "command": " ".join(cmd[1:])}


def _report(rows, optim, epochs, args, kinds=()) -> str:
    lines = ["# Training speed: binary (fast path, Brevitas) vs float", "",
             f"Written by `python -m bench.train_speed` ({' '.join(sys.argv[1:]) or 'defaults'}); "
             f"{args.reps} interleaved repetitions of {args.steps} steps after {args.warmup} warm-up steps; "
             "medians; at each torch thread count (2 is the trainer's, `python -m train --threads`). On a "
             "shared machine absolute numbers are noisy, the ratios (time per step relative to the float "
             "model, measured side by side) count.", "",
             "Paths: **binary fast** = `train.fast_model` (the default trainer of binary models, Brevitas' "
             "arithmetic bit for bit); **binary brevitas** = the Brevitas modules (`--trainer brevitas`); "
             "**float** = the float baseline of the same widths; **float, binary's topology** = the float "
             "model with the binary model's dropout, batch-norm and shortcut layers and no quantizer, i.e. "
             "the part of the gap that is the binary model's extra layers, not quantization.", "",
             "Optimizer: the trainer's own (`train.fitting.make_optimizer`: Adam, foreach), lr 1e-3.", "",
             "## One Adam step (steps/s; time ratio to the float model)", "",
             "| threads | batch | path | model | steps/s (wall) | x float (wall) | steps/s (CPU time) "
             "| x float (CPU) |",
             "|---|---|---|---|---|---|---|---|"]
    keys = sorted({(r["threads"], r["batch"]) for r in rows})
    for threads, batch in keys:
        sel = [r for r in rows if (r["threads"], r["batch"]) == (threads, batch)]
        ref = next(r for r in sel if r["path"] == "float")
        for r in sel:
            lines.append(f"| {threads} | {batch} | {r['path']} | `{r['model']}` | {r['steps_per_s']:.0f} | "
                         f"{ref['steps_per_s'] / r['steps_per_s']:.2f} | {r['steps_per_cpu_s']:.0f} | "
                         f"{ref['steps_per_cpu_s'] / r['steps_per_cpu_s']:.2f} |")
    lines += ["", "## The goal: binary at most 2.0x the float model's step time (CPU-time ratios)", ""]
    for threads, batch in keys:
        by = {r["path"]: r["steps_per_cpu_s"] for r in rows if (r["threads"], r["batch"]) == (threads, batch)}
        if not {"float", "binary fast", "float, binary's topology"} <= by.keys():
            continue
        fast, twin = by["float"] / by["binary fast"], by["float"] / by["float, binary's topology"]
        lines.append(f"- {threads} thread{'s' if threads > 1 else ''}, batch {batch}: binary fast **{fast:.2f}x** "
                     f"({'met' if fast <= 2.0 else 'not met'}); the float model with the binary model's layers "
                     f"and no quantizer is {twin:.2f}x (binary fast / that model: {fast / twin:.2f}).")
    if kinds:
        lines += ["", "## Every variant kind: binary fast vs the float model of its widths (time ratios)", "",
                  "The goal for every variant kind (none / Q / P / F shortcut, 1-4 layers); each binary model "
                  "and its float baseline measured interleaved in one loop per thread count and batch.", "",
                  "| threads | batch | binary | float | x float (wall) | x float (CPU) | goal |",
                  "|---|---|---|---|---|---|---|"]
        for k in kinds:
            lines.append(f"| {k['threads']} | {k['batch']} | `{k['model']}` | `{k['float']}` | {k['ratio_wall']:.2f} | "
                         f"{k['ratio_cpu']:.2f} | {'met' if k['ratio_cpu'] <= 2.0 else 'not met'} |")
    if optim:
        lines += ["", "## The optimizer step alone (Adam on fixed gradients; grows with the parameters, not the batch)",
                  "", "| threads | model | parameters | ms (wall) | ms (CPU) |", "|---|---|---|---|---|"]
        for o in optim:
            lines.append(f"| {o['threads']} | `{o['model']}` | {o['params']:,} | {o['ms']:.2f} | {o['cpu_ms']:.2f} |")
    if epochs:
        ref = next((e for e in epochs if e["model"].startswith("F-")), None)
        lines += ["", f"## One epoch end to end (`python -m train --recipe thesis --epochs 1 --threads "
                  f"{epochs[0]['threads']}`, real MNIST)", "",
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
    p.add_argument("--threads", default=f"1,{TRAIN_THREADS}",
                   help=f"torch CPU thread counts to measure at (default 1,{TRAIN_THREADS}: the trainer's is "
                        f"{TRAIN_THREADS}, also the end-to-end epochs')")
    p.add_argument("--kinds", default=";".join(KINDS),
                   help="binary variants measured against the float model of their widths, ';'-separated "
                        "(default: the other shortcut kinds and depths; '' skips them)")
    p.add_argument("--no-epoch", action="store_true", help="skip the end-to-end epochs")
    p.add_argument("--data-dir", help="MNIST folder (default $RESBIN_DATA/mnist or the cache)")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        batches = [int(b) for b in args.batches.split(",")]
        threads = [int(t) for t in args.threads.split(",")]
        if min(batches + threads) < 1 or min(args.reps, args.steps) < 1 or args.warmup < 0:
            raise ValueError
    except ValueError:
        print("error: --batches and --threads must be positive integers (e.g. 32,128 and 1,2); --reps, --steps >= 1",
              file=sys.stderr)
        return 2
    from train.data import DataError
    from train.models import ModelError
    from train.spec import SpecError

    paths = {"binary fast": (args.binary, "fast"), "binary brevitas": (args.binary, "brevitas"),
             "float": (args.float_model, "brevitas"), "float, binary's topology": (_float_twin(args.binary), "brevitas")}
    try:
        rows = [r for t in threads for r in measure_steps(paths, batches, args.reps, args.steps, args.warmup, t)]
        kinds = [k for k in args.kinds.split(";") if k]
        kind_rows = [r for t in threads for r in measure_kinds(kinds, batches, args.reps, args.steps, args.warmup, t)]
        optim = [o for t in threads for o in measure_optimizer([args.binary, args.float_model], args.reps,
                                                               args.steps, t)]
        runs = ((args.binary, "fast"), (args.binary, "brevitas"), (args.float_model, "fast"))
        epochs = [] if args.no_epoch else [measure_epoch(m, t, args.data_dir, TRAIN_THREADS) for m, t in runs]
    except (SpecError, ModelError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(_report(rows, optim, epochs, args, kind_rows))
    out.with_suffix(".json").write_text(json.dumps({"steps": rows, "kinds": kind_rows, "optimizer": optim, "epochs": epochs,
                                                    "cpu_count": os.cpu_count()}, indent=2) + "\n")
    print(out.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
