"""The model's build options (what the thesis held fixed), each declared ONCE, here.

Every `ModelOptions` field carries its metadata: CLI flag (the make variable is the flag in upper
case: `--input-bits` -> `INPUT_BITS`), run-folder suffix key, help, valid range or choices,
whether the design-space tools sweep it, which shortcut kinds it changes, and which way means
more capacity. Everything else derives from it: the CLI flags of train / hw_build / dse
(`train.cli_types`), their checks (`check_options`), run-folder suffixes (`options_suffix`),
the dse result columns, sweep axes and option scopes, the `make` assignments of a chosen design
(`make_assignments`) and the Makefile's `OPTION_VARS` (tested equal). No torch: dse imports this.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

__all__ = ["ModelOptions", "ModelError", "OPTION_NAMES", "SWEEP_AXES", "OPTION_SCOPE", "CAPACITY",
           "MAKE_VARS", "ACCELERATOR_DEFAULTS", "option_fields", "options_suffix", "check_options", "make_var"]


class ModelError(ValueError):
    """A model that cannot be built: an option outside its range, an F shortcut on the FPGA path, ..."""


def _opt(default, *, flag: str, suffix: str, help: str, lo=None, hi=None, choices=None,
         rate: bool = False, sweep: bool = True, scope: tuple | None = None, capacity: int = 0):
    return field(default=default, metadata=dict(
        flag=flag, suffix=suffix, help=help, lo=lo, hi=hi, choices=choices, rate=rate, sweep=sweep,
        scope=scope, capacity=capacity))


@dataclass(frozen=True)
class ModelOptions:
    input_bits: int = _opt(8, flag="--input-bits", suffix="in", lo=1, hi=8, capacity=1,
                           help="input quantizer bits (raw 0..input_max in, /input_max inside)")
    shortcut_weight_bits: int = _opt(8, flag="--shortcut-bits", suffix="sc", lo=2, hi=16,
                                     scope=("P", "Q"), capacity=1,
                                     help="Q/P shortcut weight bits (the specification: 8)")
    add_bits: int = _opt(8, flag="--add-bits", suffix="add", lo=2, hi=16, capacity=1,
                         help="bits of the ONE shared quantizer of both residual branches")
    output_weight_bits: int = _opt(8, flag="--output-bits", suffix="out", lo=2, hi=16, capacity=1,
                                   help="output layer weight bits")
    pool_window: int = _opt(9, flag="--pool-window", suffix="pw", lo=1, scope=("P",), capacity=-1,
                            help="P shortcut pooling window (9: 784 -> 87 features, the thesis's "
                                 "size tables)")
    pool_mode: str = _opt("flat", flag="--pool-mode", suffix="pm", choices=("flat", "vertical"),
                          scope=("P",), help="P: 1-D over the flat input, or k x 1 over image rows "
                                             "with the columns as channels")
    dropout: float = _opt(0.05, flag="--dropout", suffix="do", lo=0.0, hi=1.0, rate=True,
                          sweep=False, help="dropout rate of the D layers")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelOptions":
        unknown = set(d) - set(OPTION_NAMES)
        if unknown:
            raise ModelError(f"unknown model options {sorted(unknown)}; expected {sorted(OPTION_NAMES)}")
        return cls(**d)


def option_fields():
    """The option fields with their metadata (dataclasses.Field)."""
    return fields(ModelOptions)


def make_var(name: str) -> str:
    """The make variable of an option: its flag in upper case (`--shortcut-bits` -> SHORTCUT_BITS)."""
    f = next(f for f in option_fields() if f.name == name)
    return f.metadata["flag"][2:].upper().replace("-", "_")


OPTION_NAMES = tuple(f.name for f in option_fields())
SWEEP_AXES = tuple(f.name for f in option_fields() if f.metadata["sweep"])
# options that only change variants with these shortcut kinds (the others: every binary variant)
OPTION_SCOPE = {f.name: f.metadata["scope"] for f in option_fields() if f.metadata["scope"]}
# +1: a larger value is more capacity/precision (a bigger design); -1: a smaller one is
CAPACITY = {f.name: f.metadata["capacity"] for f in option_fields() if f.metadata["capacity"]}
MAKE_VARS = {name: make_var(name) for name in SWEEP_AXES}
# the default accelerator of the make targets (`make sim DATASET=mnist`): the options that differ
# from ModelOptions' (the thesis's) defaults; the Makefile's `?=` defaults are tested against it
ACCELERATOR_DEFAULTS = {"input_bits": 4}


def check_options(options: ModelOptions) -> None:
    """ModelError unless every option is of its type and in its range."""
    for f in option_fields():
        v, m = getattr(options, f.name), f.metadata
        if m["choices"] is not None:
            if v not in m["choices"]:
                raise ModelError(f"option {f.name}={v!r}; expected one of {', '.join(m['choices'])}")
            continue
        ok_type = isinstance(v, (int, float)) and not isinstance(v, bool) if m["rate"] else \
            isinstance(v, int) and not isinstance(v, bool)
        lo, hi = m["lo"], m["hi"]
        if m["rate"]:
            if not ok_type or not lo <= v < hi:
                raise ModelError(f"option {f.name}={v!r} must be in [{lo:g}, {hi:g})")
        elif hi is None and (not ok_type or v < lo):
            raise ModelError(f"option {f.name}={v!r} must be an integer >= {lo}")
        elif hi is not None and (not ok_type or not lo <= v <= hi):
            raise ModelError(f"option {f.name}={v!r} is outside {lo}..{hi}")


def options_suffix(options: ModelOptions) -> str:
    """Run-folder suffix naming the non-default options: "" for defaults, else e.g. "__in2_sc4"."""
    default = ModelOptions()
    parts = []
    for f in option_fields():
        v = getattr(options, f.name)
        if v != getattr(default, f.name):
            key = f.metadata["suffix"]
            parts.append(f"{key}{v:g}" if isinstance(v, float) else f"{key}{v}")
    return "__" + "_".join(parts) if parts else ""
