"""argparse types with range checks, shared by every CLI (train, export, hw_build, dse).

A value out of range ends in argparse's one-line `error: argument --x: ...` and exit code 2,
before anything is loaded or written. Also the training/model option flags that `python -m
train` and `python -m hw_build --dataset` share.
"""
from __future__ import annotations

import argparse
import math

MAX_SEED = 2**32 - 1  # numpy's seed range


def int_range(lo: int | None = None, hi: int | None = None, what: str = "an integer"):
    """Type: an integer in [lo, hi] (either bound may be None)."""
    def parse(text: str) -> int:
        try:
            v = int(text)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            raise argparse.ArgumentTypeError(f"must be {_bounds(lo, hi)}, got {text}")
        return v
    parse.__name__ = what  # argparse names the type in "invalid <name> value"
    return parse


def float_range(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False,
                hi_open: bool = False, what: str = "a number"):
    """Type: a finite float in [lo, hi] (`lo_open`/`hi_open` exclude the bound)."""
    def parse(text: str) -> float:
        try:
            v = float(text)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not math.isfinite(v):
            raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
        if lo is not None and (v < lo or (lo_open and v == lo)):
            raise argparse.ArgumentTypeError(f"must be {_bounds(lo, hi, lo_open, hi_open)}, got {text}")
        if hi is not None and (v > hi or (hi_open and v == hi)):
            raise argparse.ArgumentTypeError(f"must be {_bounds(lo, hi, lo_open, hi_open)}, got {text}")
        return v
    parse.__name__ = what
    return parse


def int_list(lo: int | None = None, hi: int | None = None):
    """Type: comma-separated integers, each in [lo, hi], e.g. `2,4,8`."""
    one = int_range(lo, hi)

    def parse(text: str) -> list[int]:
        vals = [v.strip() for v in text.split(",") if v.strip()]
        if not vals:
            raise argparse.ArgumentTypeError(f"comma-separated integers expected, got {text!r}")
        try:
            return [one(v) for v in vals]
        except argparse.ArgumentTypeError as e:
            raise argparse.ArgumentTypeError(f"in {text!r}: {e}") from None
    parse.__name__ = "integer list"
    return parse


def _bounds(lo, hi, lo_open=False, hi_open=False) -> str:
    if lo is not None and hi is not None:
        return f"in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
    if lo is not None:
        return f"{'>' if lo_open else '>='} {lo:g}"
    return f"{'<' if hi_open else '<='} {hi:g}"


positive_int = int_range(1, what="a positive integer")
nonneg_int = int_range(0, what="an integer >= 0")
seed_int = int_range(0, MAX_SEED, what="a seed")
positive_float = float_range(0.0, lo_open=True, what="a positive number")
fraction = float_range(0.0, 1.0, lo_open=True, what="a fraction in (0, 1]")
probability = float_range(0.0, 1.0, what="a number in [0, 1]")
dropout_rate = float_range(0.0, 1.0, hi_open=True, what="a rate in [0, 1)")
frame_rate = float_range(0.0, lo_open=True, what="a frame rate such as 1e6")
clock_mhz = float_range(1.0, 1000.0, what="a clock in MHz")  # hw_build.build refuses the same


def option_type(f, many: bool = False):
    """The argparse type of a model option (train.options metadata); `many`: a comma list (dse axes)."""
    m = f.metadata
    if m["choices"] is not None:
        return None
    if m["rate"]:
        return dropout_rate
    one = int_range(m["lo"], m["hi"], what="a positive integer" if m["hi"] is None else "an integer")
    return int_list(m["lo"], m["hi"]) if many else one


def add_option_args(p, defaults=None) -> None:
    """The model-option flags of `python -m train` and `hw_build`, one per train.options field."""
    from train.options import ModelOptions, make_var, option_fields

    d = defaults or ModelOptions()
    for f in option_fields():
        m = f.metadata
        rng = f" ({m['lo']}..{m['hi']})" if m["hi"] is not None and not m["rate"] else ""
        p.add_argument(m["flag"], dest=f.name, type=option_type(f), choices=m["choices"],
                       metavar=None if m["choices"] else make_var(f.name),
                       default=getattr(d, f.name), help=m["help"] + rng)


def options_from_args(args):
    from train.options import OPTION_NAMES, ModelOptions

    return ModelOptions(**{k: getattr(args, k) for k in OPTION_NAMES})


def add_val_arg(p) -> None:
    """--val of `python -m train` and `hw_build` (checked by train.data.parse_val when used)."""
    p.add_argument("--val", help="validation split: a count (5000) or a share (0.1, 10%%) of the training "
                                 "examples (default: 10,000 for mnist/cifar10/imdb and user sets of >= 50,000, "
                                 "1,000 for reuters, else 10 %%; an npz's x_val/y_val when it has them)")


# torch's float sums depend on its thread count (measured: 200 Adam steps of F-256N,176N,176N end
# in other weights with 1 and with 2 threads, and the same with the same count); the CLIs fix it
# (not torch's default, the machine's core count) so that the same command gives the same run on
# every machine. config.json records it.
TRAIN_THREADS = 2


def add_threads_arg(p) -> None:
    p.add_argument("--threads", type=int_range(1, 256), default=TRAIN_THREADS,
                   help=f"CPU threads for torch (default {TRAIN_THREADS}; the result depends on it)")


def apply_threads(n: int) -> None:
    import torch
    torch.set_num_threads(n)
