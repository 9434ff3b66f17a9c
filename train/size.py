"""The thesis's size model (eqs. 11-19) in the accounting of its tables (Keras/Larq summary, KiB).

Conventions, fixed by reproducing every size in the thesis's tables 10, 13, 16 and 19 (see
tests/test_size.py), with m = 32 (float), k = 1 (binary), 8-bit Q shortcut weights:
- dense layer: weights at k or m bits plus one float32 bias per unit (binary layers too, eq. 13);
- batch-norm: 2 float32 per unit (eq. 14; the moving statistics are not counted);
- dropout, pooling, reshape, flatten, the add: nothing;
- shortcuts (width w = last hidden width, n = inputs): F = float dense (n+1)w (eq. 15);
  Q = 8-bit weights n*w + float32 bias (eq. 16); P = float dense on floor(n/p) pooled features
  (MaxPooling1D, 'valid' padding, stride = window; p = 9 reproduces the tables: 784 -> 87);
- output: float32 dense with bias;
- KiB = bytes / 1024.
The deployed (accelerator) size is computed from the built model by `train.models`; `main_size`
prints it when given that function.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

from train.shortcuts import get_shortcut
from train.spec import ModelSpec, SpecError

FLOAT_BITS = 32      # m
BINARY_BITS = 1      # k of the binary hidden layers
SHORTCUT_BITS = 8    # k of the Q shortcut
POOL_WINDOW = 9      # p of the P shortcut that the thesis's size tables correspond to


@dataclass(frozen=True)
class SizeRow:
    """One stored layer: `weights` parameters at `weight_bits` plus `floats` float32 values."""

    layer: str
    weights: int
    weight_bits: int
    floats: int

    @property
    def bits(self) -> int:
        return self.weights * self.weight_bits + self.floats * FLOAT_BITS

    @property
    def kib(self) -> float:
        return self.bits / 8 / 1024


def _as_spec(spec) -> ModelSpec:
    return spec if isinstance(spec, ModelSpec) else ModelSpec.parse(spec)


def _check_io(n_in, n_out, pool_window=POOL_WINDOW):
    for what, v in (("inputs", n_in), ("outputs", n_out), ("pool window", pool_window)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise SpecError(f"{what} must be an integer >= 1, got {v!r}")


def pooled_features(n_in: int, pool_window: int = POOL_WINDOW) -> int:
    """Features after MaxPooling1D(pool_window) over the flat input ('valid', stride = window)."""
    _check_io(n_in, 1, pool_window)
    if pool_window > n_in:
        raise SpecError(f"pool window {pool_window} is larger than the {n_in} inputs")
    return n_in // pool_window


def thesis_size_breakdown(spec, n_in: int, n_out: int, pool_window: int = POOL_WINDOW,
                          shortcut_bits: int = SHORTCUT_BITS) -> list[SizeRow]:
    """Per-layer rows of the thesis's accounting, in forward order (shortcut before the output)."""
    spec = _as_spec(spec)
    _check_io(n_in, n_out, pool_window)
    k = BINARY_BITS if spec.binary else FLOAT_BITS
    kind = "binary" if spec.binary else "float"
    rows = []
    prev = n_in
    for i, (w, bn) in enumerate(zip(spec.widths, spec.batchnorm), 1):
        rows.append(SizeRow(f"dense{i} ({kind} {prev}x{w})", prev * w, k, w))
        if bn:
            rows.append(SizeRow(f"bn{i}", 0, 0, 2 * w))
        prev = w
    w = spec.widths[-1]
    if spec.shortcut is not None:
        kind = get_shortcut(spec.shortcut)
        n_feat = pooled_features(n_in, pool_window) if kind.pooled else n_in
        label, n_w, bits = kind.thesis_row(n_feat, w, float_bits=FLOAT_BITS, shortcut_bits=shortcut_bits,
                                           pool_window=pool_window)
        rows.append(SizeRow(label, n_w, bits, w))
    if spec.shortcut_bn:
        rows.append(SizeRow("shortcut bn", 0, 0, 2 * w))
    rows.append(SizeRow(f"output (float {prev}x{n_out})", prev * n_out, FLOAT_BITS, n_out))
    return rows


def thesis_size_bits(spec, n_in: int, n_out: int, pool_window: int = POOL_WINDOW,
                     shortcut_bits: int = SHORTCUT_BITS) -> int:
    return sum(r.bits for r in thesis_size_breakdown(spec, n_in, n_out, pool_window, shortcut_bits))


def thesis_size_kib(spec, n_in: int, n_out: int, pool_window: int = POOL_WINDOW,
                    shortcut_bits: int = SHORTCUT_BITS) -> float:
    """Size in KiB as the thesis's tables report it, e.g. `B-128` on MNIST (784 -> 10) = 17.79."""
    return thesis_size_bits(spec, n_in, n_out, pool_window, shortcut_bits) / 8 / 1024


