"""Board-aware choice from finished sweeps: the most accurate variant that fits at a frame rate.

    from dse.pareto import choose
    row = choose(["runs/sweeps/mnist/128_thesis"], "Pynq-Z2", target_fps=1e6)

Candidates are the sweeps' ok, FPGA-able rows, most accurate first. A row's FINN estimate is
taken from the table when it decides the question (same board; estimated at the asked frame rate
or faster, or at the fastest folding that fits); otherwise hw_build estimates it now (no
synthesis) and the result is cached in `<sweep>/estimates.csv`. The search stops at the first
candidate that fits, so only as many variants are estimated as needed.
Without a target frame rate, `min_accuracy` asks the other question: among the variants at least
that accurate, the one with the highest frame rate reachable on the board.

The product is specified with 8-bit quantized shortcuts (`SPEC_SHORTCUT_BITS`): a P/Q variant with
other shortcut weight bits is a candidate only when those bits are asked for (`shortcut_bits`), and
every description of it names the deviation (`deviations`, `describe`).
"""
from __future__ import annotations

import csv
import json
import math
import os
import shlex
from pathlib import Path

import pandas as pd

from dse import results as R
from dse.sweep import estimate_row
from train.options import ModelOptions

FPS_TOL = 0.999  # FINN's folding lands on whole cycles: 1e6 requested -> 1,020,408 or 1,000,000
EST_COLUMNS = ("spec", "options", "run_dir", "board", "target_fps", "est_fps", "lut", "bram18", "dsp",
               "fits", "hw_error")
# the specification: a binary residual MLP with 8-bit quantized shortcuts (ModelOptions' default)
SPEC_SHORTCUT_BITS = ModelOptions().shortcut_weight_bits


class ParetoError(ValueError):
    """No sweep, no candidate, or nothing that fits; the message says which and where."""


def sweep_dirs_for(dataset: str, root=None) -> list[Path]:
    """Every sweep folder of `dataset` under `<runs root>/sweeps/` (any depth) that has results."""
    from train.runs import runs_root

    base = Path(root) if root is not None else runs_root() / "sweeps"
    out = []
    for cfg in sorted(base.rglob("sweep.json")) if base.exists() else []:
        try:
            ident = json.loads(cfg.read_text()).get("identity", {})
        except json.JSONDecodeError:
            continue
        if ident.get("dataset") == dataset and (cfg.parent / "results.csv").exists():
            out.append(cfg.parent)
    return out


def load_sweeps(sweeps) -> pd.DataFrame:
    """The latest row per (spec, options) of each sweep, with a `sweep` column, concatenated."""
    frames = []
    for d in sweeps:
        d = Path(d)
        df = R.read_results(d / "results.csv")
        df["sweep"] = str(d)
        cfg = d / "sweep.json"
        ident = json.loads(cfg.read_text()).get("identity", {}) if cfg.exists() else {}
        df["dataset"] = ident.get("dataset")
        frames.append(df)
    if not frames:
        raise ParetoError("no sweep folders given")
    return pd.concat(frames, ignore_index=True)


def _cached(sweep: Path) -> pd.DataFrame:
    p = sweep / "estimates.csv"
    if not p.exists():
        return pd.DataFrame(columns=EST_COLUMNS)
    return pd.read_csv(p, dtype={"options": str, "board": str, "hw_error": str}, keep_default_na=True) \
             .assign(options=lambda d: d["options"].fillna(""))


def _append_cache(sweep: Path, row: dict) -> None:
    p = sweep / "estimates.csv"
    new = not p.exists()
    with p.open("a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=EST_COLUMNS)
        if new:
            w.writeheader()
        w.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in EST_COLUMNS})


def _num(v):
    try:
        v = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(v) else v


