"""One process at a time per run folder (training) or build folder (hw_build): fcntl.flock.

The lock is an advisory flock on a small file in the folder that holds the holder's pid. The
kernel releases it when the holder exits or is killed, so a stale file never blocks anyone.
"""
from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from pathlib import Path

from train.run_state import TrainError


class FolderBusyError(TrainError):
    """Another live process holds the folder's lock (one line: which folder, which pid, the way out)."""


@contextmanager
def folder_lock(folder: str | Path, name: str, doing: str, way_out: str):
    """Hold `folder/name` exclusively for the `with` block, or raise FolderBusyError at once:
    "another process is <doing> <folder> (pid N); wait for it or <way_out>"."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        try:
            pid = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        finally:
            os.close(fd)
        raise FolderBusyError(f"another process is {doing} {folder} (pid {pid}); wait for it or {way_out}") \
            from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield path
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def training_lock(run: str | Path):
    return folder_lock(run, "train.lock", "training", "use another --run-dir (make RUN=...)")


def build_lock(out: str | Path):
    return folder_lock(out, "build.lock", "building", "use another --out")
