"""What a sweep trains: the jobs (variant x options) of the thesis's enumeration or of explicit
designs, each with its thesis size and the component flags of the results table (`dse.sweep`
runs them)."""
from __future__ import annotations

import itertools
import random
from dataclasses import asdict, fields

from dse import results as R
from train.options import OPTION_SCOPE, SWEEP_AXES as OPTION_AXES
from train.shortcuts import get_shortcut


class SweepError(ValueError):
    """A sweep that cannot start (bad arguments, a folder made with another configuration)."""


def parse_widths(widths) -> tuple[int, ...]:
    """train.spec.parse_widths, its error as a SweepError."""
    from train.spec import SpecError
    from train.spec import parse_widths as parse

    try:
        return parse(widths)
    except SpecError as e:
        raise SweepError(f"widths: {e}") from None


def option_combos(options_grid: dict | None) -> list[dict]:
    """Cartesian product of the option axes, each a full `ModelOptions` dict (defaults elsewhere)."""
    from train.options import ModelOptions

    grid = dict(options_grid or {})
    unknown = set(grid) - set(OPTION_AXES)
    if unknown:
        raise SweepError(f"unknown option axes {sorted(unknown)}; expected some of {list(OPTION_AXES)}")
    default = asdict(ModelOptions())
    axes = [(k, list(v) if isinstance(v, (list, tuple)) else [v]) for k, v in grid.items()]
    for k, vals in axes:
        if not vals:
            raise SweepError(f"option axis {k} has no values")
    return [{**default, **dict(zip([k for k, _ in axes], combo))}
            for combo in itertools.product(*[v for _, v in axes])]


def relevant_options(spec, opts: dict) -> dict:
    """`opts` with the options that cannot change this spec's model reset to their defaults.

    Float models use none; binary ones all of input/add/output bits; shortcut weight bits matter
    for the quantized shortcuts (Q, P), the pooling geometry only for P (see train.models).
    """
    from train.options import ModelOptions

    default = asdict(ModelOptions())
    if spec.kind != "B":
        return dict(default)
    out = dict(opts)
    for k, kinds in OPTION_SCOPE.items():
        if spec.shortcut not in kinds:
            out[k] = default[k]
    return out


def _flag_key(spec) -> tuple:
    return (spec.dropout, spec.batchnorm, spec.shortcut, spec.shortcut_bn, spec.final_dropout)


def _flags(spec) -> dict:
    _, bits = spec.encode(1, 1)
    return dict(zip(R.COMPONENTS, bits))


