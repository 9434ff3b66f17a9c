"""`python -m train`: train and evaluate one model; `size` and `variants` subcommands.

    python -m train --dataset mnist --model "B-D128N,D88N,PN,D" [--recipe thesis|strong] [--epochs N] ...
    python -m train size "B-D128N,Q" --dataset mnist [--layers]
    python -m train variants --widths 128,88 [--count]
"""
from __future__ import annotations

import argparse
import sys


def _user_errors() -> tuple[type[Exception], ...]:
    from train.data import DataError
    from train.models import ModelError
    from train.recipes import RecipeError
    from train.spec import SpecError
    from train.trainer import TrainError
    return (SpecError, DataError, ModelError, RecipeError, TrainError)


def _deployed_fn(pool_window: int):
    def fn(spec, n_in, n_out):
        from train.models import ModelOptions, build_model, deployed_size
        res = deployed_size(build_model(spec, n_in, n_out, ModelOptions(pool_window=int(pool_window))))
        return dict(res, bits=res["total_bits"])
    return fn


def main_size(argv) -> int:
    from train.size import POOL_WINDOW, main_size as size_main
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--pool-window", default=POOL_WINDOW)  # checked by size_main's own parser
    known, _ = pre.parse_known_args(argv)
    try:
        return size_main(argv, deployed_fn=_deployed_fn(known.pool_window))
    except _user_errors() as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def build_parser() -> argparse.ArgumentParser:
    from train.cli_types import add_option_args, add_threads_arg, add_val_arg, positive_int, seed_int
    from train.recipes import DEFAULT_RECIPE, RECIPES
    p = argparse.ArgumentParser(
        prog="python -m train",
        description="Train and evaluate one binary residual MLP (or float baseline); results go to one run "
                    "folder per (data set, model). Subcommands: `size` (thesis and deployed size), "
                    "`variants` (the thesis's enumeration).")
    p.add_argument("--dataset", required=True, help="mnist, cifar10, imdb, reuters or idx:<dir>")
    p.add_argument("--model", required=True, help="thesis notation, e.g. 'B-D128N,D88N,PN,D' or 'F-128,88'")
    p.add_argument("--recipe", default=DEFAULT_RECIPE, choices=sorted(RECIPES), help=f"default {DEFAULT_RECIPE}")
    p.add_argument("--epochs", type=positive_int, help="override the recipe's epochs (the student's; a "
                   "distilling recipe's teacher keeps its own)")
    p.add_argument("--seed", type=seed_int, default=0)
    add_option_args(p)
    add_val_arg(p)
    p.add_argument("--data-dir", help="data folder (default $RESBIN_DATA/<name> or ~/.cache/resbin/<name>)")
    p.add_argument("--run-dir", help="run folder (default runs/<dataset>/<model slug>[__options])")
    p.add_argument("--limit-train", type=positive_int, help="train on the first N training examples only")
    p.add_argument("--device", help="torch device (default: cuda when available)")
    p.add_argument("--trainer", default="fast", choices=("fast", "brevitas"),
                   help="binary models: step with train.fast_model (Brevitas' arithmetic, bit for bit, "
                        "2-3x faster) or through the Brevitas modules (same run, for comparison)")
    add_threads_arg(p)
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run from its last epoch (make: RESUME=1)")
    p.add_argument("--force", action="store_true",
                   help="retrain even if the run folder holds a run (make: FORCE=1)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--print-run-dir", action="store_true",
                   help="print the run folder these arguments name, and exit (the Makefile uses it)")
    return p


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "size":
        return main_size(argv[1:])
    if argv and argv[0] == "variants":
        from train.spec import main_variants
        return main_variants(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        from train.cli_types import apply_threads, options_from_args
        from train.trainer import train_run
        apply_threads(args.threads)
        options = options_from_args(args)
        if args.print_run_dir:
            from train.spec import ModelSpec
            from train.trainer import run_folder
            print(run_folder(args.dataset, ModelSpec.parse(args.model), options, args.run_dir, val=args.val))
            return 0
        metrics = train_run(args.dataset, args.model, recipe=args.recipe, epochs=args.epochs, options=options, seed=args.seed,
                  run_dir=args.run_dir, resume=args.resume, data_dir=args.data_dir, limit_train=args.limit_train,
                  device=args.device, progress=not args.no_progress, force=args.force, val=args.val,
                  trainer=args.trainer)
    except _user_errors() as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: the last finished epoch is in checkpoint.pt; rerun with --resume (make RESUME=1)",
              file=sys.stderr)
        return 130
    from train.trainer import summary_table
    print(summary_table(metrics))
    return 0


if __name__ == "__main__":
    sys.exit(main())
