"""CLI: `python -m dse {sweep,report,pareto,search,bench} ...` (see --help of each)."""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from train.cli_types import frame_rate as _fps, int_list, positive_int, probability, seed_int
from train.spec import MAX_WIDTH


def _strs(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def _axis_args() -> list[tuple]:
    """(option, flag, type, help) of every sweepable model option (train.options)."""
    from train.cli_types import option_type
    from train.options import SWEEP_AXES, option_fields

    return [(f.name, f.metadata["flag"], option_type(f, many=True) or _strs,
             f.metadata["help"] + " (comma list)") for f in option_fields() if f.name in SWEEP_AXES]


AXIS_ARGS = _axis_args()
_widths = int_list(1, MAX_WIDTH)


def _widths_text(text: str) -> str:
    """--widths: checked as 1..MAX_WIDTH integers, kept as the text (it names the sweep folder)."""
    _widths(text)
    return text.replace(" ", "")


def _user_errors() -> tuple[type[BaseException], ...]:
    from dse.pareto import ParetoError
    from dse.report import ReportError
    from dse.results import ResultsError
    from dse.sweep import SweepError

    from dse.search import SearchError

    errs = [SweepError, ResultsError, ParetoError, ReportError, SearchError]
    for mod, name in (("train.spec", "SpecError"), ("train.models", "ModelError"), ("train.data", "DataError"),
                      ("train.recipes", "RecipeError"), ("hw_build.boards", "BoardError")):
        try:
            errs.append(getattr(__import__(mod, fromlist=[name]), name))
        except (ImportError, AttributeError):
            pass
    return tuple(errs)


def _grid(args) -> dict:
    return {k: getattr(args, k) for k, *_ in AXIS_ARGS if getattr(args, k) is not None}


def cmd_sweep(args) -> int:
    from dse.sweep import run_sweep

    run_sweep(args.dataset, args.widths, recipe=args.recipe, epochs=args.epochs, sample=args.sample,
              limit=args.limit, seed=args.seed, options_grid=_grid(args), first_widths=args.first_width,
              board=args.board, target_fps=args.target_fps, estimate=not args.no_estimate, out_dir=args.out,
              parallel=args.parallel, ray_address=args.ray_address, data_dir=args.data_dir,
              variants=args.variants, baselines=not args.no_baselines, progress=not args.quiet)
    return 0


def _sweeps(args) -> list[Path]:
    from dse.pareto import ParetoError, sweep_dirs_for

    if args.sweep:
        return [Path(s) for s in args.sweep]
    if not args.dataset:
        raise ParetoError("give --sweep DIR (one or more) or --dataset NAME")
    found = sweep_dirs_for(args.dataset)
    if not found:
        raise ParetoError(f"no finished sweep of {args.dataset} under the runs root's sweeps/ "
                          "(run `python -m dse sweep` first, or pass --sweep DIR)")
    return found


def cmd_report(args) -> int:
    from dse.report import write_report

    path = write_report(_sweeps(args), args.out, board=args.board, target_fps=args.target_fps)
    print(path)
    return 0


def cmd_pareto(args) -> int:
    from dse.pareto import choose, describe, make_args

    row = choose(_sweeps(args), args.board, args.target_fps, min_accuracy=args.min_accuracy,
                 estimate_missing=not args.no_estimate, progress=not args.emit_make_args,
                 shortcut_bits=args.shortcut_bits)
    assignments = make_args(row, board=args.board, target_fps=args.target_fps)
    if args.emit_make_args:
        print(" ".join(assignments))
    else:
        print(describe(row))
        print("make bitstream " + " ".join(assignments))
    return 0


def cmd_search(args) -> int:
    from dse.pareto import describe, make_args
    from dse.search import board_search

    row = board_search(args.dataset, args.variants, board=args.board, target_fps=args.target_fps,
                       first_widths=args.first_width, options_grid=_grid(args), recipe=args.recipe,
                       epochs=args.epochs, limit=args.limit, screen_epochs=args.screen_epochs,
                       screen_limit=args.screen_limit, seed=args.seed, out_dir=args.out, parallel=args.parallel,
                       data_dir=args.data_dir, progress=not args.quiet)
    print(f"screened {row['screened']} designs, {row['fitting']} fit {args.board} at {args.target_fps:,.0f} fps; "
          f"trained with {args.recipe}: {', '.join(row['trained'])}")
    print(describe(row))
    print("make bitstream " + " ".join(make_args(row, board=args.board, target_fps=args.target_fps)))
    if args.report:
        from dse.report import write_report

        out, search = Path(args.report), Path(row["search_dir"])
        for stage in ("screen", "final"):
            print(write_report([search / stage], out / stage, board=args.board, target_fps=args.target_fps,
                               shortcut_bits=args.shortcut_weight_bits))
            shutil.copyfile(search / stage / "results.csv", out / stage / "results.csv")
        shutil.copyfile(search / "choice.json", out / "choice.json")
        # every trained design: FINN estimate at the target and its HW graph run on the whole test set
        from dse.results import read_results
        from bench.hw import bench as hw_bench

        final = read_results(search / "final" / "results.csv")
        runs = [Path(r) for r in final[final["status"] == "ok"].sort_values("test_acc", ascending=False)["run_dir"]]
        hw_bench(runs, targets=[str(args.target_fps)], board=args.board, out=out / "hw.md", progress=not args.quiet)
        print(out / "hw.md")
    return 0


def cmd_bench(args) -> int:
    """The benchmark sweeps: all variants of --widths1 and of --widths2 (or a seeded sample of the
    latter), then the report."""
    from dse.report import write_report
    from dse.plan import parse_widths
    from dse.sweep import default_sweep_dir, run_sweep

    plan = [(args.widths1, None), (args.widths2, args.sample)]
    timing, dirs = [], []
    for widths, sample in plan:
        ws = parse_widths(widths)
        out = default_sweep_dir(args.dataset, ws, args.recipe, sample)
        if args.limit:
            out = out.with_name(out.name + f"_l{args.limit}")
        t0 = time.time()
        df = run_sweep(args.dataset, widths, recipe=args.recipe, epochs=args.epochs, sample=sample,
                       limit=args.limit, seed=args.seed, out_dir=out, parallel=args.parallel,
                       data_dir=args.data_dir, progress=not args.quiet)
        wall = time.time() - t0
        cfg = json.loads((out / "sweep.json").read_text())
        trained = sum((r.get("ok") or 0) + (r.get("failed") or 0) for r in cfg.get("runs", []))
        total_wall = sum(r.get("wall_seconds") or 0 for r in cfg.get("runs", []))
        timing.append({"sweep": _rel(out), "widths": widths, "sample": sample, "rows": len(df),
                       "ok": int((df["status"] == "ok").sum()), "wall_seconds_this_call": round(wall, 1),
                       "wall_seconds_all_runs": round(total_wall, 1), "variants_trained": trained,
                       "variants_per_hour": round(3600 * trained / total_wall, 1) if total_wall else None})
        dirs.append(out)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps({"machine": _machine(), "recipe": args.recipe, "epochs": args.epochs,
                                                "limit": args.limit, "seed": args.seed, "sweeps": timing},
                                               indent=2) + "\n")
    path = write_report(dirs, out)
    for d, t in zip(dirs, timing):  # the tables the report was made from
        shutil.copyfile(d / "results.csv", out / f"results-{t['widths'].replace(',', '_')}.csv")
    for t in timing:
        print(f"{t['widths']}: {t['ok']}/{t['rows']} ok, {t['wall_seconds_all_runs']} s, "
              f"{t['variants_per_hour']} variants/hour")
    print(path)
    return 0


