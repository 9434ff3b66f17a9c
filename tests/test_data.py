"""Data sets: real MNIST from the shared copy, generated CIFAR-10/IMDB/Reuters/IDX files in the
official formats, checksum/corruption errors, atomic downloads from file:// URLs (never the network)."""
from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import json
import os
import pickle
import tarfile
import urllib.request

import numpy as np
import pytest

from train import data
from train.data import DATASETS, DataError, dataset_info, load_dataset, main, multi_hot, word_index
from train.datasets_fetch import RemoteFile, download_file

IDX = data.IDX_NAMES


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any URL other than file:// fails the test."""
    real = urllib.request.urlopen

    def guarded(url, *a, **k):
        u = url if isinstance(url, str) else url.full_url
        assert u.startswith("file://"), f"test tried the network: {u}"
        return real(url, *a, **k)

    monkeypatch.setattr(urllib.request, "urlopen", guarded)


@pytest.fixture(scope="module")
def mnist(mnist_dir):
    return load_dataset("mnist", mnist_dir, download=False)


def _sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _trust(monkeypatch, path, name=None):
    """Make FILES[name] expect this (generated) file's SHA-256 and serve it from a file:// URL."""
    name = name or path.name
    rf = dataclasses.replace(data.FILES[name], digest=_sha256(path), urls=(path.as_uri(),))
    monkeypatch.setitem(data.FILES, name, rf)
    return rf


def _leftovers(d):
    return sorted(p.name for p in d.iterdir()) if d.exists() else []


# ------------------------------------------------------------------ MNIST (real)

def test_mnist_shapes_splits_and_content(mnist, mnist_dir):
    ds = mnist
    assert (ds.x_train.shape, ds.x_val.shape, ds.x_test.shape) == ((50000, 784), (10000, 784), (10000, 784))
    assert ds.y_train.shape == (50000,) and ds.y_val.shape == (10000,) and ds.y_test.shape == (10000,)
    for a in (ds.x_train, ds.x_val, ds.x_test):
        assert a.dtype == np.uint8 and a.flags.writeable
    for a in (ds.y_train, ds.y_val, ds.y_test):
        assert a.dtype == np.int64 and a.min() == 0 and a.max() == 9
    assert (ds.n_classes, ds.n_outputs, ds.input_max, ds.image_shape, ds.n_inputs) == (10, 10, 255, (28, 28, 1), 784)
    # Official facts: first training labels and the test-set label histogram.
    assert ds.y_train[:5].tolist() == [5, 0, 4, 1, 9]
    assert np.bincount(ds.y_test).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    full_x, full_y = ds.full_train()
    assert np.bincount(full_y).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    # Pixel sums measured once on the official files (their MD5s match the published ones).
    assert [int(a.sum(dtype=np.int64)) for a in (ds.x_train, ds.x_val, ds.x_test)] == [1309089051, 258209494, 264923200]
    # Validation = the last 10,000 training examples, in file order.
    all_ = load_dataset("mnist", mnist_dir, download=False, n_val=0)
    assert all_.x_train.shape == (60000, 784) and all_.x_val.shape == (0, 784)
    np.testing.assert_array_equal(all_.x_train[-10000:], ds.x_val)
    np.testing.assert_array_equal(all_.y_train[:50000], ds.y_train)
    np.testing.assert_array_equal(full_x, all_.x_train)
    # Row-major 28x28 flattening: an image's ink is in the middle, not at the borders.
    img = ds.x_train[0].reshape(28, 28)
    assert img[:, :2].sum() == 0 and img[:2].sum() == 0 and img[10:18, 10:18].sum() > 0


def _mnist_copy(mnist_dir, tmp_path, modify=None):
    """A directory with the MNIST files as symlinks, except `modify` = {file name: content}."""
    d = tmp_path / "mnist"
    d.mkdir()
    for base in IDX.values():
        (d / f"{base}.gz").symlink_to(mnist_dir / f"{base}.gz")
    for name, content in (modify or {}).items():
        (d / (name.removesuffix(".gz") + ".gz")).unlink()   # replaces the .gz, raw or not
        (d / name).write_bytes(content)
    return d


