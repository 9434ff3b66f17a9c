"""The board package folder as the board sees it: manifest, golden model, bitfile, test set.

Layout (made on the host by `python -m deploy.package`):

    <package>/manifest.json      build_id, dataset (as given) and data_name (its file-name form),
                                 model, board, target, fit, n_classes, sha256 of every file below
    <package>/golden.npz         what the accelerator computes (sim backend)
    <package>/bitfile/<name>.bit + <name>.hwh   only when a bitstream was built
    <package>/data/<data_name>_test_x.npy (uint8, N x n_inputs), <data_name>_test_y.npy (int64,
                                 labels 0..n_classes-1)
    <package>/deploy/            this code;  <package>/notebooks/*.ipynb;  README.md
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from core.files import sha256
from deploy.golden import GoldenError, read_golden

MANIFEST = "manifest.json"


class PackageError(Exception):
    """The board package folder is incomplete or its files do not belong together."""


def default_package_dir() -> Path:
    """The folder holding this deploy/ code (the package root when run on the board)."""
    return Path(__file__).resolve().parent.parent


@dataclass
class BoardPackage:
    root: Path
    manifest: dict
    _checked: set = field(default_factory=set, repr=False)   # files whose sha256 was checked

    @property
    def build_id(self) -> str:
        return self.manifest["build_id"]

    @property
    def golden_path(self) -> Path:
        return self.root / self.manifest["golden"]

    @property
    def bitfile(self) -> Path | None:
        b = self.manifest.get("bitfile")
        return self.root / b if b else None

    @property
    def data_name(self) -> str:
        """The file-name form of the data set (data/<data_name>_test_x.npy)."""
        return self.manifest.get("data_name") or self.manifest["dataset"]

    def test_set(self, dataset: str | None = None, limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(x uint8 (N, n_inputs), y int64 (N,)) from data/<data_name>_test_{x,y}.npy, checked
        against the manifest's sha256 and labels 0..n_classes-1. `dataset`: the data_name or the
        manifest's original data-set string (default: the package's)."""
        name = self.data_name if dataset in (None, self.manifest["dataset"]) else dataset
        xs, ys = (self.root / "data" / f"{name}_test_{k}.npy" for k in ("x", "y"))
        for p in (xs, ys):
            if not p.is_file():
                have = sorted(q.name for q in (self.root / "data").glob("*_test_x.npy")) \
                    if (self.root / "data").is_dir() else []
                raise PackageError(f"{p}: test set not found (this package has "
                                   f"{', '.join(have) or 'no test sets'})")
        self.check_files([f"data/{p.name}" for p in (xs, ys)])
        try:
            x = np.load(xs, mmap_mode="r", allow_pickle=False)
            y = np.load(ys, allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            raise PackageError(f"{xs.parent}: unreadable test set ({type(e).__name__}: {e})") from None
        if x.dtype != np.uint8 or x.ndim < 2 or y.ndim != 1 or len(x) != len(y) or y.dtype.kind not in "iu":
            raise PackageError(f"{xs}: expected uint8 (N, ...) images and (N,) integer labels, got "
                               f"{x.dtype} {x.shape} and {y.dtype} {y.shape}")
        self._check_labels(ys, y)
        if limit is not None:
            if limit < 1:
                raise PackageError(f"--limit {limit}: expected at least 1 image")
            x, y = x[:limit], y[:limit]
        return np.ascontiguousarray(x), y.astype(np.int64)

    @property
    def n_classes(self) -> int | None:
        n = self.manifest.get("n_classes")
        return int(n) if isinstance(n, int) and n >= 1 else None

    def _check_labels(self, path: Path, y: np.ndarray) -> None:
        if not len(y):
            raise PackageError(f"{path}: no labels (the test set is empty)")
        lo, hi, n = int(y.min()), int(y.max()), self.n_classes
        if lo < 0 or (n is not None and hi >= n):
            want = f"0..{n - 1} (manifest n_classes {n})" if n is not None else ">= 0"
            raise PackageError(f"{path}: labels {lo}..{hi}, expected {want}")

    def check_files(self, names) -> None:
        """Each file's sha256 is the manifest's (once per file); a listed file must exist."""
        sums = self.manifest.get("sha256", {})
        for name in names:
            if name in self._checked or name not in sums:
                continue
            p = self.root / name
            if not p.is_file():
                raise PackageError(f"{p}: missing (listed in {MANIFEST})")
            if sha256(p) != sums[name]:
                raise PackageError(f"{p}: not the file of build {self.build_id} (sha256 differs "
                                   f"from {MANIFEST})")
            self._checked.add(name)

    def accelerator(self, backend: str, batch_size: int | None = None, verify: bool = True):
        """SimAccelerator or PynqAccelerator for this package (checked against the manifest)."""
        if verify:
            self.verify(backend)
        if backend == "sim":
            from deploy.sim import SimAccelerator
            acc = SimAccelerator(self.golden_path, batch_size=batch_size)
        elif backend == "pynq":
            from deploy.pynq_driver import PynqAccelerator, check_bitfile
            check_bitfile(self.bitfile)
            acc = PynqAccelerator(self.bitfile, self.golden_path, batch_size=batch_size or 1000,
                                  build_id=self.build_id)
        else:
            raise PackageError(f"backend {backend!r}: expected 'sim' or 'pynq'")
        if acc.image_shape is None and self.manifest.get("image_shape"):
            acc.image_shape = tuple(self.manifest["image_shape"])  # accept (N, H, W[, C])
        return acc

    def verify(self, backend: str = "sim") -> None:
        """golden.npz, the test sets (and for pynq the bitfile + hwh) are the manifest's files."""
        g = read_golden(self.golden_path)
        if g.build_id != self.build_id:
            raise GoldenError(f"{self.golden_path}: golden model of build {g.build_id}, the "
                              f"package ({self.root / MANIFEST}) is build {self.build_id}")
        # every file of the manifest; the bitfile + hwh only where the board uses them
        skip = {self.manifest.get("bitfile"), self.manifest.get("hwh")} if backend != "pynq" else set()
        self.check_files(sorted(set(self.manifest.get("sha256", {})) - skip))


def open_package(root=None) -> BoardPackage:
    """Read <root>/manifest.json (root: default_package_dir())."""
    root = Path(root) if root is not None else default_package_dir()
    mf = root / MANIFEST
    if not mf.is_file():
        raise PackageError(f"{mf}: not found; pass --package <board package folder> (made by "
                           f"`python -m deploy.package` / `make deploy`)")
    try:
        manifest = json.loads(mf.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PackageError(f"{mf}: not JSON ({e})") from None
    if not isinstance(manifest, dict):
        raise PackageError(f"{mf}: expected a JSON object")
    for key in ("build_id", "golden", "dataset"):
        if key not in manifest:
            raise PackageError(f"{mf}: lacks '{key}'")
    return BoardPackage(root, manifest)
