"""Parsers for the published formats: IDX (MNIST family), CIFAR-10 python tarball, Keras .npz.

Hand-written because no installed library reads them without pulling in a framework (torchvision,
keras); every parser validates structure and raises DataError naming the file and what was expected.
"""
from __future__ import annotations

import gzip
import io
import pickle
import tarfile
import zipfile
import zlib
from pathlib import Path

import numpy as np

from train.datasets_fetch import DataError

# ---------------------------------------------------------------- IDX

IDX_UBYTE = 0x08
IDX_IMAGE_DIMS = (3, 4)   # (N, H, W) grey or (N, H, W, C)
IDX_LABEL_DIMS = (1,)


def _open(path: Path):
    with open(path, "rb") as f:
        gz = f.read(2) == b"\x1f\x8b"
    return gzip.open(path, "rb") if gz else open(path, "rb")


def read_idx_header(path: Path, kind: str) -> tuple[int, ...]:
    """Dimensions from an IDX header (first bytes only); kind is "image" or "label"."""
    try:
        with _open(path) as f:
            return _parse_header(path, f, kind)[0]
    except EOFError:
        raise DataError(f"{path.name}: truncated gzip stream (in the IDX header)") from None
    except (OSError, zlib.error) as e:
        raise DataError(f"{path.name}: corrupt gzip stream ({e})") from None


def _parse_header(path: Path, f, kind: str) -> tuple[tuple[int, ...], bytes]:
    allowed = IDX_IMAGE_DIMS if kind == "image" else IDX_LABEL_DIMS
    magic = f.read(4)
    expected = " or ".join(f"0x{0x800 + d:08x}" for d in allowed)
    if len(magic) < 4:
        raise DataError(f"{path.name}: truncated IDX header ({len(magic)} bytes)")
    if magic[:2] != b"\0\0" or magic[2] != IDX_UBYTE or magic[3] not in allowed:
        raise DataError(f"{path.name}: bad magic number 0x{magic.hex()} (expected {expected} for IDX uint8 "
                        f"{kind}s)")
    ndim = magic[3]
    raw = f.read(4 * ndim)
    if len(raw) < 4 * ndim:
        raise DataError(f"{path.name}: truncated IDX header ({4 + len(raw)} of {4 + 4 * ndim} bytes)")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4"))
    if min(dims) == 0:
        raise DataError(f"{path.name}: empty {kind} array (dimensions {_x(dims)})")
    return dims, magic + raw


def _x(dims) -> str:
    return "x".join(str(d) for d in dims)


def read_idx(path: Path, kind: str) -> tuple[np.ndarray, bytes]:
    """(array, header bytes) of an IDX uint8 file, .gz or raw.

    Images come back as (N, H, W) or (N, H, W, C), labels as (N,), writable. The header is returned
    so that digests of the whole decompressed file need no second pass (header + array bytes).
    """
    try:
        with _open(path) as f:
            dims, header = _parse_header(path, f, kind)
            arr = np.empty(dims, dtype=np.uint8)
            buf, got = memoryview(arr.reshape(-1)), 0
            try:
                while got < arr.size and (n := f.readinto(buf[got:])):
                    got += n
                extra = len(f.read(1 << 16))
            except EOFError:
                raise DataError(f"{path.name}: truncated gzip stream (expected {arr.size} bytes of {kind} "
                                f"data)") from None
    except EOFError:
        raise DataError(f"{path.name}: truncated gzip stream (in the IDX header)") from None
    except (OSError, zlib.error) as e:
        raise DataError(f"{path.name}: corrupt gzip stream ({e})") from None
    if got < arr.size:
        raise DataError(f"{path.name}: truncated ({got} bytes of {kind} data, expected {arr.size} "
                        f"for {_x(dims)})")
    if extra:
        raise DataError(f"{path.name}: unexpected bytes after the {kind} data (header says {_x(dims)})")
    return arr, header


# ---------------------------------------------------------------- pickles (CIFAR batches, Keras npz)

