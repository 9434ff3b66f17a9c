"""Data set files: locate, download from mirrors, verify digests, write the cache atomically."""
from __future__ import annotations

import gzip
import hashlib
import os
import tempfile
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

CHUNK = 1 << 20


class DataError(Exception):
    """A data set file is missing, corrupt or not what was expected (one-line message)."""


@dataclass(frozen=True)
class RemoteFile:
    """One published file: its name in the data directory, mirrors tried in order, its digest."""

    name: str
    urls: tuple[str, ...]
    digest: str               # hex SHA-256 (64 digits), or MD5 (32) where only that is published
    of_content: bool = False  # digest of the gunzipped content (mirrors' gzip bytes differ)

    @property
    def algo(self) -> str:
        return "sha256" if len(self.digest) == 64 else "md5"


def _label(algo: str) -> str:
    return "SHA-256" if algo == "sha256" else "MD5"


def check_digest(label: str, rf: RemoteFile, got: str, extra: str = "") -> None:
    """Raise DataError unless `got` is rf's digest (`label` names the file in the message)."""
    if got != rf.digest:
        what = " of the decompressed data" if rf.of_content else ""
        raise DataError(f"{label}: {_label(rf.algo)} mismatch{what} (expected {rf.digest}, got {got}"
                        f"{extra}); delete the file to download the official one again")


def digest_bytes(*parts, algo: str = "sha256") -> str:
    """Digest of the concatenated buffers (bytes or contiguous numpy arrays)."""
    h = hashlib.new(algo)
    for part in parts:
        h.update(part)
    return h.hexdigest()


def digest_file(path: Path, algo: str = "sha256") -> str:
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def gunzip(path: Path) -> bytes:
    """Whole decompressed content of a .gz file; a truncated or corrupt stream is a DataError."""
    try:
        with gzip.open(path, "rb") as f:
            return f.read()
    except EOFError:
        raise DataError(f"{path.name}: truncated gzip stream") from None
    except (OSError, zlib.error) as e:
        raise DataError(f"{path.name}: corrupt gzip stream ({e})") from None


def verify_file(path: Path, rf: RemoteFile, label: str | None = None) -> None:
    """Check a file (or, for `of_content`, its gunzipped content) against rf's digest."""
    label = label or path.name
    if rf.of_content:
        data = gunzip(path) if _is_gzip(path) else path.read_bytes()
        check_digest(label, rf, digest_bytes(data, algo=rf.algo))
    else:
        check_digest(label, rf, digest_file(path, rf.algo), f"; {path.stat().st_size} bytes")


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(2) == b"\x1f\x8b"


def locate(rf: RemoteFile, directory: Path, download: bool, also: tuple[str, ...] = ()) -> Path:
    """Path of rf (or of an accepted alternative name in `also`) in `directory`.

    A missing file is downloaded when `download` is true. Existing files are returned as they are:
    the caller verifies them while reading (one pass over the data).
    """
    for name in (rf.name, *also):
        if (directory / name).is_file():
            return directory / name
    if not download:
        raise DataError(f"{directory / rf.name}: missing (expected the published file from {rf.urls[0]};"
                        f" allow downloads or run `python -m train.data fetch`)")
    return download_file(rf, directory)


def download_file(rf: RemoteFile, directory: Path) -> Path:
    """Download rf into `directory` via a temporary file: try each mirror, verify, then rename.

    Nothing but the verified file is ever left under its final name; the temporary file is removed
    on any failure (also on KeyboardInterrupt).
    """
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"{directory}: cannot create the data directory ({e.strerror})") from None
    errors = []
    for url in rf.urls:
        try:
            fd, tmp_name = tempfile.mkstemp(dir=directory, prefix=f".{rf.name}.", suffix=".part")
        except OSError as e:
            raise DataError(f"{directory}: cannot write a download there ({e.strerror})") from None
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out:
                _copy_url(url, out, rf.name)
            verify_file(tmp, rf, label=rf.name)
            os.chmod(tmp, 0o644)
            os.replace(tmp, directory / rf.name)
            return directory / rf.name
        except urllib.error.HTTPError as e:
            errors.append(f"{url}: HTTP {e.code}")
        except urllib.error.URLError as e:
            errors.append(f"{url}: {e.reason}")
        except (OSError, ValueError, DataError) as e:
            errors.append(f"{url}: {e}")
        finally:
            tmp.unlink(missing_ok=True)
    raise DataError(f"{rf.name}: download failed ({'; '.join(errors)})")


def _copy_url(url: str, out, desc: str) -> None:
    with urllib.request.urlopen(url, timeout=60) as resp:
        total = resp.headers.get("Content-Length")
        with tqdm(total=int(total) if total else None, unit="B", unit_scale=True, unit_divisor=1024,
                  desc=desc, leave=False) as bar:
            while chunk := resp.read(CHUNK):
                out.write(chunk)
                bar.update(len(chunk))
