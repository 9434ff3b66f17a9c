"""python -m hw_build {estimate,codegen,sim,cppsim,bitstream,bench}: the FINN build of a trained run.

Exit codes: 0 done; 1 a FINN step failed (see the build log); 2 bad input (unknown board,
missing run, bad folding file, ...); 3 stopped because a Xilinx tool is missing (the message
names the tool, the FINN step and what was produced); 4 the design does not fit the board.
"""
from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path

from hw_build.boards import FIT_BUDGET  # no FINN import: --help stays fast
from train.cli_types import clock_mhz, fraction, frame_rate, nonneg_int, positive_int, seed_int

EXIT_FAILED, EXIT_USER, EXIT_MISSING_TOOL, EXIT_NO_FIT = 1, 2, 3, 4
DEFAULT_MODEL = "B-D128N,D88N,D88N,QN,D"

EPILOG = f"""exit codes: 0 done, {EXIT_FAILED} a FINN step failed (see build.log in the build folder),
{EXIT_USER} bad input (also: an unfinished or mismatched run, another hw_build on the same build
folder), {EXIT_MISSING_TOOL} stopped before a step that needs a missing Xilinx tool
(Vivado / Vitis HLS: the message names it, the step, and what was produced), {EXIT_NO_FIT} the
estimate does not fit the board (the message gives the numbers and a hint).
Output: <run>/hw/<board>-<target>/ (report.json, report.md, golden.npz, steps/, build_state.json);
<target> is fps<N>, folding-<name> or auto (the fastest folding that fits)."""


def _target(text: str) -> str:
    """bench --targets: 'auto' or a positive frame rate (kept as text: it names the build)."""
    if text.lower() != "auto":
        frame_rate(text)
    return text


