"""Run-folder layout: one folder per (data set, model), shared by every stage (see docs/design.md)."""
from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
USER_PREFIXES = ("idx:", "npz:")   # a user's own data set: the part after the colon is a path
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


class RunNameError(ValueError):
    """A data-set name or run folder that would land outside the runs root."""


def runs_root() -> Path:
    """Root of all run folders: $RESBIN_RUNS, else `runs/` in the repository."""
    return Path(os.environ.get("RESBIN_RUNS", REPO_ROOT / "runs"))


def safe_component(text: str, fallback: str = "data") -> str:
    """`text` as one file-name component: [A-Za-z0-9._-] only, no leading dot ('..' cannot be)."""
    s = _UNSAFE.sub("_", text).lstrip(".")
    return s or fallback


def dataset_slug(dataset: str) -> str:
    """The filesystem-safe name of a data set (run folders, board packages, test-set files).

    Built-in names stay as they are; `idx:<dir>` / `npz:<file>` become
    `<kind>-<name>-<8 hex digits of the resolved path>`, so that two folders both named `data/`
    never share a name and no spelling (`idx:sub/..`, `idx:/`) can leave the runs root.
    """
    kind = dataset.split(":", 1)[0]
    if dataset[:4] in USER_PREFIXES:
        p = Path(dataset[4:]).expanduser().resolve()
        name = p.stem if kind == "npz" else p.name
        digest = hashlib.sha256(str(p).encode()).hexdigest()[:8]
        return f"{kind}-{safe_component(name)[:40]}-{digest}"
    return safe_component(dataset)


def inside(root: Path, path: Path) -> Path:
    """`path`, after checking that it resolves to a folder strictly below `root`."""
    r, p = Path(root).resolve(), Path(path).resolve()
    if p == r or r not in p.parents:
        raise RunNameError(f"{path} is not inside {root}")
    return Path(path)


def run_dir(dataset: str, slug: str) -> Path:
    """Folder of one trained model: <runs root>/<dataset slug>/<slug>.

    `slug` is `ModelSpec.slug` plus, for non-default build options or validation split, a
    `__key-value` suffix (see `train.models.options_suffix`, `train.data.val_suffix`).
    """
    return inside(runs_root(), runs_root() / dataset_slug(dataset) / safe_component(slug, "model"))
