"""Data sets as the thesis prepares them: uint8 inputs, int64 labels, train/validation/test.

    from train.data import load_dataset
    ds = load_dataset("mnist", data_dir="../shared/data/mnist")   # ds.x_train: (50000, 784) uint8

Names: "mnist", "cifar10", "imdb", "reuters", and a user's own set (train/datasets_own.py):
"idx:<dir>" (any directory holding the four MNIST-format IDX files, .gz or raw: Fashion-MNIST,
KMNIST, ...) or "npz:<file>" (x_train, y_train, x_test, y_test [, x_val, y_val, image_shape]).
Files come from `data_dir`, else $RESBIN_DATA/<name>, else ~/.cache/resbin/<name>; missing ones are
downloaded (when `download`), every published file is checked against its digest.
Validation = the last `val` training examples: default 10,000 (the thesis; 1,000 for Reuters); for
a user's set 10,000 when it has >= 50,000 training examples, else 10 % of them (at least 1), unless
the npz file holds x_val/y_val. Pixels stay uint8: the /255 belongs to the model's input quantizer.

CLI: `python -m train.data fetch <name> [--data-dir D]`, `python -m train.data info [<name>]`.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from train.datasets_fetch import DataError, RemoteFile, check_digest, digest_bytes, locate, verify_file
from train.datasets_formats import read_cifar10_tar, read_npz
from train.datasets_own import IDX_NAMES, idx_info, load_idx, load_npz, read_idx_pair, user_path

__all__ = ["DATASETS", "DataError", "Dataset", "dataset_info", "default_data_dir", "load_dataset",
           "parse_val", "val_suffix", "default_n_val", "word_index", "main"]

DATASETS = ("mnist", "cifar10", "imdb", "reuters")   # plus "idx:<dir>" and "npz:<file>"

MNIST_MIRRORS = ("https://ossci-datasets.s3.amazonaws.com/mnist/",
                 "https://storage.googleapis.com/cvdf-datasets/mnist/")
KERAS_ORIGIN = "https://storage.googleapis.com/tensorflow/tf-keras-datasets/"
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"


def _mnist_file(role: str, content_sha256: str) -> RemoteFile:
    name = IDX_NAMES[role] + ".gz"
    return RemoteFile(name, tuple(m + name for m in MNIST_MIRRORS), content_sha256, of_content=True)


# Published files and their digests. MNIST: SHA-256 of the decompressed IDX files (their MD5s are the
# official ones; the mirrors' gzip bytes differ). The others: the digests Keras' loaders check
# (keras/src/datasets/*.py); the word indexes are published with an MD5 only.
FILES: dict[str, RemoteFile] = {rf.name: rf for rf in (
    _mnist_file("train_images", "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db"),
    _mnist_file("train_labels", "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5"),
    _mnist_file("test_images", "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7"),
    _mnist_file("test_labels", "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"),
    RemoteFile("cifar-10-python.tar.gz", (CIFAR10_URL,),
               "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce"),
    RemoteFile("imdb.npz", (KERAS_ORIGIN + "imdb.npz",),
               "69664113be75683a8fe16e3ed0ab59fda8886cb3cd7ada244f7d9544e4676b9f"),
    RemoteFile("reuters.npz", (KERAS_ORIGIN + "reuters.npz",),
               "d6586e694ee56d7a4e65172e12b3e987c03096cb01eab99753921ef915959916"),
    RemoteFile("imdb_word_index.json", (KERAS_ORIGIN + "imdb_word_index.json",),
               "bfafd718b763782e994055a2d397834f"),
    RemoteFile("reuters_word_index.json", (KERAS_ORIGIN + "reuters_word_index.json",),
               "4d44cc38712099c9e383dc6e5f11a921"),
)}


@dataclass(frozen=True)
class _Info:
    n_inputs: int
    n_classes: int
    input_max: int
    image_shape: tuple[int, ...] | None
    n_val: int

    @property
    def n_outputs(self) -> int:
        return 1 if self.n_classes == 2 else self.n_classes


# Thesis tables: inputs, classes, validation size. Text: Keras num_words = n_inputs.
_INFO = {
    "mnist": _Info(784, 10, 255, (28, 28, 1), 10_000),
    "cifar10": _Info(3072, 10, 255, (32, 32, 3), 10_000),
    "imdb": _Info(10_000, 2, 1, None, 10_000),
    "reuters": _Info(15_000, 46, 1, None, 1_000),
}
LARGE_TRAIN, LARGE_N_VAL, SMALL_VAL_SHARE = 50_000, 10_000, 0.1   # a user's set (default_n_val)
REUTERS_TEST_SPLIT = 0.2
KERAS_SEED, START_CHAR, OOV_CHAR, INDEX_FROM = 113, 1, 2, 3


@dataclass(eq=False)
class Dataset:
    """One data set split into train (validation held out), validation and test.

    x: uint8 (N, n_inputs), raw values 0..input_max; y: int64 (N,). `full_train()` gives the
    training set with the validation examples put back (thesis order: validation = the tail).
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    n_classes: int
    n_outputs: int               # 1 for a binary task (one sigmoid unit), else n_classes
    input_max: int               # 255 for images, 1 for multi-hot text
    image_shape: tuple[int, ...] | None  # flatten order (H, W, C); None for text

    @property
    def n_inputs(self) -> int:
        return int(self.x_train.shape[1])

    def full_train(self) -> tuple[np.ndarray, np.ndarray]:
        """All training examples (train + validation, in file order)."""
        return np.concatenate([self.x_train, self.x_val]), np.concatenate([self.y_train, self.y_val])

    def summary(self) -> str:
        rows = [f"{'split':<6} {'x':<18} {'y':<10} classes present"]
        for split in ("train", "val", "test"):
            x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
            rows.append(f"{split:<6} {str(x.shape):<18} {str(y.shape):<10} {len(np.unique(y))}")
        rows.append(f"n_inputs={self.n_inputs} n_classes={self.n_classes} n_outputs={self.n_outputs} "
                    f"input_max={self.input_max} image_shape={self.image_shape}")
        return "\n".join(rows)


