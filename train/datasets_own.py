"""A user's own data set: `idx:<dir>` (the four MNIST-format IDX files) or `npz:<file>` (arrays).

npz keys: x_train, y_train, x_test, y_test (required), x_val + y_val (optional, together),
image_shape (optional, (H, W) or (H, W, C)). Inputs: unsigned integers (or bool) in 0..255, shaped
(N, features) or (N, H, W[, C]) (then image_shape defaults to those dimensions); labels: integers.
Every check raises DataError with one line naming the file, the array and what was expected.

Labels, for both formats: n_classes = largest label + 1, and every class 0..n_classes-1 must occur
among the training labels (train + validation). So a negative label, a label the training set never
has (e.g. one 200 among the classes 0..9 would silently make a 201-class model), a gap in the class
numbers, or a single class are errors; a class missing from the test set is fine (small test sets).
input_max (what the model's input quantizer divides by): 255, or 1 when every input is 0 or 1
(multi-hot, text-like data).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from train.datasets_fetch import DataError
from train.datasets_formats import read_idx, read_idx_header, read_npz

# Standard IDX names (MNIST, Fashion-MNIST, KMNIST, ...); each may also be stored raw (no .gz).
IDX_NAMES = {"train_images": "train-images-idx3-ubyte", "train_labels": "train-labels-idx1-ubyte",
             "test_images": "t10k-images-idx3-ubyte", "test_labels": "t10k-labels-idx1-ubyte"}
NPZ_REQUIRED = ("x_train", "y_train", "x_test", "y_test")
NPZ_OPTIONAL = ("x_val", "y_val", "image_shape")
MAX_INPUT = 255          # the accelerator's input is 8-bit


@dataclass(eq=False)
class OwnSet:
    """Validated arrays of a user's data set (x: uint8 (N, n_inputs), y: int64 (N,))."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    n_classes: int
    input_max: int
    image_shape: tuple[int, ...] | None
    x_val: np.ndarray | None = None   # given in the file (npz); else split off the training set
    y_val: np.ndarray | None = None

    @property
    def n_inputs(self) -> int:
        return int(self.x_train.shape[1])


def user_path(name: str) -> Path:
    """The path of `idx:<dir>` / `npz:<file>` (checked to exist as the right kind)."""
    p = Path(name[4:]).expanduser()
    if name.startswith("idx:") and not p.is_dir():
        raise DataError(f"{p}: not a directory (expected idx:<dir> with the four IDX files)")
    if name.startswith("npz:") and not p.is_file():
        raise DataError(f"{p}: no such file (expected npz:<file.npz> with x_train, y_train, x_test, "
                        f"y_test)")
    return p


# ---------------------------------------------------------------- labels and inputs

def check_labels(where: str, splits: dict[str, np.ndarray], train_keys=("y_train", "y_val")) -> int:
    """n_classes of integer label arrays (see the module docstring for what is an error)."""
    top = -1
    for key, y in splits.items():
        if y.dtype.kind not in "iu" or y.ndim != 1:
            raise DataError(f"{where}: {key} is {y.dtype} {y.shape} (expected a 1-D integer array)")
        if len(y) and y.min() < 0:
            raise DataError(f"{where}: {key} has the negative label {int(y.min())} (expected 0..n_classes-1)")
        top = max(top, int(y.max()) if len(y) else -1)
    n_classes = top + 1
    train = np.concatenate([splits[k].astype(np.int64) for k in train_keys if k in splits])
    seen = np.bincount(train, minlength=n_classes) > 0
    if n_classes < 2 or seen.sum() < 2:
        raise DataError(f"{where}: the training labels hold {int(seen.sum())} class (expected at least 2)")
    if not seen.all():
        gaps = np.flatnonzero(~seen)
        shown = ", ".join(str(int(g)) for g in gaps[:5]) + (", ..." if len(gaps) > 5 else "")
        biggest = max(splits, key=lambda k: int(splits[k].max()) if len(splits[k]) else -1)
        raise DataError(f"{where}: {len(gaps)} of the classes 0..{top} never occur in the training labels "
                        f"({shown}; largest label {top} in {biggest}); expected labels 0..n_classes-1, "
                        f"each present in the training set")
    return n_classes


def _inputs(where: str, key: str, x: np.ndarray) -> np.ndarray:
    """x as uint8 (N, ...), refusing floats, signed integers, objects and values above 255."""
    if x.dtype.kind == "f":
        nan = " and holds NaN" if np.isnan(x).any() else ""
        raise DataError(f"{where}: {key} is {x.dtype}{nan} (expected unsigned integers 0..{MAX_INPUT}: "
                        f"e.g. np.round(x * 255).astype(np.uint8))")
    if x.dtype.kind not in "ub":
        raise DataError(f"{where}: {key} is {x.dtype} (expected unsigned integers 0..{MAX_INPUT} or bool)")
    if x.ndim < 2:
        raise DataError(f"{where}: {key} has shape {x.shape} (expected (N, features) or (N, H, W[, C]))")
    if x.size and int(x.max()) > MAX_INPUT:
        raise DataError(f"{where}: {key} holds values up to {int(x.max())} (the accelerator's input is "
                        f"8-bit: scale them to 0..{MAX_INPUT})")
    return x.astype(np.uint8, copy=False)


def input_max_of(*xs: np.ndarray) -> int:
    """1 when every input is 0 or 1 (multi-hot), else 255."""
    return 1 if all(not x.size or int(x.max()) <= 1 for x in xs) else MAX_INPUT