def test_mnist_raw_and_recompressed_files_accepted(mnist_dir, mnist, tmp_path):
    labels = gzip.decompress((mnist_dir / f"{IDX['train_labels']}.gz").read_bytes())
    # Raw labels; recompressed gzip bytes (as other mirrors serve them) are verified by content.
    d = _mnist_copy(mnist_dir, tmp_path, {IDX["train_labels"]: labels})
    (d / f"{IDX['test_labels']}.gz").unlink()
    (d / f"{IDX['test_labels']}.gz").write_bytes(
        gzip.compress(gzip.decompress((mnist_dir / f"{IDX['test_labels']}.gz").read_bytes()), 1, mtime=12345))
    ds = load_dataset("mnist", d, download=False)
    np.testing.assert_array_equal(ds.y_train, mnist.y_train)
    np.testing.assert_array_equal(ds.y_test, mnist.y_test)


@pytest.mark.parametrize("case", ["checksum", "truncated_gz", "corrupt_gz", "bad_magic", "truncated_raw",
                                  "count_mismatch", "missing"])
def test_mnist_bad_files(mnist_dir, tmp_path, case):
    gz_labels = (mnist_dir / f"{IDX['train_labels']}.gz").read_bytes()
    labels = bytearray(gzip.decompress(gz_labels))
    name, expect = f"{IDX['train_labels']}.gz", None
    if case == "checksum":
        labels[8] = (labels[8] + 1) % 10           # one wrong label: structurally fine
        content = gzip.compress(bytes(labels))
        expect = "train-labels-idx1-ubyte.gz: SHA-256 mismatch of the decompressed data (expected 65a50cbb"
    elif case == "truncated_gz":
        content, name = (mnist_dir / f"{IDX['train_images']}.gz").read_bytes()[:5_000_000], f"{IDX['train_images']}.gz"
        expect = "train-images-idx3-ubyte.gz: truncated gzip stream (expected 47040000 bytes of image data)"
    elif case == "corrupt_gz":
        b = bytearray(gz_labels)
        b[len(b) // 2: len(b) // 2 + 64] = bytes(64)
        content, expect = bytes(b), "train-labels-idx1-ubyte.gz: corrupt gzip stream"
    elif case == "bad_magic":
        labels[3] = 3
        content, name = bytes(labels), IDX["train_labels"]
        expect = "train-labels-idx1-ubyte: bad magic number 0x00000803 (expected 0x00000801 for IDX uint8 labels)"
    elif case == "truncated_raw":
        content, name = bytes(labels[:-100]), IDX["train_labels"]
        expect = "train-labels-idx1-ubyte: truncated (59900 bytes of label data, expected 60000 for 60000)"
    elif case == "count_mismatch":
        labels[4:8] = (59999).to_bytes(4, "big")
        content = gzip.compress(bytes(labels[:-1]))
        expect = "train-labels-idx1-ubyte.gz: 59999 labels for 60000 images in train-images-idx3-ubyte.gz"
    d = _mnist_copy(mnist_dir, tmp_path, None if case == "missing" else {name: content})
    if case == "missing":
        (d / f"{IDX['test_images']}.gz").unlink()
        expect = f"{d / IDX['test_images']}.gz: missing (expected the published file from https://"
    before = _leftovers(d)
    with pytest.raises(DataError) as e:
        load_dataset("mnist", d, download=False)
    msg = str(e.value)
    assert msg.startswith(expect), msg
    assert "\n" not in msg
    assert _leftovers(d) == before   # nothing deleted or added


# ------------------------------------------------------------------ downloads (file:// only)

def test_mnist_download_from_mirror_into_cache(mnist_dir, mnist, tmp_path, monkeypatch):
    for base in IDX.values():
        rf = data.FILES[f"{base}.gz"]
        # First mirror missing, second one serves the file: the loader falls back.
        urls = ((tmp_path / "nowhere" / rf.name).as_uri(), (mnist_dir / rf.name).as_uri())
        monkeypatch.setitem(data.FILES, rf.name, dataclasses.replace(rf, urls=urls))
    monkeypatch.setenv("RESBIN_DATA", str(tmp_path / "cache"))
    ds = load_dataset("mnist")
    assert _leftovers(tmp_path / "cache" / "mnist") == sorted(f"{b}.gz" for b in IDX.values())
    np.testing.assert_array_equal(ds.x_test, mnist.x_test)


def _file_rf(tmp_path, content: bytes, digest_of: bytes | None = None, name="blob.bin"):
    src = tmp_path / "src" / name
    src.parent.mkdir(exist_ok=True)
    src.write_bytes(content)
    digest = hashlib.sha256(digest_of if digest_of is not None else content).hexdigest()
    return RemoteFile(name, (src.as_uri(),), digest)


def test_download_verifies_and_is_atomic(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    good = _file_rf(tmp_path, os.urandom(3 << 20))
    assert download_file(good, cache) == cache / "blob.bin"
    assert _sha256(cache / "blob.bin") == good.digest and _leftovers(cache) == ["blob.bin"]

    bad = _file_rf(tmp_path, b"corrupted bytes", digest_of=b"the real bytes", name="other.bin")
    with pytest.raises(DataError, match=r"^other.bin: download failed \(file://.*: other.bin: SHA-256 mismatch "
                                        rf"\(expected {bad.digest}, got [0-9a-f]{{64}}; 15 bytes\)"):
        download_file(bad, cache)
    missing = dataclasses.replace(good, name="gone.bin", urls=((tmp_path / "nope").as_uri(),))
    with pytest.raises(DataError, match=r"^gone.bin: download failed \(file://"):
        download_file(missing, cache)
    assert _leftovers(cache) == ["blob.bin"]   # no half-written or temporary files

    class Broken(io.BytesIO):   # a connection that dies after the first chunk
        headers: dict = {"Content-Length": str(5 << 20)}

        def read(self, n=-1):
            if self.tell():
                raise exc
            return super().read(1 << 20)

        def __exit__(self, *a):
            return False

    for exc in (ConnectionResetError("reset by peer"), KeyboardInterrupt()):
        monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: Broken(bytes(5 << 20)))
        with pytest.raises(DataError if isinstance(exc, OSError) else KeyboardInterrupt):
            download_file(dataclasses.replace(good, name="late.bin"), cache)
        assert _leftovers(cache) == ["blob.bin"]


# ------------------------------------------------------------------ CIFAR-10 (generated, official layout)

def _cifar_batch(rng, n, label, protocol=2):
    d = {b"batch_label": label.encode(), b"labels": rng.integers(0, 10, n).tolist(),
         b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
         b"filenames": [f"img_{i}.png".encode() for i in range(n)]}
    return d, pickle.dumps(d, protocol=protocol)


def _cifar_tar(path, batches, extra=()):
    with tarfile.open(path, "w:gz") as tar:
        for name, payload in [*batches, ("batches.meta", pickle.dumps({b"label_names": [b"airplane"]}, 2)), *extra]:
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))