class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that rebuilds numpy arrays and plain containers and refuses everything else.

    The official files are pickles; this keeps a tampered file from running code on load.
    """

    ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct"),
               ("numpy._core.multiarray", "_reconstruct"), ("_codecs", "encode")}

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        if module == "numpy.core.multiarray":   # numpy 1 spelling; numpy 2 keeps it only as a shim
            module = "numpy._core.multiarray"
        return super().find_class(module, name)


def _unpickle(data: bytes, label: str, encoding: str = "ASCII"):
    try:
        return _NumpyOnlyUnpickler(io.BytesIO(data), encoding=encoding).load()
    except Exception as e:  # a corrupt pickle can raise nearly anything (UnpicklingError, EOFError, ...)
        raise DataError(f"{label}: not a valid pickle ({type(e).__name__}: {e})") from None


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """All arrays of an .npz archive; object arrays (Keras' ragged sequences) via the safe unpickler."""
    out = {}
    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                if info.filename.endswith(".npy"):
                    out[info.filename[:-4]] = _read_npy(zf.read(info), f"{path.name}:{info.filename}")
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as e:
        raise DataError(f"{path.name}: corrupt or truncated npz archive ({e})") from None
    return out


def _read_npy(data: bytes, label: str) -> np.ndarray:
    fmt = np.lib.format
    buf = io.BytesIO(data)
    try:
        major, _ = fmt.read_magic(buf)
        read_header = fmt.read_array_header_1_0 if major == 1 else fmt.read_array_header_2_0
        _, _, dtype = read_header(buf)
        if not dtype.hasobject:
            buf.seek(0)
            return fmt.read_array(buf, allow_pickle=False)
    except ValueError as e:
        raise DataError(f"{label}: not a valid .npy array ({e})") from None
    arr = _unpickle(data[buf.tell():], label)
    if not isinstance(arr, np.ndarray):
        raise DataError(f"{label}: expected a numpy array, got {type(arr).__name__}")
    return arr


# ---------------------------------------------------------------- CIFAR-10

CIFAR10_DIR = "cifar-10-batches-py"
CIFAR10_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST = "test_batch"


def read_cifar10_tar(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """x_train, y_train, x_test, y_test from cifar-10-python.tar.gz; x as (N, 3, 32, 32) uint8."""
    wanted = {f"{CIFAR10_DIR}/{b}": b for b in (*CIFAR10_TRAIN, CIFAR10_TEST)}
    batches = {}
    try:
        with tarfile.open(path, "r:gz") as tar:
            for member in tar:
                if member.name in wanted and member.isfile():
                    batches[wanted[member.name]] = tar.extractfile(member).read()
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        raise DataError(f"{path.name}: corrupt or truncated archive ({type(e).__name__}: {e})") from None
    missing = [m for m, b in wanted.items() if b not in batches]
    if missing:
        raise DataError(f"{path.name}: no member {missing[0]} (expected the CIFAR-10 python tarball)")
    train = [_cifar_batch(batches[b], f"{path.name}:{b}") for b in CIFAR10_TRAIN]
    x_test, y_test = _cifar_batch(batches[CIFAR10_TEST], f"{path.name}:{CIFAR10_TEST}")
    return (np.concatenate([x for x, _ in train]), np.concatenate([y for _, y in train]), x_test, y_test)


def _cifar_batch(data: bytes, label: str) -> tuple[np.ndarray, np.ndarray]:
    d = _unpickle(data, label, encoding="bytes")
    if not isinstance(d, dict) or b"data" not in d or b"labels" not in d:
        raise DataError(f"{label}: expected a dict with b'data' and b'labels'")
    x, y = d[b"data"], np.asarray(d[b"labels"])
    if not (isinstance(x, np.ndarray) and x.dtype == np.uint8 and x.ndim == 2 and x.shape[1] == 3072):
        shape = getattr(x, "shape", None)
        raise DataError(f"{label}: expected uint8 data of shape (N, 3072), got {getattr(x, 'dtype', type(x))} "
                        f"{shape}")
    if y.shape != (len(x),) or y.dtype.kind not in "iu" or (len(y) and (y.min() < 0 or y.max() > 9)):
        raise DataError(f"{label}: expected {len(x)} labels in 0..9, got {y.dtype} {y.shape}")
    return x.reshape(-1, 3, 32, 32), y.astype(np.int64)