def _counts(where: str, pairs: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    for split, (x, y) in pairs.items():
        if len(x) != len(y):
            raise DataError(f"{where}: {len(y)} labels y_{split} for {len(x)} inputs x_{split}")
        if len(x) == 0:
            raise DataError(f"{where}: x_{split} is empty (expected at least one example)")


# ---------------------------------------------------------------- IDX

def find_idx(d: Path, role: str) -> Path:
    base = IDX_NAMES[role]
    for name in (base + ".gz", base):
        if (d / name).is_file():
            return d / name
    raise DataError(f"{d / base}[.gz]: missing (expected the four IDX files {', '.join(IDX_NAMES.values())})")


def read_idx_pair(images: Path, labels: Path) -> tuple[np.ndarray, np.ndarray, bytes, bytes]:
    x, x_head = read_idx(images, "image")
    y, y_head = read_idx(labels, "label")
    if len(x) != len(y):
        raise DataError(f"{labels.name}: {len(y)} labels for {len(x)} images in {images.name}")
    return x, y, x_head, y_head


def _idx_shape(d: Path, train: tuple[int, ...], test: tuple[int, ...]) -> tuple[int, ...]:
    if train != test:
        raise DataError(f"{d}: train images are {train}, test images {test} (expected the same)")
    return train if len(train) == 3 else (*train, 1)


def idx_info(d: Path) -> tuple[int, int, int, tuple[int, ...]]:
    """(n_inputs, n_classes, input_max, image_shape) from the IDX headers and the label files."""
    shapes = [read_idx_header(find_idx(d, f"{s}_images"), "image")[1:] for s in ("train", "test")]
    shape = _idx_shape(d, *shapes)
    labels = {f"y_{s}": read_idx(find_idx(d, f"{s}_labels"), "label")[0] for s in ("train", "test")}
    return int(np.prod(shape)), check_labels(str(d), labels), MAX_INPUT, shape


def load_idx(d: Path) -> OwnSet:
    x_tr, y_tr, _, _ = read_idx_pair(find_idx(d, "train_images"), find_idx(d, "train_labels"))
    x_te, y_te, _, _ = read_idx_pair(find_idx(d, "test_images"), find_idx(d, "test_labels"))
    shape = _idx_shape(d, x_tr.shape[1:], x_te.shape[1:])
    n_classes = check_labels(str(d), {"y_train": y_tr, "y_test": y_te})
    return OwnSet(x_tr.reshape(len(x_tr), -1), y_tr.astype(np.int64), x_te.reshape(len(x_te), -1),
                  y_te.astype(np.int64), n_classes, MAX_INPUT, tuple(int(s) for s in shape))


# ---------------------------------------------------------------- npz

def _image_shape(where: str, given, n_inputs: int, x: np.ndarray) -> tuple[int, ...] | None:
    if given is None:
        if x.ndim == 2:
            return None
        shape = tuple(int(s) for s in x.shape[1:])
    else:
        g = np.asarray(given)
        if g.dtype.kind not in "iu" or g.ndim != 1 or len(g) not in (2, 3) or (g < 1).any():
            raise DataError(f"{where}: image_shape is {g.tolist()} (expected (H, W) or (H, W, C), positive "
                            f"integers)")
        shape = tuple(int(s) for s in g)
    shape = shape if len(shape) == 3 else (*shape, 1)
    if len(shape) != 3 or int(np.prod(shape)) != n_inputs:
        raise DataError(f"{where}: image_shape {shape} does not hold the {n_inputs} inputs of x_train "
                        f"(expected (H, W) or (H, W, C) with H*W*C = {n_inputs})")
    return shape


def load_npz(path: Path) -> OwnSet:
    """Read and validate an npz:<file> data set (see the module docstring)."""
    where = path.name
    a = read_npz(path)
    missing = [k for k in NPZ_REQUIRED if k not in a]
    unknown = sorted(set(a) - set(NPZ_REQUIRED) - set(NPZ_OPTIONAL))
    if missing or unknown:
        what = f"lacks {', '.join(missing)}" if missing else f"has unknown arrays {', '.join(unknown)}"
        raise DataError(f"{where}: {what} (expected x_train, y_train, x_test, y_test; optional x_val, "
                        f"y_val, image_shape)")
    if ("x_val" in a) != ("y_val" in a):
        raise DataError(f"{where}: x_val and y_val go together (only {'x_val' if 'x_val' in a else 'y_val'} "
                        f"is there)")
    splits = ("train", "val", "test") if "x_val" in a else ("train", "test")
    for k in ("x_" + s for s in splits):
        if a[k].dtype.hasobject:
            raise DataError(f"{where}: {k} is an object array (expected unsigned integers 0..{MAX_INPUT})")
    xs = {s: _inputs(where, f"x_{s}", a[f"x_{s}"]) for s in splits}
    ys = {f"y_{s}": a[f"y_{s}"] for s in splits}
    _counts(where, {s: (xs[s], ys[f"y_{s}"]) for s in splits})
    n_inputs = int(np.prod(xs["train"].shape[1:]))
    for s in splits:
        if xs[s].shape[1:] != xs["train"].shape[1:]:
            raise DataError(f"{where}: x_{s} examples are {xs[s].shape[1:]}, x_train examples "
                            f"{xs['train'].shape[1:]} (expected the same)")
    shape = _image_shape(where, a.get("image_shape"), n_inputs, xs["train"])
    n_classes = check_labels(where, ys)
    flat = {s: np.ascontiguousarray(x.reshape(len(x), -1)) for s, x in xs.items()}
    y64 = {k: v.astype(np.int64) for k, v in ys.items()}
    return OwnSet(flat["train"], y64["y_train"], flat["test"], y64["y_test"], n_classes,
                  input_max_of(*flat.values()), shape, flat.get("val"), y64.get("y_val"))
