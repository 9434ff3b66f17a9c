"""The board package folder as the board sees it: manifest, golden model, bitfile, test set.

Layout (made on the host by `python -m deploy.package`):

    <package>/manifest.json      build_id, dataset, model, sha256 of every file below
    <package>/golden.npz         what the accelerator computes (sim backend)
    <package>/bitfile/<name>.bit + <name>.hwh   only when a bitstream was built
    <package>/data/<dataset>_test_x.npy (uint8, N x n_inputs), <dataset>_test_y.npy (int64)
    <package>/deploy/            this code;  <package>/notebooks/*.ipynb;  README.md
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deploy.golden import GoldenError, read_golden

MANIFEST = "manifest.json"


class PackageError(Exception):
    """The board package folder is incomplete or its files do not belong together."""


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def default_package_dir() -> Path:
    """The folder holding this deploy/ code (the package root when run on the board)."""
    return Path(__file__).resolve().parent.parent


@dataclass
class BoardPackage:
    root: Path
    manifest: dict

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

    def test_set(self, dataset: str, limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(x uint8 (N, n_inputs), y int64 (N,)) from data/<dataset>_test_{x,y}.npy."""
        xs = self.root / "data" / f"{dataset}_test_x.npy"
        ys = self.root / "data" / f"{dataset}_test_y.npy"
        for p in (xs, ys):
            if not p.is_file():
                have = sorted(q.name for q in (self.root / "data").glob("*_test_x.npy")) \
                    if (self.root / "data").is_dir() else []
                raise PackageError(f"{p}: test set not found (this package has "
                                   f"{', '.join(have) or 'no test sets'})")
        try:
            x = np.load(xs, mmap_mode="r", allow_pickle=False)
            y = np.load(ys, allow_pickle=False)
        except ValueError as e:
            raise PackageError(f"{xs.parent}: unreadable test set ({e})") from None
        if x.dtype != np.uint8 or x.ndim < 2 or y.ndim != 1 or len(x) != len(y):
            raise PackageError(f"{xs}: expected uint8 (N, ...) images and (N,) labels, got "
                               f"{x.dtype} {x.shape} and {y.shape}")
        if limit is not None:
            x, y = x[:limit], y[:limit]
        return np.ascontiguousarray(x), y.astype(np.int64)

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
        """golden.npz (and for pynq the bitfile + hwh) are the files of the manifest's build."""
        g = read_golden(self.golden_path)
        if g.build_id != self.build_id:
            raise GoldenError(f"{self.golden_path}: golden model of build {g.build_id}, the "
                              f"package ({self.root / MANIFEST}) is build {self.build_id}")
        names = [self.manifest["golden"]]
        if backend == "pynq" and self.bitfile is not None:
            names += [self.manifest["bitfile"], self.manifest["hwh"]]
        for name in names:
            want = self.manifest.get("sha256", {}).get(name)
            p = self.root / name
            if want and p.is_file() and sha256(p) != want:
                raise PackageError(f"{p}: not the file of build {self.build_id} (sha256 differs "
                                   f"from {MANIFEST})")


def open_package(root=None) -> BoardPackage:
    """Read <root>/manifest.json (root: default_package_dir())."""
    root = Path(root) if root is not None else default_package_dir()
    mf = root / MANIFEST
    if not mf.is_file():
        raise PackageError(f"{mf}: not found; pass --package <board package folder> (made by "
                           f"`python -m deploy.package` / `make deploy`)")
    try:
        manifest = json.loads(mf.read_text())
    except json.JSONDecodeError as e:
        raise PackageError(f"{mf}: not JSON ({e})") from None
    for key in ("build_id", "golden", "dataset"):
        if key not in manifest:
            raise PackageError(f"{mf}: lacks '{key}'")
    return BoardPackage(root, manifest)
