"""THE rule from integer (or float) outputs to labels, used by training, export, simulation and
the board: one output unit (a sigmoid task) is label `output > 0`; otherwise the argmax, the first
maximum on ties (as FINN's TopK / LabelSelect)."""
from __future__ import annotations

import numpy as np

__all__ = ["labels_from_outputs"]


def labels_from_outputs(y) -> np.ndarray:
    """(N, n_out) outputs -> (N,) int64 labels."""
    y = np.asarray(y)
    if y.ndim != 2:
        raise ValueError(f"outputs of shape {y.shape}: expected (N, n_outputs)")
    return (y[:, 0] > 0).astype(np.int64) if y.shape[1] == 1 else np.argmax(y, axis=1).astype(np.int64)
