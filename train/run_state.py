"""Whether a run folder holds a finished training, and reading its checkpoint files safely.

A run is finished when `metrics.json` exists: the trainer writes it (atomically) after the last
epoch and the final evaluation, and deletes it before a `--force` retraining. Export and hw_build
take only finished runs; an interrupted one is named with the way out (`--resume`).
"""
from __future__ import annotations

import csv
import json
import pickle
import zipfile
from pathlib import Path

RESUME_HINT = "finish it with `python -m train ... --resume` (make train RESUME=1)"
FORCE_HINT = "--force (make FORCE=1)"


class TrainError(RuntimeError):
    """A run that cannot start or continue (mismatched checkpoint, interrupted run without --resume)."""


def epochs_done(run: Path) -> int:
    """Rows of history.csv (one per finished epoch); 0 when missing or unreadable."""
    try:
        with open(Path(run) / "history.csv", newline="") as f:
            return sum(1 for _ in csv.DictReader(f))
    except (OSError, csv.Error):
        return 0


def is_finished(run: str | Path) -> bool:
    return (Path(run) / "metrics.json").is_file()


def require_finished(run: str | Path) -> None:
    """Raise TrainError (one line, with the way out) unless `run` holds a finished training."""
    run = Path(run)
    if not (run / "config.json").is_file():
        raise TrainError(f"{run}: no training run here (no config.json); train it with `python -m train` "
                         "(make train)")
    if is_finished(run):
        return
    try:
        total = json.loads((run / "config.json").read_text()).get("epochs")
    except (OSError, ValueError):
        total = None
    of = f" of {total}" if total else ""
    raise TrainError(f"{run}: training is not finished ({epochs_done(run)}{of} epochs done, no metrics.json); "
                     f"{RESUME_HINT}")


def read_checkpoint(path: str | Path, what: str = "checkpoint") -> dict:
    """torch.load of a checkpoint file; a truncated or corrupt file is a one-line TrainError."""
    import torch

    path = Path(path)
    try:
        ck = torch.load(path, map_location="cpu", weights_only=False)
    except FileNotFoundError:
        raise TrainError(f"{path}: {what} missing") from None
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile,
            AttributeError, ImportError, IndexError, KeyError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise TrainError(f"{path}: unreadable {what}, truncated or corrupt ({msg}); "
                         f"retrain with {FORCE_HINT}") from None
    if not isinstance(ck, dict):
        raise TrainError(f"{path}: not a ResBin {what} (a {type(ck).__name__}); retrain with {FORCE_HINT}")
    return ck