def default_data_dir(name: str) -> Path:
    """$RESBIN_DATA/<name>, else ~/.cache/resbin/<name>."""
    root = os.environ.get("RESBIN_DATA")
    return (Path(root).expanduser() if root else Path.home() / ".cache" / "resbin") / name


def _check_name(name: str) -> None:
    if name not in _INFO and not name.startswith(("idx:", "npz:")):
        raise DataError(f"unknown data set {name!r} (expected one of {', '.join(DATASETS)}, idx:<dir> or "
                        f"npz:<file>)")


def dataset_info(name: str) -> tuple[int, int, int, tuple[int, ...] | None]:
    """(n_inputs, n_outputs, input_max, image_shape) without loading the data.

    For idx:<dir> this reads the IDX headers and the (small) label files; npz:<file> is loaded.
    """
    _check_name(name)
    if name.startswith("idx:"):
        n_in, n_classes, vmax, shape = idx_info(user_path(name))
    elif name.startswith("npz:"):
        own = load_npz(user_path(name))
        n_in, n_classes, vmax, shape = own.n_inputs, own.n_classes, own.input_max, own.image_shape
    else:
        info = _INFO[name]
        return info.n_inputs, info.n_outputs, info.input_max, info.image_shape
    return n_in, (1 if n_classes == 2 else n_classes), vmax, shape


def parse_val(text, allow_zero: bool = False) -> int | float | None:
    """--val: a count ("5000") or a share of the training examples ("0.1", "10%"); None: default.

    0 (no validation examples) only where `allow_zero` (the Python API; training needs one)."""
    if text is None or isinstance(text, (int, float)):
        v = text
    else:
        t = str(text).strip()
        try:
            v = float(t[:-1]) / 100 if t.endswith("%") else (int(t) if t.isdigit() else float(t))
        except ValueError:
            raise DataError(f"--val {text!r}: expected a count of examples (e.g. 5000) or a share "
                            f"(e.g. 0.1 or 10%)") from None
    if v is None or (isinstance(v, int) and v >= (0 if allow_zero else 1)) or \
            (isinstance(v, float) and 0 < v < 1):
        return v
    raise DataError(f"--val {text}: expected a count >= 1 or a share between 0 and 1 (exclusive)")


def val_suffix(val) -> str:
    """Run-folder suffix of an explicit validation split: "" (default), "__val5000", "__val0p1"."""
    v = parse_val(val, allow_zero=True)
    return "" if v is None else f"__val{v}" if isinstance(v, int) else f"__val{v:g}".replace(".", "p")


def default_n_val(n_train: int) -> int:
    """A user's set: 10,000 when it has >= 50,000 training examples (the thesis' MNIST split),
    else 10 % of them, at least 1."""
    return LARGE_N_VAL if n_train >= LARGE_TRAIN else max(1, round(SMALL_VAL_SHARE * n_train))


def _n_val(name: str, val, n_train: int, default: int | None) -> int:
    v = parse_val(val, allow_zero=True)
    n = (default if default is not None else default_n_val(n_train)) if v is None else \
        v if isinstance(v, int) else max(1, round(v * n_train))
    if not 0 <= n < n_train:
        raise DataError(f"{name}: cannot hold out {n} validation examples from {n_train} training "
                        f"examples (pass --val with a smaller count or share)")
    return n