def _common(p: argparse.ArgumentParser) -> None:
    from train.cli_types import add_option_args, add_threads_arg, add_val_arg
    from train.recipes import RECIPES

    src = p.add_argument_group("which trained run")
    src.add_argument("--run", type=Path, help="run folder (with model.qonnx.onnx or a finished training); "
                     "with --dataset: the folder to train into or reuse (default runs/<dataset>/<model>)")
    src.add_argument("--dataset", help="data set: trains first, or reuses a finished run of exactly this "
                     "data, model, recipe, epochs, seed and options (else a one-line error)")
    src.add_argument("--model", help=f"model notation with --dataset (default {DEFAULT_MODEL})")
    src.add_argument("--epochs", type=positive_int, help="epochs if it has to train (default: the recipe's)")
    src.add_argument("--recipe", default=None, choices=sorted(RECIPES),
                     help="training recipe if it has to train (default: train's)")
    src.add_argument("--seed", type=seed_int, default=0, help="training seed (default 0)")
    add_option_args(src)
    add_val_arg(src)
    add_threads_arg(src)
    src.add_argument("--force", action="store_true", help="with --dataset: retrain even if the run folder "
                     "holds another or an unfinished run (make: FORCE=1)")
    hw = p.add_argument_group("hardware")
    hw.add_argument("--board", default="Pynq-Z2",
                    help="Pynq-Z2 (default), Pynq-Z1, Ultra96-V2, ZCU104, KV260")
    hw.add_argument("--clock-mhz", type=clock_mhz, help="clock, 1..1000 (default: the board's, 100 MHz)")
    g = hw.add_mutually_exclusive_group()
    g.add_argument("--target-fps", type=frame_rate,
                   help="frame-rate target: the cheapest folding that meets it "
                        "(default: none = the fastest folding that fits the board)")
    g.add_argument("--folding", type=Path, help="a FINN folding JSON to apply instead of a search")
    hw.add_argument("--search", choices=("resource", "stock"), default="resource",
                    help="folding search with --target-fps: resource-aware (default) or FINN's "
                         "SetFolding")
    hw.add_argument("--budget", type=fraction, default=FIT_BUDGET,
                    help=f"share of the board the default search may fill, in (0, 1] (default "
                         f"{FIT_BUDGET}, the fit budget)")
    hw.add_argument("--embedded-thresholds", action="store_true",
                    help="keep requantization thresholds inside the MVAUs (FINN's default; "
                         "ResBin's default is standalone Thresholding layers, far cheaper for "
                         "8-bit requantizers)")
    hw.add_argument("--verify-n", type=nonneg_int, default=100,
                    help="test images checked against the QONNX model after each HW-graph "
                         "step (default 100, 0: no checks)")
    p.add_argument("--out", type=Path, help="build folder (default <run>/hw/<board>-<target>)")
    p.add_argument("--no-resume", action="store_true", help="rebuild every step")
    p.add_argument("--quiet", action="store_true", help="no progress lines")


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m hw_build", description=__doc__.splitlines()[0],
                                 epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name, help_ in (("estimate", "HW graph, folding, estimate reports, fit check, golden.npz"),
                        ("codegen", "... plus the HLS C++ / RTL code of every layer"),
                        ("bitstream", "... plus IP, FIFO sizing, stitched IP, bitfile, driver, "
                                      "deployment folder (needs Vivado/Vitis HLS)"),
                        ("sim", "estimate, then simulate the HW graph on the test set"),
                        ("cppsim", "codegen, then run the generated code of every layer on the "
                                   "test set (HLS in C++, RTL in Verilator), bit-exact check")):
        p = sub.add_parser(name, help=help_, epilog=EPILOG,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        _common(p)
        if name in ("sim", "cppsim"):
            p.add_argument("--n", type=positive_int, help="first N test images (default all; a partial "
                           "result goes to sim-n<N>.json, never over the full set's sim.json)")
        if name == "cppsim":
            p.description = textwrap.fill("Build to codegen, then run every layer's generated code on the test "
                             "set: HLS layers in FINN's C++ simulation (g++), RTL layers in "
                             "Verilator, anything else in FINN Python execution with the reason "
                             "printed. Exits 0 only if every image's integer outputs equal "
                             "golden.npz and QONNX (1 otherwise: the per-layer table is in "
                             "cppsim.md), 3 if g++, finn-hlslib (FINN_HLSLIB) or the HLS headers "
                             "are missing.", 92)
    b = sub.add_parser("bench", help="estimate (and simulate) runs at several targets; "
                                     "write a markdown table", epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    b.add_argument("--runs", type=Path, nargs="+", required=True, help="run folders")
    b.add_argument("--targets", nargs="+", default=["1e5", "1e6"], type=_target,
                   help="target fps values and/or 'auto' (default 1e5 1e6)")
    b.add_argument("--board", default="Pynq-Z2")
    b.add_argument("--clock-mhz", type=clock_mhz)
    b.add_argument("--no-sim", action="store_true", help="skip the test-set simulation")
    b.add_argument("--n", type=positive_int, help="simulate the first N test images (default all)")
    b.add_argument("--out", type=Path, required=True, help="markdown file to write")
    b.add_argument("--quiet", action="store_true")
    return ap


def resolve_run(args) -> Path:
    """The run folder: --run, or train/reuse --dataset/--model (exactly what was asked, else a
    one-line error); either way a finished training, exported to QONNX."""
    from hw_build.build import BuildError

    if args.run is None and args.dataset is None:
        raise BuildError("give --run RUN_DIR or --dataset NAME [--model NOTATION]")
    if args.dataset is None:
        run = args.run
        if not run.is_dir():
            raise BuildError(f"{run}: no such run folder")
        return ensure_exported(run)
    from train.cli_types import apply_threads, options_from_args
    from train.spec import ModelSpec

    spec = ModelSpec.parse(args.model or DEFAULT_MODEL)
    if not spec.fpga_able:  # refused before any training: the hardware flow cannot build it
        why = "a float model" if not spec.binary else "its F shortcut is a float layer"
        raise BuildError(f"{spec.name} cannot go to the FPGA ({why}); use a binary model with no "
                         "shortcut, P or Q (`make train` / `python -m train` still trains it)")
    from train.trainer import run_folder, train_run

    options = options_from_args(args)
    kw = {"epochs": args.epochs, "seed": args.seed, "options": options, "run_dir": args.run,
          "progress": not args.quiet, "force": args.force, "val": args.val}
    if args.recipe:
        kw["recipe"] = args.recipe
    # reuses a finished run only if it is this one (data, recipe, epochs, seed, options), else
    # refuses; resumes an interrupted one
    apply_threads(args.threads)
    train_run(args.dataset, spec, resume=True, **kw)
    return ensure_exported(run_folder(args.dataset, spec, options, args.run, val=args.val))


def ensure_exported(run: Path) -> Path:
    """Export the run to QONNX unless model.qonnx.onnx exists and is newer than the checkpoint;
    a run folder with a training (config.json) must hold a finished one."""
    from hw_build.build import BuildError
    from train.run_state import require_finished

    qonnx = run / "model.qonnx.onnx"
    ckpt = run / "checkpoint.pt"
    if (run / "config.json").exists():
        require_finished(run)  # an interrupted training is refused with the way out
    if not qonnx.exists() or (ckpt.exists() and ckpt.stat().st_mtime > qonnx.stat().st_mtime):
        if not ckpt.exists():
            raise BuildError(f"{run}: neither model.qonnx.onnx nor checkpoint.pt (train it first)")
        from export.qonnx_export import export_run

        export_run(run)
    return run


def _build_dir(run: Path, args) -> Path:
    """The build folder hw_build.build will use (for its lock)."""
    from hw_build.boards import get_board
    from hw_build.build import out_dir_for, target_name

    if args.out is not None:
        return args.out
    brd = get_board(args.board)
    return out_dir_for(run, brd, float(args.clock_mhz or brd.clock_mhz),
                       target_name(args.target_fps, args.folding, args.search, args.budget))


def _build_kwargs(args) -> dict:
    return {"board": args.board, "clock_mhz": args.clock_mhz, "target_fps": args.target_fps,
            "folding": args.folding, "search": args.search, "budget_fraction": args.budget,
            "out_dir": args.out, "resume": not args.no_resume, "progress": not args.quiet,
            "standalone_thresholds": not args.embedded_thresholds, "verify_n": args.verify_n}


def _run(args) -> int:
    from hw_build.build import build

    if args.cmd == "bench":
        from bench.hw import bench

        for run in args.runs:
            ensure_exported(Path(run))
        bench(args.runs, targets=args.targets, board=args.board, clock_mhz=args.clock_mhz,
              out=args.out, simulate=not args.no_sim, n=args.n, progress=not args.quiet)
        print(f"wrote {args.out}")
        return 0
    from hw_build.boards import get_board

    from hw_build.build import BuildError
    from train.run_lock import build_lock

    get_board(args.board)  # an unknown board fails before any training or export
    if args.folding is not None and not args.folding.is_file():
        raise BuildError(f"{args.folding}: folding file not found")
    run = resolve_run(args)
    if args.cmd == "sim" and args.n is not None:  # before the build: --n beyond the test set
        from hw_build.simulate import check_n
        from hw_build.verify import load_test_set

        check_n(args.n, len(load_test_set(run)[1]))
    until = {"estimate": "estimate", "sim": "estimate", "codegen": "codegen",
             "cppsim": "codegen", "bitstream": "bitstream"}[args.cmd]
    if args.cmd == "cppsim":
        from hw_build.finn_env import ensure_cppsim

        ensure_cppsim(fetch=True)  # a missing toolchain stops before any build work
    args.build_dir = _build_dir(run, args)
    with build_lock(args.build_dir):  # one hw_build per build folder
        report = build(run, until=until, **_build_kwargs(args))
        if args.cmd == "cppsim":
            from hw_build.cppsim import run_cppsim
            from hw_build.cppsim_report import summary_line

            res = run_cppsim(Path(report["out_dir"]), n=args.n, progress=not args.quiet)
            print(f"hw_build cppsim: {summary_line(res)}; table: "
                  f"{Path(report['out_dir']) / 'cppsim.md'}")
        if args.cmd == "sim":
            from hw_build.simulate import simulate

            res = simulate(Path(report["out_dir"]), n=args.n, progress=not args.quiet)
            print(_fmt_sim(res))
    print(f"hw_build {args.cmd}: done, {report['estimated_fps']:,.0f} fps estimated, "
          f"{report['out_dir']}")
    return 0


def _fmt_sim(res) -> str:
    if isinstance(res, dict):
        return ", ".join(f"{k}: {v}" for k, v in res.items() if not isinstance(v, (list, dict)))
    return str(res)


def _failures() -> tuple:
    out = []
    for mod, name in (("hw_build.build", "StepError"), ("hw_build.verify", "DivergenceError"),
                      ("hw_build.verify", "VerifyError"), ("hw_build.simulate", "SimulationError"),
                      ("hw_build.golden", "GoldenWriteError"), ("hw_build.steps", "NotHardwareError"),
                      ("hw_build.cppsim", "CppsimMismatchError"), ("hw_build.cppsim", "CppsimError"),
                      ("hw_build.cppsim_levels", "LevelError"),
                      ("hw_build.finn_env", "CppsimCompileError"),
                      ("hw_build.finn_fixes", "FixError"), ("export.qonnx_export", "ExportError")):
        try:
            out.append(getattr(__import__(mod, fromlist=[name]), name))
        except (ImportError, AttributeError):
            pass
    return tuple(out)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from hw_build.boards import BoardError
    from hw_build.build import BuildError
    from hw_build.finn_env import FinnCompatError, MissingToolError

    user_errors: tuple = (BuildError, BoardError, FileNotFoundError)
    for mod, name in (("export.qonnx_export", "ExportInputError"), ("hw_build.simulate", "SimulationInputError"),
                      ("train.recipes", "RecipeError")):
        try:
            user_errors += (getattr(__import__(mod, fromlist=[name]), name),)
        except (ImportError, AttributeError):
            pass
    try:
        from hw_build.estimate import DoesNotFitError
        from hw_build.folding import FoldingError

        user_errors += (FoldingError,)
    except ImportError:  # FINN itself missing: reported by ensure_finn below
        DoesNotFitError = ()  # noqa: N806
    for mod, names in (("train.spec", ("SpecError",)), ("train.data", ("DataError",)),
                       ("train.trainer", ("TrainError",)), ("train.models", ("ModelError",))):
        try:
            m = __import__(mod, fromlist=list(names))
            user_errors += tuple(getattr(m, n) for n in names if hasattr(m, n))
        except ImportError:
            pass
    try:
        return _run(args)
    except MissingToolError as e:
        print(f"hw_build: {e}", file=sys.stderr)
        return EXIT_MISSING_TOOL
    except DoesNotFitError as e:  # type: ignore[misc]
        print(f"hw_build: {e}", file=sys.stderr)
        return EXIT_NO_FIT
    except user_errors as e:
        print(f"hw_build: {e}", file=sys.stderr)
        return EXIT_USER
    except _failures() as e:  # a verification that failed: its own one-line message
        print(f"hw_build: {e}", file=sys.stderr)
        return EXIT_FAILED
    except FinnCompatError as e:
        print(f"hw_build: {e}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("hw_build: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except Exception as e:  # a FINN step failed: one line + where the details are
        log = Path(getattr(args, "build_dir", None) or getattr(args, "out", None) or ".") / "build.log"
        if log.parent.is_dir() and log.parent != Path("."):  # the traceback goes where we point
            import traceback

            with open(log, "a") as f:
                f.write(f"\n--- hw_build {args.cmd}: {type(e).__name__} ---\n")
                traceback.print_exc(file=f)
        where = f"traceback in {log}" if log.is_file() else "no build log was written"
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        print(f"hw_build: {type(e).__name__}: {msg} ({where})", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
