"""The sweep's results table: `<sweep>/results.csv`, one row per (variant, options), append-only.

A row is appended (and flushed to disk) as each variant finishes, so an interrupted sweep loses at
most the variants in flight. A rerun of a variant appends a new row; readers keep the last row of
each key (spec, options), so a failed variant that later succeeds counts once.
"""
from __future__ import annotations

import csv
import math
import os
from pathlib import Path

import pandas as pd

from train.options import OPTION_NAMES
from train.shortcuts import LETTERS

COMPONENTS = ("N", *LETTERS, "D1", "N1", "D2", "N2", "D3", "N3", "D4", "N4", "D")  # thesis bit order
OPTION_COLUMNS = OPTION_NAMES

HW_COLUMNS = ("board", "target_fps", "est_fps", "lut", "bram18", "dsp", "fits", "hw_error")
COLUMNS = (
    ("job", "variant", "spec", "kind", "widths", "n_layers", "fpga_able", *COMPONENTS,
     *OPTION_COLUMNS, "options",
     "status", "error",
     "test_acc", "val_acc", "test_loss", "val_loss", "thesis_size_kib", "relative_size",
     "deployed_kib", "train_seconds", "seconds", "seed", "recipe", "epochs", "limit_train",
     *HW_COLUMNS, "run_dir", "finished")
)
KEY = ("spec", "options")


class ResultsError(ValueError):
    """A results table that cannot be read or extended; the message names the file."""


def _cell(v):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, bool):
        return int(v)
    return v


def _check_header(path: Path) -> None:
    with path.open(newline="") as f:
        header = next(csv.reader(f), None)
    if header != list(COLUMNS):
        raise ResultsError(f"{path}: header does not match this version's results columns "
                           f"(expected {len(COLUMNS)} columns starting {list(COLUMNS[:4])}); "
                           "use a new sweep folder")


def append_row(path: str | Path, row: dict) -> None:
    """Append one row (missing columns empty; unknown keys are an error) and fsync it."""
    path = Path(path)
    unknown = set(row) - set(COLUMNS)
    if unknown:
        raise ResultsError(f"{path}: unknown result columns {sorted(unknown)}")
    new = not path.exists() or path.stat().st_size == 0
    if not new:
        _check_header(path)
        with path.open("rb") as f:  # a crash mid-line leaves no newline: start a fresh line
            f.seek(-1, os.SEEK_END)
            torn = f.read(1) != b"\n"
    with path.open("a", newline="") as f:
        if not new and torn:
            f.write("\n")
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        if new:
            w.writeheader()
        w.writerow({k: _cell(row.get(k)) for k in COLUMNS})
        f.flush()
        os.fsync(f.fileno())


def read_results(path: str | Path, *, latest: bool = True, ok_only: bool = False) -> pd.DataFrame:
    """The table as a DataFrame (flags as int, options as str); `latest` keeps each key's last row."""
    path = Path(path)
    if not path.exists():
        raise ResultsError(f"{path}: no results table (run `python -m dse sweep` first)")
    _check_header(path)
    try:
        df = pd.read_csv(path, dtype={"spec": str, "options": str, "widths": str, "status": str,
                                      "error": str, "pool_mode": str, "board": str, "hw_error": str},
                         keep_default_na=True, on_bad_lines="skip")
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        raise ResultsError(f"{path}: not a readable results table ({e})") from None
    df = df[df["spec"].notna() & df["status"].isin(["ok", "failed"])].copy()  # drops torn lines
    df["options"] = df["options"].fillna("")
    for c in COMPONENTS:
        df[c] = df[c].fillna(0).astype(int)
    if latest:
        df = df.drop_duplicates(list(KEY), keep="last")
    if ok_only:
        df = df[df["status"] == "ok"]
    return df.reset_index(drop=True)


def finished_keys(path: str | Path, *, with_estimate: bool = False) -> set[tuple[str, str]]:
    """Keys (spec, options) whose latest row has status ok (and, with `with_estimate`, a FINN
    estimate where the variant can go to the FPGA: a failed estimate is retried like a failed run)."""
    path = Path(path)
    if not path.exists():
        return set()
    df = read_results(path, ok_only=True)
    if with_estimate:
        df = df[~((df["fpga_able"] == 1) & df["est_fps"].isna())]
    return set(zip(df["spec"], df["options"]))