def decides(est: dict, board: str, target_fps: float | None) -> bool:
    """Whether an estimate answers "fits `board` at >= target_fps?" without a new estimate."""
    if str(est.get("board")) != board or _num(est.get("est_fps")) is None:
        return False
    t0 = _num(est.get("target_fps"))
    if t0 is None:  # the fastest folding that fits: it answers every frame-rate question
        return True
    if target_fps is None:
        return False
    # a folding meeting the target that fits answers yes; one made for this very target answers
    return fits_at(est, target_fps) or abs(t0 - target_fps) <= target_fps * (1 - FPS_TOL)


def fits_at(est: dict, target_fps: float | None) -> bool:
    """The estimate fits the board (its `fits`, decided by THE fit rule `hw_build.boards.fits`
    when it was estimated) and reaches target_fps, if given (FINN's folding lands on whole
    cycles: FPS_TOL)."""
    fps = _num(est.get("est_fps"))
    fits = _num(est.get("fits")) == 1 or str(est.get("fits")).lower() == "true"
    return fits and fps is not None and (target_fps is None or fps >= target_fps * FPS_TOL)


def deviations(row: dict) -> list[str]:
    """How a design departs from the specification (8-bit shortcut weights on P/Q shortcuts)."""
    from train.spec import ModelSpec

    try:
        kind = ModelSpec.parse(str(row["spec"])).shortcut
    except (KeyError, ValueError):
        return []
    bits = _num(row.get("shortcut_weight_bits"))
    if kind in ("P", "Q") and bits is not None and int(bits) != SPEC_SHORTCUT_BITS:
        return [f"{int(bits)}-bit shortcut weights"]
    return []


def deviation_note(row: dict) -> str:
    """'deviation from the specification: 4-bit shortcut weights', or '' for a design within it."""
    dev = deviations(row)
    return f"deviation from the specification: {', '.join(dev)}" if dev else ""


def allowed(row: dict, shortcut_bits=None) -> bool:
    """Whether a row is a candidate: within the specification, or its shortcut bits asked for."""
    if not deviations(row):
        return True
    return shortcut_bits is not None and int(_num(row.get("shortcut_weight_bits"))) in \
        {int(b) for b in shortcut_bits}


def _estimate_for(row: pd.Series, board: str, target_fps: float | None, estimate_missing: bool,
                  estimator) -> dict | None:
    """An estimate that decides this row at (board, target_fps): from the table, cache or new."""
    own = {k: row.get(k) for k in R.HW_COLUMNS}
    if decides(own, board, target_fps):
        return own
    sweep = Path(row["sweep"])
    cache = _cached(sweep)
    hit = cache[(cache["spec"] == row["spec"]) & (cache["options"] == (row["options"] or ""))]
    for _, est in hit.iloc[::-1].iterrows():
        if decides(est.to_dict(), board, target_fps):
            return est.to_dict()
    if not estimate_missing:
        return None
    est = {"spec": row["spec"], "options": row["options"] or "", "run_dir": row["run_dir"],
           **estimator(row["run_dir"], board, target_fps)}
    _append_cache(sweep, est)
    return est