def _sizes(spec, opts: dict, n_in: int, n_out: int, image_shape) -> dict:
    """Thesis size (KiB, its Keras accounting) and relative size; P counts the pooled features."""
    from train import size as S

    rows = S.thesis_size_breakdown(spec, n_in, n_out, pool_window=min(opts["pool_window"], n_in),
                                   shortcut_bits=opts["shortcut_weight_bits"])
    bits = sum(r.bits for r in rows)
    if spec.shortcut is not None and get_shortcut(spec.shortcut).pooled and opts["pool_mode"] == "vertical" \
            and image_shape is not None:
        h, w = image_shape[0], (n_in // image_shape[0])
        extra = (h // opts["pool_window"]) * w - S.pooled_features(n_in, min(opts["pool_window"], n_in))
        bits += extra * spec.widths[-1] * S.FLOAT_BITS
    kib = bits / 8 / 1024
    return {"thesis_size_kib": round(kib, 4),
            "relative_size": round(kib / S.float_baseline_size_kib(spec.widths, n_in, n_out), 5)}


def plan(info: tuple, widths, *, sample: int | None = None, seed: int = 0,
         options_grid: dict | None = None, first_widths=None, variants=None,
         baselines: bool = True) -> list[dict]:
    """The jobs of a sweep, in submission order: per base widths the float baseline, then the
    (sampled) binary variants in the thesis's enumeration order, each crossed with the options.

    `info` = (n_inputs, n_outputs, input_max, image_shape) as `train.data.dataset_info` gives it.
    `variants`: only these binary variants (names in the thesis notation, hidden widths written
    as the base widths; with `first_widths` the first width is replaced), instead of all/sample.
    `baselines=False` (only with `variants`): without F-<widths> and the plain B-<widths>.
    """
    from train.options import ModelOptions, options_suffix
    from train.spec import ModelSpec, enumerate_variants

    n_in, n_out, _, image_shape = info
    base = parse_widths(widths)
    bases = [base] if not first_widths else [(int(f), *base[1:]) for f in first_widths]
    combos = option_combos(options_grid)
    if sample is not None and sample < 1:
        raise SweepError(f"sample must be >= 1, got {sample}")
    if not baselines and not variants:
        raise SweepError("leaving out the float and plain binary baselines needs an explicit variant list")
    wanted = None
    if variants:
        wanted = [ModelSpec.parse(v) for v in variants]
        for v in wanted:
            if v.kind != "B" or v.widths != base:
                raise SweepError(f"variant {v.name} is not a binary variant of the base widths "
                                 f"{','.join(map(str, base))}")
    jobs, seen = [], set()
    for ws in bases:
        specs = enumerate_variants(ws, "B")
        chosen = list(range(len(specs)))
        if wanted is not None:
            flags = {_flag_key(v) for v in wanted}
            chosen = [i for i in chosen if _flag_key(specs[i]) in flags]
        elif sample is not None and sample < len(specs):
            chosen = sorted(random.Random(seed).sample(chosen, sample))
        plain = next(i for i, s in enumerate(specs) if s.name == f"B-{','.join(map(str, ws))}")
        if baselines and plain not in chosen:  # the plain binary is part of every full sweep
            chosen = sorted([plain, *chosen])
        todo = ([(None, specs[0].float_baseline())] if baselines else []) + [(i, specs[i]) for i in chosen]
        for idx, spec in todo:
            for combo in (combos if spec.kind == "B" else combos[:1]):
                opts = relevant_options(spec, combo)
                suffix = options_suffix(ModelOptions(**opts))
                if (spec.name, suffix) in seen:
                    continue
                seen.add((spec.name, suffix))
                jobs.append(_job(len(jobs), idx, spec, opts, suffix, n_in, n_out, image_shape))
    return jobs


def _job(n: int, idx, spec, opts: dict, suffix: str, n_in: int, n_out: int, image_shape) -> dict:
    return {"job": n, "variant": idx, "spec": spec.name, "kind": spec.kind,
            "widths": ",".join(map(str, spec.widths)), "n_layers": len(spec.widths),
            "fpga_able": int(spec.fpga_able), **_flags(spec), **opts,
            "options": suffix, "slug": spec.slug + suffix, **_sizes(spec, opts, n_in, n_out, image_shape)}


def design_jobs(info: tuple, designs) -> list[dict]:
    """Jobs for an explicit list of designs, (binary variant name, options dict) pairs, of any
    widths (the board search's final stage); options left out take their defaults."""
    from train.options import ModelOptions, options_suffix
    from train.spec import ModelSpec, enumerate_variants

    n_in, n_out, _, image_shape = info
    jobs, seen = [], set()
    for name, opts in designs:
        spec = ModelSpec.parse(name)
        if spec.kind != "B":
            raise SweepError(f"design {spec.name} is not a binary variant")
        idx = next(i for i, v in enumerate(enumerate_variants(spec.widths, "B")) if _flag_key(v) == _flag_key(spec))
        full = relevant_options(spec, {**asdict(ModelOptions()), **opts})
        suffix = options_suffix(ModelOptions(**full))
        if (spec.name, suffix) not in seen:
            seen.add((spec.name, suffix))
            jobs.append(_job(len(jobs), idx, spec, full, suffix, n_in, n_out, image_shape))
    return jobs


def check_jobs(jobs: list[dict], info: tuple) -> None:
    """Build one model per distinct option set (P variants first, they use the most options), so
    that bad options fail here with one line instead of in every task."""
    from train.models import ModelOptions, build_model

    n_in, n_out, input_max, image_shape = info
    seen = set()
    for j in sorted(jobs, key=lambda j: j["P"] == 0):
        opts = {f.name: j[f.name] for f in fields(ModelOptions)}
        key = tuple(sorted(opts.items()))
        if key in seen:
            continue
        seen.add(key)
        try:
            build_model(j["spec"], n_in, n_out, ModelOptions(**opts), image_shape, input_max=input_max)
        except ValueError as e:  # ModelError / SpecError
            raise SweepError(f"{j['spec']} with options {j['options'] or '(defaults)'}: {e}") from None
