"""Board-aware search: which variant, input/shortcut bits, pooling and first width is the most
accurate design that fits a board at a frame rate.

    from dse.search import board_search
    row = board_search("mnist", ["B-128N,QN,D", "B-D128N,D88N,D88N,QN,D"], board="Pynq-Z2",
                       target_fps=1e6, first_widths=[96, 128], options_grid={"input_bits": [2, 4, 8]})

Two stages, both ordinary sweeps (`dse.sweep.run_sweep`, so Ray, resume and failure rows apply):
1. *screen* (`<out>/screen`): every family x first width x option combination is trained briefly
   (thesis recipe, 1 epoch, 5,000 images by default: enough for real weights, thresholds and
   accumulator widths) and estimated by FINN at the target on the board (no synthesis).
2. *final* (`<out>/final`): of the screened designs that fit, only the maximal ones are trained
   with the full recipe: a fitting design is dropped when another fitting design of the same
   family has at least its first width and bits on every axis (and at most its pooling window),
   since more width or precision is not expected to cost accuracy. The most accurate final design
   that fits is chosen (`dse.pareto.choose`).
The screen's accuracies are not used for the choice; they are too short to rank designs.

The specification fixes 8-bit shortcut weights: unless `options_grid` asks for
`shortcut_weight_bits`, only 8-bit shortcuts are screened, and a design chosen with other
shortcut bits is reported as a named deviation from the specification (`dse.pareto.deviations`).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from dse import results as R
from train.options import CAPACITY

# which way each axis grows a design (more capacity or precision): train.options.CAPACITY, and
# the first hidden width
GROWS_WITH = ("first_width", *(k for k, v in CAPACITY.items() if v > 0))
SHRINKS_WITH = tuple(k for k, v in CAPACITY.items() if v < 0)


class SearchError(ValueError):
    """A search that cannot start or found nothing that fits."""


def _family(spec_name: str) -> tuple:
    """The variant with its first width left out: designs of one family differ only in that width."""
    from train.spec import ModelSpec

    spec = ModelSpec.parse(spec_name)
    return (spec.kind, spec.widths[1:], spec.dropout, spec.batchnorm, spec.shortcut, spec.shortcut_bn,
            spec.final_dropout)


def maximal(rows: pd.DataFrame) -> pd.DataFrame:
    """The rows (fitting designs) that no other row of the same family and pooling mode dominates."""
    if not len(rows):
        return rows
    df = rows.copy()
    df["family"] = [repr(_family(s)) for s in df["spec"]]
    df["first_width"] = [int(str(w).split(",")[0]) for w in df["widths"]]
    keep = []
    for idx, r in df.iterrows():
        same = df[(df["family"] == r["family"]) & (df["pool_mode"] == r["pool_mode"]) & (df.index != idx)]
        dominated = False
        for _, o in same.iterrows():
            ge = all(o[a] >= r[a] for a in GROWS_WITH) and all(o[a] <= r[a] for a in SHRINKS_WITH)
            gt = any(o[a] > r[a] for a in GROWS_WITH) or any(o[a] < r[a] for a in SHRINKS_WITH)
            if ge and gt:
                dominated = True
                break
        if not dominated:
            keep.append(idx)
    return rows.loc[keep]


def board_search(dataset, variants, *, board: str, target_fps: float, first_widths=None,
                 options_grid: dict | None = None, recipe: str = "strong", epochs: int | None = None,
                 limit: int | None = None, screen_recipe: str = "thesis", screen_epochs: int = 1,
                 screen_limit: int | None = 5000, seed: int = 0, out_dir=None, parallel: int | None = None,
                 ray_address: str | None = None, data_dir=None, runner=None, progress: bool = True) -> dict:
    """Run (or resume) both stages; returns the chosen row (dict) and writes `<out>/choice.json`.

    `variants`: binary variants in the thesis notation (each written with its own base widths,
    e.g. "B-128N,QN,D" and "B-D128N,D88N,D88N,QN,D"); `first_widths` replaces their first width.
    """
    import json

    from dse.pareto import (SPEC_SHORTCUT_BITS, ParetoError, allowed, choose, describe, deviation_note,
                            fits_at, make_args)
    from dse.sweep import SweepError, default_sweep_dir, run_sweep
    from train.spec import ModelSpec

    if not variants:
        raise SearchError("give at least one variant, e.g. B-128N,QN,D")
    specs = []
    for v in variants:
        s = ModelSpec.parse(v)
        if s.kind != "B" or not s.fpga_able:
            raise SearchError(f"{v}: only binary variants that FINN can build (no float shortcut) can be searched")
        specs.append(s)
    options_grid = dict(options_grid or {})
    asked_bits = options_grid.get("shortcut_weight_bits")  # None: the specification's 8 bits only
    options_grid.setdefault("shortcut_weight_bits", [SPEC_SHORTCUT_BITS])
    if isinstance(dataset, str):
        from train.data import load_dataset
        dataset = load_dataset(dataset, data_dir)
    out = Path(out_dir) if out_dir is not None else \
        default_sweep_dir(dataset.name, (0,), "search", None).parent / f"search_{board}_{int(target_fps)}fps"
    common = dict(board=board, target_fps=target_fps, parallel=parallel, ray_address=ray_address, seed=seed,
                  baselines=False, runner=runner, progress=progress)
    for s in specs:
        run_sweep(dataset, s.widths, recipe=screen_recipe, epochs=screen_epochs, limit=screen_limit,
                  variants=[s.name], first_widths=first_widths, options_grid=options_grid,
                  out_dir=out / "screen", **common)
    screen = R.read_results(out / "screen" / "results.csv")  # every screened design, earlier calls' too
    families = {_family(s.name) for s in specs}  # the table may hold other calls' families and baselines
    mine = screen[np.array([r["kind"] == "B" and _family(r["spec"]) in families
                            for r in screen.to_dict("records")], dtype=bool)]
    ok = mine[mine["status"] == "ok"]
    fit = ok[[fits_at(r, target_fps) and allowed(r, asked_bits) for r in ok.to_dict("records")]]
    if not len(fit):
        raise SearchError(f"no screened design fits {board} at {target_fps:,.0f} fps (see {out / 'screen'})")
    keep = maximal(fit)
    designs = [(r["spec"], {a: str(r[a]) if a == "pool_mode" else int(r[a]) for a in R.OPTION_COLUMNS
                            if a != "dropout"}) for _, r in keep.iterrows()]
    try:  # one sweep, so that the designs train in parallel
        run_sweep(dataset, ModelSpec.parse(designs[0][0]).widths, recipe=recipe, epochs=epochs, limit=limit,
                  designs=designs, out_dir=out / "final", **common)
    except SweepError as e:
        raise SearchError(str(e)) from None
    try:
        row = choose([out / "final"], board, target_fps, estimate_missing=False, shortcut_bits=asked_bits)
    except ParetoError as e:
        raise SearchError(f"{e} (screened: {len(mine)}, fitting: {len(fit)}, trained: {len(keep)})") from None
    summary = {"board": board, "target_fps": target_fps, "screened": int(len(mine)), "fitting": int(len(fit)),
               "trained": [f"{r['spec']}{r['options']}" for _, r in keep.iterrows()],
               "chosen": f"{row['spec']}{row['options'] or ''}", "describe": describe(row),
               "make_args": make_args(row, board=board, target_fps=target_fps),
               "deviation": deviation_note(row) or None}
    (out / "choice.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return {**row, "search_dir": str(out), **{k: summary[k] for k in ("screened", "fitting", "trained")}}
