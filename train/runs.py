"""Run-folder layout: one folder per (data set, model), shared by every stage (see docs/design.md)."""
from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def runs_root() -> Path:
    """Root of all run folders: $RESBIN_RUNS, else `runs/` in the repository."""
    return Path(os.environ.get("RESBIN_RUNS", REPO_ROOT / "runs"))


def run_dir(dataset: str, slug: str) -> Path:
    """Folder of one trained model: <runs root>/<dataset>/<slug>.

    `slug` is `ModelSpec.slug` plus, for non-default build options, a `__key-value` suffix
    (see `train.models.options_suffix`). `idx:<dir>` data sets use the directory's name.
    """
    # resolved first: idx:sub/.. names its real folder, never `..` (a run outside the runs root)
    ds = (Path(dataset.split(":", 1)[1]).expanduser().resolve().name or "root") if dataset.startswith("idx:") \
        else dataset
    return runs_root() / ds / slug