def load_dataset(name: str, data_dir: str | Path | None = None, download: bool = True,
                 n_val=None) -> Dataset:
    """Load a data set (see the module docstring).

    `n_val` (the `--val` option: a count, a share in (0, 1), or its text) overrides the default
    validation split; `data_dir` is not used for idx:/npz:, whose path is part of the name.
    """
    _check_name(name)
    if name.startswith(("idx:", "npz:")):
        own = (load_idx if name.startswith("idx:") else load_npz)(user_path(name))
        n_classes, vmax, shape = own.n_classes, own.input_max, own.image_shape
        x_tr, y_tr, x_te, y_te = own.x_train, own.y_train, own.x_test, own.y_test
        default = None
        if own.x_val is not None:
            if parse_val(n_val, allow_zero=True) is not None:
                raise DataError(f"{name}: the file holds x_val/y_val, so --val does not apply")
            return Dataset(name, x_tr, y_tr, own.x_val, own.y_val, x_te, y_te, n_classes,
                           1 if n_classes == 2 else n_classes, vmax, shape)
    else:
        d = Path(data_dir).expanduser() if data_dir is not None else default_data_dir(name)
        info = _INFO[name]
        x_tr, y_tr, x_te, y_te = _LOADERS[name](d, download)
        n_classes, vmax, shape, default = info.n_classes, info.input_max, info.image_shape, info.n_val
    cut = len(x_tr) - _n_val(name, n_val, len(x_tr), default)
    return Dataset(name, x_tr[:cut], y_tr[:cut], x_tr[cut:], y_tr[cut:], x_te, y_te,
                   n_classes, 1 if n_classes == 2 else n_classes, vmax, shape)


# ---------------------------------------------------------------- images

def _flat(x: np.ndarray) -> np.ndarray:
    return x.reshape(len(x), -1)


def _load_mnist(d: Path, download: bool):
    paths = {}
    for role, base in IDX_NAMES.items():
        paths[role] = locate(FILES[base + ".gz"], d, download, also=(base,))
    out = []
    for split in ("train", "test"):
        x, y, x_head, y_head = read_idx_pair(paths[f"{split}_images"], paths[f"{split}_labels"])
        for role, head, arr in ((f"{split}_images", x_head, x), (f"{split}_labels", y_head, y)):
            rf = FILES[IDX_NAMES[role] + ".gz"]
            check_digest(paths[role].name, rf, digest_bytes(head, arr, algo=rf.algo))
        out += [_flat(x), y.astype(np.int64)]
    return tuple(out)


def _load_cifar10(d: Path, download: bool):
    rf = FILES["cifar-10-python.tar.gz"]
    path = locate(rf, d, download)
    verify_file(path, rf)
    x_tr, y_tr, x_te, y_te = read_cifar10_tar(path)
    # The batches store each image as 3 planes (CHW); flatten in HWC order so image_shape=(32, 32, 3).
    return (_flat(x_tr.transpose(0, 2, 3, 1)), y_tr, _flat(x_te.transpose(0, 2, 3, 1)), y_te)


# ---------------------------------------------------------------- text (Keras tokenized sets)

def multi_hot(seqs, num_words: int, label: str = "sequences") -> np.ndarray:
    """Multi-hot uint8 (N, num_words) of Keras `load_data(num_words=...)` sequences.

    Each raw sequence s becomes [START_CHAR] + [w + INDEX_FROM for w in s], indices >= num_words
    become OOV_CHAR (keras.datasets.{imdb,reuters}.load_data, skip_top=0), then x[i, seq] = 1 as the
    thesis' `vectorize_sequences`.
    """
    lengths = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))
    flat = np.fromiter(itertools.chain.from_iterable(seqs), dtype=np.int64, count=int(lengths.sum()))
    if flat.size and flat.min() < 0:
        raise DataError(f"{label}: negative word index {flat.min()} (expected indices >= 0)")
    words = flat + INDEX_FROM
    words[words >= num_words] = OOV_CHAR
    x = np.zeros((len(seqs), num_words), dtype=np.uint8)
    x[np.repeat(np.arange(len(seqs)), lengths), words] = 1
    x[:, START_CHAR] = 1
    return x