def choose(sweeps, board: str, target_fps: float | None = None, *, min_accuracy: float | None = None,
           estimate_missing: bool = True, estimator=None, df: pd.DataFrame | None = None,
           progress: bool = False, shortcut_bits=None) -> dict:
    """The chosen row (dict, estimate columns filled) or ParetoError.

    Candidates keep 8-bit shortcut weights (the specification) unless `shortcut_bits` (e.g.
    [4, 8]) asks for others; a chosen row with lower-bit shortcuts has `deviation` set.

    target_fps given: the most accurate variant (>= min_accuracy, if given) that fits `board` at
    >= target_fps. target_fps None: among variants >= min_accuracy (default: all), the one with
    the highest frame rate that fits, ties broken by accuracy.
    """
    from hw_build.boards import get_board

    board = get_board(board).name  # one-line BoardError for an unknown board
    estimator = estimator or estimate_row
    df = load_sweeps(sweeps) if df is None else df
    cands = df[(df["status"] == "ok") & (df["fpga_able"] == 1) & df["test_acc"].notna()]
    if min_accuracy is not None:
        cands = cands[cands["test_acc"] >= min_accuracy]
    keep = [allowed(r, shortcut_bits) for r in cands.to_dict("records")]
    left_out = len(cands) - sum(keep)
    cands = cands[pd.Series(keep, index=cands.index, dtype=bool)] if len(cands) else cands
    spec_note = (f" ({left_out} variants with other than {SPEC_SHORTCUT_BITS}-bit shortcut weights left "
                 "out: a deviation from the specification; ask for them with --shortcut-bits)"
                 if left_out else "")
    cands = cands.sort_values("test_acc", ascending=False, kind="stable")
    where = ", ".join(sorted(set(map(str, df["sweep"])))) if "sweep" in df else "the table"
    if not len(cands):
        raise ParetoError(f"no finished FPGA-able variant{f' with test accuracy >= {min_accuracy}' if min_accuracy else ''} "
                          f"in {where}{spec_note}")
    tried = 0
    best = None
    for _, row in cands.iterrows():
        est = _estimate_for(row, board, target_fps, estimate_missing, estimator)
        tried += 1
        if est is None:
            continue
        if progress:
            print(f"  {row['spec']}{row['options']}: acc {row['test_acc']:.4f}, "
                  f"{_num(est.get('est_fps')) or 0:,.0f} fps, fits={fits_at(est, None)}", flush=True)
        if not fits_at(est, target_fps):
            continue
        out = {**row.to_dict(), **{k: est.get(k) for k in R.HW_COLUMNS}, "board": board, "target_fps": target_fps}
        out["deviation"] = deviation_note(out)
        if target_fps is not None:
            return out
        if best is None or _num(out["est_fps"]) > _num(best["est_fps"]) * (1 + 1e-9):
            best = out
    if best is not None:
        return best
    what = f"at >= {target_fps:,.0f} fps" if target_fps is not None else "at any frame rate"
    raise ParetoError(f"none of the {len(cands)} FPGA-able variants in {where} fits {board} {what}"
                      + ("" if estimate_missing else " (with the estimates in the tables; "
                         f"{len(cands) - tried} not estimated)") + spec_note)


def make_args(row: dict, *, board: str | None = None, target_fps: float | None = None) -> list[str]:
    """`VAR=value` assignments that hand the chosen variant to `make bitstream`."""
    from train.options import MAKE_VARS, ModelOptions

    default = ModelOptions()
    out = [f"DATASET={row['dataset']}", f"MODEL={row['spec']}"]
    if row.get("recipe") and row.get("recipe") == row.get("recipe"):
        out.append(f"RECIPE={row['recipe']}")
    if _num(row.get("epochs")) is not None:
        out.append(f"EPOCHS={int(_num(row['epochs']))}")
    for k, var in MAKE_VARS.items():
        v = row.get(k)
        if v is None or v != v:
            continue
        v = int(v) if isinstance(getattr(default, k), int) else v
        if v != getattr(default, k):
            out.append(f"{var}={v}")
    out.append(f"BOARD={board or row.get('board')}")
    t = target_fps if target_fps is not None else _num(row.get("target_fps"))
    if t is not None:
        out.append(f"TARGET_FPS={int(t)}")
    if row.get("run_dir"):
        out.append(f"RUN={row['run_dir']}")
    return [shlex.quote(a) for a in out]


def describe(row: dict) -> str:
    fps, lut = _num(row.get("est_fps")), _num(row.get("lut"))
    run = str(row.get("run_dir") or "")
    if run.startswith(os.getcwd() + os.sep):
        run = os.path.relpath(run)
    dev = deviation_note(row)
    return (f"{row['spec']}{row.get('options') or ''}: test accuracy {row['test_acc']:.4f}, "
            f"{fps:,.0f} fps estimated, {lut:,.0f} LUT, {_num(row.get('bram18')) or 0:,.0f} BRAM18, "
            f"{_num(row.get('dsp')) or 0:,.0f} DSP on {row.get('board')} (run {run})"
            + (f"; {dev}" if dev else ""))
