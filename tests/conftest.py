"""Shared fixtures: real MNIST from ../shared/data/mnist (never the network)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
MNIST_DIR = Path(os.environ.get("RESBIN_MNIST_DIR", REPO_ROOT.parent / "shared" / "data" / "mnist"))


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    if not (MNIST_DIR / "train-images-idx3-ubyte.gz").exists():
        pytest.fail(f"real MNIST expected at {MNIST_DIR} (set RESBIN_MNIST_DIR)")
    return MNIST_DIR


@pytest.fixture
def one_thread():
    """Small models train fastest on one thread; more threads crawl on a shared, loaded machine."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