def float_baseline_size_kib(widths, n_in: int, n_out: int) -> float:
    """Size of the float MLP `F-<widths>` (eq. 12 with m = 32): the thesis's reference model."""
    n = len(tuple(widths))
    return thesis_size_kib(ModelSpec("F", tuple(widths), (False,) * n, (False,) * n), n_in, n_out)


def relative_size(spec, n_in: int, n_out: int, pool_window: int = POOL_WINDOW,
                  shortcut_bits: int = SHORTCUT_BITS) -> float:
    """Size relative to the float model of the same widths (the tables' "Tam. rel." column)."""
    spec = _as_spec(spec)
    return (thesis_size_kib(spec, n_in, n_out, pool_window, shortcut_bits)
            / float_baseline_size_kib(spec.widths, n_in, n_out))


def _dataset_io(name: str) -> tuple[int, int]:
    try:
        from train.data import dataset_info
    except ImportError as e:
        raise SpecError(f"--dataset needs train.data.dataset_info ({e}); use --inputs/--outputs") from None
    info = dataset_info(name)
    return int(info[0]), int(info[1])


def _user_errors() -> tuple[type[Exception], ...]:
    """Errors printed as one line by the CLI: ours and train.data's DataError (if that module exists)."""
    try:
        from train.data import DataError
    except ImportError:
        return (SpecError, ValueError)
    return (SpecError, ValueError, DataError)


def _deployed_rows(result: dict) -> list[tuple[str, int]]:
    rows = result.get("layers", result.get("breakdown", []))
    if isinstance(rows, dict):
        return [(str(k), int(v if not isinstance(v, dict) else v["bits"])) for k, v in rows.items()]
    out = []
    for r in rows:
        if isinstance(r, dict):
            out.append((str(r.get("name", r.get("layer", "?"))), int(r["bits"])))
        else:
            out.append((str(r[0]), int(r[1])))
    return out


def main_size(argv=None, deployed_fn=None) -> int:
    """`python -m train size NAME (--dataset D | --inputs N --outputs M) [--pool-window 9] [--layers]`."""
    from train.cli_types import positive_int

    p = argparse.ArgumentParser(prog="python -m train size",
                                description="Model size in the thesis's accounting (KiB, Keras/Larq summary) "
                                            "against the float baseline of the same widths, and the deployed "
                                            "size (bits the accelerator stores).")
    p.add_argument("name", help="model in the thesis notation, e.g. 'B-D128N,D88N,PN,D'")
    p.add_argument("--dataset", help="data set giving inputs/outputs: mnist, cifar10, imdb, reuters, idx:<dir>")
    p.add_argument("--inputs", type=positive_int, help="input width (instead of --dataset)")
    p.add_argument("--outputs", type=positive_int, help="output width (instead of --dataset)")
    p.add_argument("--pool-window", type=positive_int, default=POOL_WINDOW,
                   help=f"P shortcut pooling window (default {POOL_WINDOW}, as the thesis's size tables)")
    p.add_argument("--layers", action="store_true", help="also print the per-layer breakdown")
    args = p.parse_args(argv)
    try:
        spec = ModelSpec.parse(args.name)
        if args.dataset is not None:
            if args.inputs is not None or args.outputs is not None:
                raise SpecError("give either --dataset or --inputs/--outputs, not both")
            n_in, n_out = _dataset_io(args.dataset)
            src = f"{args.dataset}: "
        elif args.inputs is not None and args.outputs is not None:
            n_in, n_out, src = args.inputs, args.outputs, ""
        else:
            raise SpecError("give --dataset NAME or both --inputs and --outputs")
        rows = thesis_size_breakdown(spec, n_in, n_out, args.pool_window)
        thesis = sum(r.bits for r in rows) / 8 / 1024
        base_spec = spec.float_baseline()
        base = thesis_size_kib(base_spec, n_in, n_out)
        deployed = deployed_fn(spec, n_in, n_out) if deployed_fn is not None else None
    except _user_errors() as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{spec.name}  ({src}{n_in} inputs, {n_out} outputs, pool window {args.pool_window})")
    if args.layers:
        print(f"  {'layer':<40} {'KiB':>10}")
        for r in rows:
            print(f"  {r.layer:<40} {r.kib:>10.2f}")
    table = [("thesis size (Keras/Larq summary)", f"{thesis:.2f} KiB"),
             (f"float baseline {base_spec.name}", f"{base:.2f} KiB"),
             ("relative to float baseline", f"{thesis / base:.2f}")]
    if deployed is not None:
        bits = int(deployed["bits"])
        table.append(("deployed (bits the accelerator stores)", f"{bits / 8 / 1024:.2f} KiB ({bits} bits)"))
    for k, v in table:
        print(f"  {k:<40} {v:>22}")
    if deployed is not None and args.layers:
        for name, bits in _deployed_rows(deployed):
            print(f"    deployed {name:<31} {bits / 8 / 1024:>10.2f} KiB")
    return 0