def _rel(path: Path) -> str:
    """`path` relative to the working directory when it lies below it (portable tables)."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _machine() -> dict:
    import os
    import platform

    return {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
            "python": platform.python_version()}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m dse", description="Design-space exploration of binary residual "
                                "MLPs: the thesis's sweep (Ray), its analysis and report, a board-aware choice.")
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("sweep", help="train every variant (or a sample) of the base widths; resumable",
                       description="Train and evaluate all valid variants of the base widths (thesis order), "
                       "or a seeded sample, plus F-<widths> and B-<widths>, crossed with the option axes; "
                       "one row per variant in <out>/results.csv. A rerun skips finished rows. Runs on Ray: "
                       "locally with --parallel CPUs, or on the cluster named by RAY_ADDRESS / --ray-address.")
    s.add_argument("--dataset", required=True, help="mnist, cifar10, imdb, reuters or idx:<dir>")
    s.add_argument("--widths", required=True, type=_widths_text, help="base hidden widths, e.g. 128,88")
    s.add_argument("--recipe", default="thesis", help="training recipe (default thesis)")
    s.add_argument("--epochs", type=positive_int, help="override the recipe's epochs")
    s.add_argument("--limit", type=positive_int, help="train on the first N training examples only")
    s.add_argument("--sample", type=positive_int, help="a seeded random sample of N variants instead of all")
    s.add_argument("--seed", type=seed_int, default=0, help="training and sampling seed (default 0)")
    s.add_argument("--variants", type=lambda t: [v.strip() for v in t.split(";") if v.strip()],
                   help="only these variants, ';'-separated, e.g. 'B-128N,PN;B-D128N,QN,D' (plus F-/B- baselines)")
    s.add_argument("--no-baselines", action="store_true",
                   help="with --variants: leave out F-<widths> and B-<widths> (e.g. a candidate list)")
    s.add_argument("--first-width", type=_widths, help="axis over the first hidden width, e.g. 64,128,256")
    for key, flag, typ, hlp in AXIS_ARGS:
        s.add_argument(flag, dest=key, type=typ, help=f"option axis: {hlp}")
    s.add_argument("--board", help="add FINN estimates for FPGA-able variants on this board, e.g. Pynq-Z2")
    s.add_argument("--target-fps", type=_fps, help="frame rate for the estimates (default: fastest that fits)")
    s.add_argument("--no-estimate", action="store_true", help="skip the FINN estimates even with --board")
    s.add_argument("--out", help="sweep folder (default <runs>/sweeps/<dataset>/<widths>_<recipe>[_s<N>])")
    s.add_argument("--parallel", type=positive_int, help="local Ray workers (default: CPU count)")
    s.add_argument("--ray-address", help="Ray cluster address (default: $RAY_ADDRESS, else a local instance)")
    s.add_argument("--data-dir", help="data set folder (default $RESBIN_DATA/<name>)")
    s.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    s.set_defaults(fn=cmd_sweep)

    r = sub.add_parser("report", help="markdown report with plots from finished sweeps",
                       description="Write report.md with PNG plots: consolidated table beside the thesis's, "
                       "OLS regression, sizes, accuracy vs size/LUT/fps with Pareto fronts, recommendations.")
    r.add_argument("--sweep", nargs="+", help="sweep folder(s) of one data set")
    r.add_argument("--dataset", help="instead of --sweep: every sweep of this data set under <runs>/sweeps")
    r.add_argument("--out", help="report folder (default: the first sweep folder)")
    r.add_argument("--board", help="board of the hardware section (default: the one in the table)")
    r.add_argument("--target-fps", type=_fps, help="frame rate of the chosen design (default: the table's)")
    r.set_defaults(fn=cmd_report)

    q = sub.add_parser("pareto", help="most accurate variant that fits a board at a frame rate",
                       description="From finished sweeps: the most accurate FPGA-able variant that fits the "
                       "board at >= --target-fps (FINN estimates, made where the tables lack them), or with "
                       "--min-accuracy and no target the highest frame rate reachable at that accuracy. "
                       "Prints the `make bitstream` command line.")
    q.add_argument("--sweep", nargs="+", help="sweep folder(s)")
    q.add_argument("--dataset", help="instead of --sweep: every sweep of this data set under <runs>/sweeps")
    q.add_argument("--board", required=True, help="e.g. Pynq-Z2")
    q.add_argument("--target-fps", type=_fps, help="required estimated frame rate, e.g. 1e6")
    q.add_argument("--min-accuracy", type=probability, help="only variants at least this accurate (test)")
    q.add_argument("--shortcut-bits", type=int_list(2, 16), help="also consider these shortcut weight bits, e.g. "
                   "4,8 (default: 8 only, the specification; others are reported as a deviation)")
    q.add_argument("--no-estimate", action="store_true", help="use only the estimates already made")
    q.add_argument("--emit-make-args", action="store_true", help="print only the make variable assignments")
    q.set_defaults(fn=cmd_pareto)

    z = sub.add_parser("search", help="board-aware search: most accurate design that fits a board at a frame rate",
                       description="Two sweeps (dse.search): a screen trains every variant x first width x "
                       "option combination briefly and estimates it with FINN at the target; the fitting "
                       "designs that no other fitting design of the same family out-sizes on every axis are "
                       "trained with --recipe; the most accurate one that fits is chosen. Resumable; the "
                       "screen table accumulates over calls with other axes.")
    z.add_argument("--dataset", default="mnist")
    z.add_argument("--variants", type=lambda t: [v.strip() for v in t.split(";") if v.strip()],
                   default=["B-128N,QN,D", "B-D128N,D88N,D88N,QN,D", "B-128N,PN,D"],
                   help="';'-separated binary variants, each with its own widths "
                   "(default 'B-128N,QN,D;B-D128N,D88N,D88N,QN,D;B-128N,PN,D')")
    z.add_argument("--board", default="Pynq-Z2")
    z.add_argument("--target-fps", type=_fps, default=1e6)
    z.add_argument("--first-width", type=_widths, default=[64, 96, 128], help="first hidden widths (default 64,96,128)")
    for key, flag, typ, hlp in AXIS_ARGS:
        z.add_argument(flag, dest=key, type=typ, help=f"axis: {hlp}")
    # defaults: the axes the thesis held fixed; P streams 28 wide with a vertical 4x1 window; shortcut
    # weights stay 8-bit (the specification) unless --shortcut-bits asks for others (a named deviation)
    z.set_defaults(input_bits=[2, 4, 8], pool_mode=["vertical"], pool_window=[4])
    z.add_argument("--recipe", default="strong", help="recipe of the final stage (default strong)")
    z.add_argument("--epochs", type=positive_int, help="override the final recipe's epochs")
    z.add_argument("--limit", type=positive_int, help="final stage: first N training examples only")
    z.add_argument("--screen-epochs", type=positive_int, default=1, help="screen: thesis-recipe epochs (default 1)")
    z.add_argument("--screen-limit", type=positive_int, default=5000, help="screen: training examples (default 5000)")
    z.add_argument("--seed", type=seed_int, default=0)
    z.add_argument("--out", help="search folder (default <runs>/sweeps/<dataset>/search_<board>_<fps>fps)")
    z.add_argument("--report", help="also write the reports of both stages (with their tables and the choice) here")
    z.add_argument("--parallel", type=positive_int)
    z.add_argument("--data-dir")
    z.add_argument("--quiet", action="store_true")
    z.set_defaults(fn=cmd_search)

    b = sub.add_parser("bench", help="the benchmark: the thesis's two sweeps, timed, with report",
                       description="Full sweeps of --widths1 (56 variants for one layer) and --widths2 (224 for "
                       "two; --sample N: a seeded sample of N), thesis recipe and the whole training set by "
                       "default; writes bench.json (wall time, variants/hour) and the report into --out. "
                       "Resumable like `sweep`: run it again after an interruption.")
    b.add_argument("--dataset", default="mnist")
    b.add_argument("--widths1", default="128", type=_widths_text)
    b.add_argument("--widths2", default="128,88", type=_widths_text)
    b.add_argument("--sample", type=positive_int, help="a seeded sample of this many --widths2 variants "
                   "(default: all)")
    b.add_argument("--recipe", default="thesis")
    b.add_argument("--epochs", type=positive_int)
    b.add_argument("--limit", type=positive_int, help="training examples per variant (default: all)")
    b.add_argument("--seed", type=seed_int, default=0)
    b.add_argument("--parallel", type=positive_int)
    b.add_argument("--data-dir")
    b.add_argument("--out", default="docs/results/mnist-sweep", help="report folder (default docs/results/mnist-sweep)")
    b.add_argument("--quiet", action="store_true")
    b.set_defaults(fn=cmd_bench)
    return p


def _terminate(signum, frame):
    raise KeyboardInterrupt  # SIGTERM (kill, batch schedulers) ends like Ctrl-C: Ray is shut down


def main(argv=None) -> int:
    import signal

    args = build_parser().parse_args(argv)
    if args.cmd in ("sweep", "bench", "pareto", "search"):
        signal.signal(signal.SIGTERM, _terminate)
    try:
        return args.fn(args)
    except _user_errors() as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished variants are in the results table; rerun to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
