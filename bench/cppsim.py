"""`make bench-cppsim`: the generated code of two MNIST designs, simulated before synthesis.

    python -m bench.cppsim [--recipe R] [--epochs E] [--n N]
        [--choice docs/results/mnist-z2-search/choice.json] [--out docs/results/mnist-cppsim.md]

Designs: the default `make bitstream DATASET=mnist` (MODEL=B-D128N,D88N,D88N,QN,D, Pynq-Z2, the
fastest folding that fits) and the board-aware search's choice (its make arguments from
choice.json). Each is trained (reused when its run exists), built to code generation and run
through `hw_build.cppsim.run_cppsim` on the first N test images (default all 10,000): identical
count, per-layer level and time, total time, simulated cycles/frame of the RTL layers against
FINN's estimates. Writes the markdown report and its JSON twin.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

DEFAULT_MODEL = "B-D128N,D88N,D88N,QN,D"
CHOICE = Path("docs/results/mnist-z2-search/choice.json")

def _train_opts() -> dict:
    """make variable -> `python -m train` option (the model options from train.options)."""
    from train.options import make_var, option_fields

    opts = {"MODEL": "--model", "RECIPE": "--recipe", "EPOCHS": "--epochs", "SEED": "--seed"}
    return {**opts, **{make_var(f.name): f.metadata["flag"] for f in option_fields()}}


class BenchError(RuntimeError):
    """A design that cannot be set up (one line)."""


def _make_args(items: list[str]) -> dict:
    return dict(a.split("=", 1) for a in items if "=" in a)


def _run_dir(make: dict, recipe: str | None, epochs: int | None) -> Path:
    """The run folder of these make arguments: RUN if it holds a run, else `python -m train`
    (which reuses a finished run and trains a missing one)."""
    run = make.get("RUN")
    if run and (Path(run) / "config.json").exists():
        return Path(run)
    args = [sys.executable, "-m", "train", "--dataset", make.get("DATASET", "mnist")]
    for var, opt in _train_opts().items():
        if var in make:
            args += [opt, make[var]]
    if recipe and "RECIPE" not in make:
        args += ["--recipe", recipe]
    if epochs and "EPOCHS" not in make:
        args += ["--epochs", str(epochs)]
    where = subprocess.run(args + ["--print-run-dir"], capture_output=True, text=True)
    if where.returncode != 0:
        raise BenchError(f"`{' '.join(args[1:])}`: {where.stderr.strip()[-300:]}")
    path = Path(where.stdout.strip().splitlines()[-1])
    if not (path / "metrics.json").exists():
        if subprocess.run(args + ["--no-progress"]).returncode != 0:
            raise BenchError(f"training failed: {' '.join(args[1:])}")
    return path


def designs(choice: Path, default_run: Path | None = None) -> list[dict]:
    """[{name, make}] for the default design and the search's choice (if choice.json exists)."""
    from train.options import ACCELERATOR_DEFAULTS, make_var

    make = {"DATASET": "mnist", "MODEL": DEFAULT_MODEL, "BOARD": "Pynq-Z2",
            **{make_var(k): str(v) for k, v in ACCELERATOR_DEFAULTS.items()}}
    if default_run is not None:
        make["RUN"] = str(default_run)
    out = [{"name": "default `make bitstream DATASET=mnist`", "make": make}]
    if choice.exists():
        c = json.loads(choice.read_text())
        out.append({"name": f"search's choice `{c['chosen']}` ({c['board']}, "
                            f"{c['target_fps']:,.0f} fps)", "make": _make_args(c["make_args"])})
    return out


def bench_design(d: dict, recipe, epochs, n, progress: bool) -> dict:
    from hw_build.__main__ import ensure_exported
    from hw_build.build import build
    from hw_build.cppsim import CppsimMismatchError, RESULT_FILE, run_cppsim

    make = d["make"]
    run = ensure_exported(_run_dir(make, recipe, epochs))
    tfps = float(make["TARGET_FPS"]) if make.get("TARGET_FPS") else None
    t0 = time.perf_counter()
    rep = build(run, board=make.get("BOARD", "Pynq-Z2"), target_fps=tfps, until="codegen",
                progress=progress)
    t_build = time.perf_counter() - t0
    done = Path(rep["out_dir"]) / RESULT_FILE  # a finished run of this very build (removed on a rebuild)
    prev = json.loads(done.read_text()) if done.exists() else None
    from hw_build.verify import load_test_set

    want = n or len(load_test_set(run)[0])
    if prev is not None and prev.get("n_images") == want:
        return {**d, "run": str(run), "build_dir": rep["out_dir"], "build_s": round(t_build, 1),
                "estimated_fps": rep["estimated_fps"], "result": prev, "reused": str(done)}
    try:
        res = run_cppsim(rep["out_dir"], n=n, progress=progress)
    except CppsimMismatchError as e:  # the counts are in cppsim.json; the report shows them
        print(f"bench_cppsim: {e}", file=sys.stderr)
        res = json.loads((Path(rep["out_dir"]) / RESULT_FILE).read_text())
    return {**d, "run": str(run), "build_dir": rep["out_dir"], "build_s": round(t_build, 1),
            "estimated_fps": rep["estimated_fps"], "result": res}


def markdown(rows: list[dict], command: str) -> str:
    from hw_build.cppsim_report import layer_table, summary_line

    load = os.getloadavg() if hasattr(os, "getloadavg") else ("n/a",) * 3
    lines = ["# MNIST accelerators: the generated code simulated before synthesis", "",
             f"Command: `{command}`. Machine: {platform.processor() or platform.machine()}, "
             f"{os.cpu_count()} CPUs, load average {load[0]:.2f} at the end. Each layer at the "
             "most faithful level available without Xilinx tools: HLS layers in FINN's C++ "
             "simulation (g++), RTL layers in Verilator, Python execution only with the reason "
             "given; the integer outputs are compared with golden.npz on every image and with "
             "the QONNX model on the images of reference.npz.", ""]
    for r in rows:
        res = r["result"]
        lines += [f"## {r['name']}", "", f"Run `{r['run']}`, build `{r['build_dir']}` "
                  f"({r['estimated_fps']:,.0f} fps estimated by FINN).", "",
                  f"**{res['n_images']} images: {summary_line(res)}.**", ""]
        lines += layer_table(res) + [""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.cppsim",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", help="training recipe of the default design if it has to train")
    ap.add_argument("--epochs", type=int, help="epochs of the default design if it has to train")
    ap.add_argument("--n", type=int, help="first N test images (default all)")
    ap.add_argument("--choice", type=Path, default=CHOICE, help=f"search result (default {CHOICE})")
    ap.add_argument("--default-run", type=Path,
                    help="run folder of the default design (default: `python -m train` finds or "
                         "trains it)")
    ap.add_argument("--out", type=Path, required=True, help="markdown file to write")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    if args.n is not None and args.n < 1:
        ap.error("--n must be at least 1")
    try:
        rows = [bench_design(d, args.recipe, args.epochs, args.n, not args.quiet)
                for d in designs(args.choice, args.default_run)]
    except BenchError as e:
        print(f"bench_cppsim: {e}", file=sys.stderr)
        return 2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(markdown(rows, "python -m bench.cppsim " + " ".join(
        argv if argv is not None else sys.argv[1:])))
    args.out.with_suffix(".json").write_text(json.dumps(rows, indent=2) + "\n")
    print(f"wrote {args.out}")
    ok = all(r["result"]["identical"].split("/")[0] == r["result"]["identical"].split("/")[1]
             for r in rows)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