def test_cifar10_generated_tarball(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    sizes = [3, 4, 2, 3, 4, 5]
    dicts, batches = [], []
    for i, n in enumerate(sizes):
        name = f"data_batch_{i + 1}" if i < 5 else "test_batch"
        dct, payload = _cifar_batch(rng, n, name)
        dicts.append(dct)
        batches.append((name, payload))
    # The official batches were pickled by numpy 1 (module numpy.core.multiarray): write one like that.
    name, payload = batches[0]
    assert payload.count(b"numpy._core.multiarray\n") == 1
    batches[0] = (name, payload.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n"))
    d = tmp_path / "cifar"
    d.mkdir()
    tar = d / "cifar-10-python.tar.gz"
    _cifar_tar(tar, batches[::-1])   # member order in the archive must not matter

    with pytest.raises(DataError, match=r"^cifar-10-python.tar.gz: SHA-256 mismatch \(expected 6d958be0"):
        load_dataset("cifar10", d, download=False, n_val=4)
    _trust(monkeypatch, tar)
    ds = load_dataset("cifar10", d, download=False, n_val=4)
    assert (ds.x_train.shape, ds.x_val.shape, ds.x_test.shape) == ((12, 3072), (4, 3072), (5, 3072))
    assert ds.x_train.dtype == np.uint8 and ds.y_train.dtype == np.int64
    assert (ds.n_classes, ds.n_outputs, ds.input_max, ds.image_shape) == (10, 10, 255, (32, 32, 3))
    train_rows = np.concatenate([b[b"data"] for b in dicts[:5]])
    full_x, full_y = ds.full_train()
    np.testing.assert_array_equal(full_y, np.concatenate([b[b"labels"] for b in dicts[:5]]))
    np.testing.assert_array_equal(ds.y_test, dicts[5][b"labels"])
    # HWC flattening: pixel (h, w, c) of image i is byte c*1024 + h*32 + w of its CHW row.
    for i, h, w, c in [(0, 0, 0, 0), (1, 5, 7, 2), (15, 31, 30, 1), (9, 16, 0, 1)]:
        assert full_x[i].reshape(32, 32, 3)[h, w, c] == train_rows[i, c * 1024 + h * 32 + w]
    np.testing.assert_array_equal(ds.x_test.reshape(-1, 32, 32, 3),
                                  dicts[5][b"data"].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))

    # Truncated archive (digest matching, so the parser itself must notice).
    tar.write_bytes(tar.read_bytes()[: tar.stat().st_size // 2])
    _trust(monkeypatch, tar)
    with pytest.raises(DataError, match=r"^cifar-10-python.tar.gz: corrupt or truncated archive"):
        load_dataset("cifar10", d, download=False)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


@pytest.mark.parametrize("case", ["missing_batch", "evil_pickle", "bad_shape"])
def test_cifar10_bad_members(tmp_path, monkeypatch, case):
    rng = np.random.default_rng(1)
    batches = [(f"data_batch_{i}", _cifar_batch(rng, 2, "x")[1]) for i in range(1, 6)]
    batches.append(("test_batch", _cifar_batch(rng, 2, "t")[1]))
    if case == "missing_batch":
        del batches[2]
        expect = "cifar-10-python.tar.gz: no member cifar-10-batches-py/data_batch_3"
    elif case == "evil_pickle":
        batches[0] = ("data_batch_1", pickle.dumps({b"data": _Evil()}, 2))
        expect = "cifar-10-python.tar.gz:data_batch_1: not a valid pickle (UnpicklingError: refusing to load"
    else:
        batches[5] = ("test_batch", pickle.dumps({b"data": np.zeros((2, 1024), np.uint8), b"labels": [0, 1]}, 2))
        expect = "cifar-10-python.tar.gz:test_batch: expected uint8 data of shape (N, 3072), got uint8 (2, 1024)"
    tar = tmp_path / "cifar-10-python.tar.gz"
    _cifar_tar(tar, batches)
    _trust(monkeypatch, tar)
    with pytest.raises(DataError) as e:
        load_dataset("cifar10", tmp_path, download=False, n_val=1)
    assert str(e.value).startswith(expect), str(e.value)


# ------------------------------------------------------------------ IMDB / Reuters (generated, Keras format)

def _keras_reference(xs_train, labels_train, xs_test, labels_test, num_words):
    """Literal transcription of keras.datasets.imdb.load_data(num_words=...) defaults (list code)."""
    rng = np.random.RandomState(113)
    idx = np.arange(len(xs_train))
    rng.shuffle(idx)
    xs_train, labels_train = xs_train[idx], labels_train[idx]
    idx = np.arange(len(xs_test))
    rng.shuffle(idx)
    xs_test, labels_test = xs_test[idx], labels_test[idx]
    xs_train = [[1] + [w + 3 for w in x] for x in xs_train]
    xs_test = [[1] + [w + 3 for w in x] for x in xs_test]
    xs = [[w if (0 <= w < num_words) else 2 for w in x] for x in xs_train + xs_test]
    return xs[: len(xs_train)], labels_train, xs[len(xs_train):], labels_test


def _vectorize(seqs, dim):   # the thesis' vectorize_sequences
    out = np.zeros((len(seqs), dim))
    for i, s in enumerate(seqs):
        out[i, s] = 1.0
    return out


def _ragged(rng, n, vocab, max_len=40):
    arr = np.empty(n, dtype=object)
    for i in range(n):
        arr[i] = rng.integers(0, vocab, rng.integers(0, max_len)).tolist()
    return arr


def test_multi_hot_hand_made():
    seqs = [[0, 5, 5, 9996], [9997, 20000], [], [9996]]
    x = multi_hot(seqs, 10000)
    assert x.dtype == np.uint8 and x.shape == (4, 10000)
    assert np.flatnonzero(x[0]).tolist() == [1, 3, 8, 9999]   # start, 0+3, 5+3, 9996+3
    assert np.flatnonzero(x[1]).tolist() == [1, 2]            # both beyond the vocabulary: OOV
    assert np.flatnonzero(x[2]).tolist() == [1]               # empty review: start only
    assert np.flatnonzero(x[3]).tolist() == [1, 9999]
    with pytest.raises(DataError, match="negative word index -1"):
        multi_hot([[3, -1]], 10)


def test_imdb_generated_npz(tmp_path, monkeypatch):
    rng = np.random.default_rng(2)
    x_tr, x_te = _ragged(rng, 30, 12000), _ragged(rng, 20, 12000)
    x_tr[0] = [0, 9996, 9997, 11999]
    y_tr, y_te = rng.integers(0, 2, 30), rng.integers(0, 2, 20)
    path = tmp_path / "src" / "imdb.npz"
    path.parent.mkdir()
    np.savez(path, x_train=x_tr, y_train=y_tr, x_test=x_te, y_test=y_te)
    _trust(monkeypatch, path)
    cache = tmp_path / "cache"
    ds = load_dataset("imdb", cache, n_val=7)   # downloaded from the file:// "mirror" into the cache
    assert _leftovers(cache) == ["imdb.npz"]
    assert (ds.x_train.shape, ds.x_val.shape, ds.x_test.shape) == ((23, 10000), (7, 10000), (20, 10000))
    assert ds.x_train.dtype == np.uint8 and ds.y_train.dtype == np.int64
    assert (ds.n_classes, ds.n_outputs, ds.input_max, ds.image_shape) == (2, 1, 1, None)
    ref_tr, ref_ytr, ref_te, ref_yte = _keras_reference(x_tr, y_tr, x_te, y_te, 10000)
    full_x, full_y = ds.full_train()
    np.testing.assert_array_equal(full_x, _vectorize(ref_tr, 10000))
    np.testing.assert_array_equal(full_y, ref_ytr)
    np.testing.assert_array_equal(ds.x_val, _vectorize(ref_tr[-7:], 10000))
    np.testing.assert_array_equal(ds.x_test, _vectorize(ref_te, 10000))
    np.testing.assert_array_equal(ds.y_test, ref_yte)
    # The hand-made review 0 sits where Keras' seed-113 shuffle puts it: [0, 9996, 9997, 11999] ->
    # start, 0+3, 9996+3, and OOV for the two words beyond the 10,000-word vocabulary.
    order = np.arange(30)
    np.random.RandomState(113).shuffle(order)
    pos = int(np.flatnonzero(order == 0)[0])
    assert pos != 0 and np.flatnonzero(full_x[pos]).tolist() == [1, 2, 3, 9999]
    assert (ds.x_train[:, 0] == 0).all() and (full_x[:, 1] == 1).all()


def test_reuters_generated_npz(tmp_path, monkeypatch):
    rng = np.random.default_rng(3)
    xs, ys = _ragged(rng, 51, 16000), rng.integers(0, 46, 51)
    path = tmp_path / "reuters.npz"
    np.savez(path, x=xs, y=ys)
    _trust(monkeypatch, path)
    ds = load_dataset("reuters", tmp_path, download=False, n_val=10)
    # Keras: shuffle all 51 with seed 113, then int(51 * 0.8) = 40 train / 11 test.
    assert (ds.x_train.shape, ds.x_val.shape, ds.x_test.shape) == ((30, 15000), (10, 15000), (11, 15000))
    assert (ds.n_classes, ds.n_outputs, ds.input_max) == (46, 46, 1)
    order = np.arange(51)
    np.random.RandomState(113).shuffle(order)
    ref = [[w if w < 15000 else 2 for w in [1] + [v + 3 for v in xs[i]]] for i in order]
    full_x, full_y = ds.full_train()
    np.testing.assert_array_equal(np.concatenate([full_x, ds.x_test]), _vectorize(ref, 15000))
    np.testing.assert_array_equal(np.concatenate([full_y, ds.y_test]), ys[order])
    assert data._INFO["reuters"].n_val == 1000 and int(11228 * (1 - data.REUTERS_TEST_SPLIT)) == 8982


@pytest.mark.parametrize("case", ["missing_key", "bad_labels", "truncated", "evil"])
def test_keras_npz_errors(tmp_path, monkeypatch, case):
    rng = np.random.default_rng(4)
    path = tmp_path / "reuters.npz"
    xs, ys = _ragged(rng, 10, 100), rng.integers(0, 46, 10)
    if case == "missing_key":
        np.savez(path, x=xs, labels=ys)
        expect = "reuters.npz: missing array 'y' (expected x, y)"
    elif case == "bad_labels":
        np.savez(path, x=xs, y=ys + 46)
        expect = "reuters.npz:y: labels 46.."
    elif case == "evil":
        evil = np.empty(1, dtype=object)
        evil[0] = _Evil()
        np.savez(path, x=evil, y=np.zeros(1, np.int64))
        expect = "reuters.npz:x.npy: not a valid pickle (UnpicklingError: refusing to load"
    else:
        np.savez(path, x=xs, y=ys)
        path.write_bytes(path.read_bytes()[:-200])
        expect = "reuters.npz: corrupt or truncated npz archive"
    _trust(monkeypatch, path)
    with pytest.raises(DataError) as e:
        load_dataset("reuters", tmp_path, download=False, n_val=1)
    assert str(e.value).startswith(expect), str(e.value)


def test_word_index_md5(tmp_path, monkeypatch):
    path = tmp_path / "imdb_word_index.json"
    path.write_text(json.dumps({"the": 1, "and": 2}))
    with pytest.raises(DataError, match=r"^imdb_word_index.json: MD5 mismatch \(expected bfafd718"):
        word_index("imdb", tmp_path, download=False)
    rf = data.FILES[path.name]
    md5 = hashlib.md5(path.read_bytes()).hexdigest()
    monkeypatch.setitem(data.FILES, path.name, dataclasses.replace(rf, digest=md5))
    assert word_index("imdb", tmp_path, download=False) == {"the": 1, "and": 2}


# ------------------------------------------------------------------ idx:<dir>

def _write_idx(path, arr, gz):
    arr = np.asarray(arr, dtype=np.uint8)
    raw = bytes([0, 0, 8, arr.ndim]) + np.array(arr.shape, ">u4").tobytes() + arr.tobytes()
    path.write_bytes(gzip.compress(raw) if gz else raw)


def _idx_dir(tmp_path, shape=(5, 7), n=(14, 4), classes=5):
    rng = np.random.default_rng(5)
    d = tmp_path / "myset"
    d.mkdir()
    arrays = {"train_images": rng.integers(0, 256, (n[0], *shape)), "train_labels": np.arange(n[0]) % classes,
              "test_images": rng.integers(0, 256, (n[1], *shape)), "test_labels": np.arange(n[1]) % 3}
    for i, (role, arr) in enumerate(arrays.items()):
        _write_idx(d / (IDX[role] + (".gz" if i % 2 else "")), arr, gz=bool(i % 2))   # labels .gz, images raw
    return d, arrays


def test_idx_dir(tmp_path):
    d, arrays = _idx_dir(tmp_path)
    ds = load_dataset(f"idx:{d}", n_val=4)
    assert (ds.x_train.shape, ds.x_val.shape, ds.x_test.shape) == ((10, 35), (4, 35), (4, 35))
    assert (ds.n_classes, ds.n_outputs, ds.input_max, ds.image_shape) == (5, 5, 255, (5, 7, 1))
    np.testing.assert_array_equal(ds.full_train()[0], arrays["train_images"].reshape(14, 35))
    np.testing.assert_array_equal(ds.y_test, arrays["test_labels"])
    assert dataset_info(f"idx:{d}") == (35, 5, 255, (5, 7, 1))
    assert len(load_dataset(f"idx:{d}").x_val) == 1               # default for small sets: 10 %, >= 1
    assert len(load_dataset(f"idx:{d}", n_val="50%").x_val) == 7
    with pytest.raises(DataError, match="cannot hold out 14 validation examples from 14"):
        load_dataset(f"idx:{d}", n_val=14)


def test_idx_dir_colour_and_binary(tmp_path):
    d, _ = _idx_dir(tmp_path, shape=(4, 4, 3), classes=2)
    with pytest.raises(DataError, match=r"1 of the classes 0..2 never occur in the training labels \(2; "
                                        r"largest label 2 in y_test\)"):
        load_dataset(f"idx:{d}", n_val=2)            # test labels go up to 2, training labels to 1
    _write_idx(d / (IDX["test_labels"] + ".gz"), np.arange(4) % 2, gz=True)
    ds = load_dataset(f"idx:{d}", n_val=2)
    assert ds.image_shape == (4, 4, 3) and ds.x_train.shape == (12, 48)
    assert (ds.n_classes, ds.n_outputs) == (2, 1)   # binary task: one sigmoid unit
    assert dataset_info(f"idx:{d}")[1] == 1


def test_idx_errors_and_info_reads_headers_only(tmp_path):
    d, arrays = _idx_dir(tmp_path)
    img = d / (IDX["train_images"])             # raw (index 0 is not gzipped)
    img.write_bytes(img.read_bytes()[:-1])
    assert dataset_info(f"idx:{d}") == (35, 5, 255, (5, 7, 1))   # headers only: truncation not noticed
    with pytest.raises(DataError, match=r"^train-images-idx3-ubyte: truncated \(489 bytes of image data, "
                                        r"expected 490 for 14x5x7\)$"):
        load_dataset(f"idx:{d}", n_val=2)
    _write_idx(img, arrays["train_images"][:13], gz=False)
    with pytest.raises(DataError, match=r"^train-labels-idx1-ubyte.gz: 14 labels for 13 images"):
        load_dataset(f"idx:{d}", n_val=2)
    _write_idx(img, arrays["train_images"][:, :4], gz=False)
    with pytest.raises(DataError, match=r"train images are \(4, 7\), test images \(5, 7\)"):
        dataset_info(f"idx:{d}")
    with pytest.raises(DataError, match="not a directory"):
        load_dataset(f"idx:{tmp_path / 'nope'}")
    (d / IDX["test_images"]).unlink()
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte\[.gz\]: missing"):
        dataset_info(f"idx:{d}")


# ------------------------------------------------------------------ info, names, CLI

def test_dataset_info_needs_no_files(tmp_path, monkeypatch):
    monkeypatch.setenv("RESBIN_DATA", str(tmp_path / "empty"))
    assert DATASETS == ("mnist", "cifar10", "imdb", "reuters")
    assert [dataset_info(n) for n in DATASETS] == [(784, 10, 255, (28, 28, 1)), (3072, 10, 255, (32, 32, 3)),
                                                   (10000, 1, 1, None), (15000, 46, 1, None)]
    assert not (tmp_path / "empty").exists()
    assert data.default_data_dir("imdb") == tmp_path / "empty" / "imdb"
    with pytest.raises(DataError, match=r"^unknown data set 'svhn' \(expected one of mnist, cifar10, imdb, "):
        dataset_info("svhn")
    with pytest.raises(DataError, match=r"imdb.npz: missing \(expected the published file from https://"):
        load_dataset("imdb", download=False)


def test_cli(mnist_dir, tmp_path, capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "reuters" in out and "15000" in out and "(32, 32, 3)" in out
    assert main(["fetch", "mnist", "--data-dir", str(mnist_dir), "--no-download"]) == 0
    out = capsys.readouterr().out
    assert "(50000, 784)" in out and "(10000, 784)" in out
    assert main(["fetch", "mnist", "--data-dir", str(tmp_path), "--no-download"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "train-images-idx3-ubyte.gz: missing" in err