def _keras_arrays(path: Path, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    arrays = read_npz(path)
    for k in keys:
        if k not in arrays:
            raise DataError(f"{path.name}: missing array {k!r} (expected {', '.join(keys)})")
    for k in keys:
        if k.startswith("x") and arrays[k].ndim != 1:
            raise DataError(f"{path.name}: {k} has shape {arrays[k].shape} (expected a 1-D array of sequences)")
        if k.startswith("y"):
            xk = "x" + k[1:]
            if arrays[k].shape != arrays[xk].shape or arrays[k].dtype.kind not in "iu":
                raise DataError(f"{path.name}: {k} is {arrays[k].dtype} {arrays[k].shape} (expected "
                                f"{len(arrays[xk])} integer labels)")
    return arrays


def _labels(y: np.ndarray, n_classes: int, label: str) -> np.ndarray:
    y = y.astype(np.int64)
    if len(y) and (y.min() < 0 or y.max() >= n_classes):
        raise DataError(f"{label}: labels {y.min()}..{y.max()} (expected 0..{n_classes - 1})")
    return y


def _load_imdb(d: Path, download: bool):
    rf = FILES["imdb.npz"]
    path = locate(rf, d, download)
    verify_file(path, rf)
    a = _keras_arrays(path, ("x_train", "y_train", "x_test", "y_test"))
    rng = np.random.RandomState(KERAS_SEED)   # Keras shuffles train, then test, with one generator
    out = []
    for split in ("train", "test"):
        order = np.arange(len(a[f"x_{split}"]))
        rng.shuffle(order)
        x = multi_hot(a[f"x_{split}"][order], _INFO["imdb"].n_inputs, f"{path.name}:x_{split}")
        out += [x, _labels(a[f"y_{split}"][order], 2, f"{path.name}:y_{split}")]
    return tuple(out)


def _load_reuters(d: Path, download: bool):
    rf = FILES["reuters.npz"]
    path = locate(rf, d, download)
    verify_file(path, rf)
    a = _keras_arrays(path, ("x", "y"))
    order = np.arange(len(a["x"]))
    np.random.RandomState(KERAS_SEED).shuffle(order)
    xs, ys = a["x"][order], a["y"][order]
    cut = int(len(xs) * (1 - REUTERS_TEST_SPLIT))   # Keras' expression: 8,982 / 2,246
    x = multi_hot(xs, _INFO["reuters"].n_inputs, f"{path.name}:x")
    y = _labels(ys, _INFO["reuters"].n_classes, f"{path.name}:y")
    return x[:cut], y[:cut], x[cut:], y[cut:]


_LOADERS = {"mnist": _load_mnist, "cifar10": _load_cifar10, "imdb": _load_imdb, "reuters": _load_reuters}


def word_index(name: str, data_dir: str | Path | None = None, download: bool = True) -> dict[str, int]:
    """Keras' word -> rank map of "imdb" or "reuters" (feature column = rank + 3)."""
    if name not in ("imdb", "reuters"):
        raise DataError(f"no word index for {name!r} (expected imdb or reuters)")
    rf = FILES[f"{name}_word_index.json"]
    d = Path(data_dir).expanduser() if data_dir is not None else default_data_dir(name)
    path = locate(rf, d, download)
    verify_file(path, rf)
    try:
        return json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise DataError(f"{path.name}: not valid JSON ({e})") from None


# ---------------------------------------------------------------- CLI

def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m train.data", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fetch", help="download (if missing) and verify a data set, print its shapes")
    f.add_argument("name", help=f"{' | '.join(DATASETS)} | idx:<dir> | npz:<file>")
    f.add_argument("--data-dir", help="directory holding the files (default $RESBIN_DATA/<name> or "
                                      "~/.cache/resbin/<name>)")
    f.add_argument("--no-download", action="store_true", help="fail instead of downloading missing files")
    i = sub.add_parser("info", help="sizes of a data set (or of all) without loading it")
    i.add_argument("name", nargs="?", help=f"{' | '.join(DATASETS)} | idx:<dir> | npz:<file>; default: all")
    args = p.parse_args(argv)
    try:
        if args.cmd == "info":
            print(f"{'data set':<12} {'n_inputs':>8} {'n_outputs':>9} {'input_max':>9}  image_shape")
            for name in [args.name] if args.name else DATASETS:
                n_in, n_out, vmax, shape = dataset_info(name)
                print(f"{name:<12} {n_in:>8} {n_out:>9} {vmax:>9}  {shape}")
        else:
            t0 = time.perf_counter()
            ds = load_dataset(args.name, args.data_dir, download=not args.no_download)
            if args.name in ("imdb", "reuters"):
                word_index(args.name, args.data_dir, download=not args.no_download)
            where = args.name[4:] if args.name.startswith(("idx:", "npz:")) else args.data_dir or default_data_dir(args.name)
            print(f"{args.name}: verified and loaded from {where} in {time.perf_counter() - t0:.1f} s")
            print(ds.summary())
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
