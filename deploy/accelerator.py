"""The interface both backends share, and the checks on the accelerator's input (numpy only)."""
from __future__ import annotations

import numpy as np


class AcceleratorInputError(ValueError):
    """Input of the wrong dtype, shape, value range or batch size for the accelerator."""


def positive_int(value, what: str, allow_none: bool = False):
    """`value` as an int >= 1 (or None where allowed), else AcceleratorInputError naming `what`."""
    if value is None and allow_none:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 1:
        raise AcceleratorInputError(f"{what} {value!r}: expected a whole number >= 1")
    return int(value)


class Accelerator:
    """execute(x_uint8) -> labels (N,); execute_int(x_uint8) -> int logits of the last MVAU.

    Subclasses set `n_inputs`, `input_dtype` (a deploy.golden.DType), `batch_size` (None: any)
    and implement `_run(x)` (labels) and `_run_int(x)` on a validated (N, n_inputs) uint8 array.
    """

    backend = "?"
    n_inputs: int
    input_dtype = None
    batch_size: int | None = None
    image_shape: tuple | None = None

    def check_input(self, x) -> np.ndarray:
        """Return x as a C-contiguous (N, n_inputs) uint8 array or raise AcceleratorInputError."""
        if not isinstance(x, np.ndarray):
            raise AcceleratorInputError(f"input must be a numpy uint8 array, got "
                                        f"{type(x).__name__}")
        if x.dtype != np.uint8:
            raise AcceleratorInputError(f"input dtype {x.dtype}, expected uint8 (raw pixels "
                                        f"0..255; the /255 is inside the accelerator)")
        n_in = self.n_inputs
        if x.ndim == 2 and x.shape[1] == n_in:
            flat = x
        elif x.ndim in (3, 4) and int(np.prod(x.shape[1:])) == n_in and (
                self.image_shape is None
                or tuple(x.shape[1:3]) == tuple(self.image_shape[:2])):
            flat = x.reshape(x.shape[0], n_in)
        else:
            want = f"(N, {n_in})"
            if self.image_shape is not None:
                h, w = self.image_shape[:2]
                want += f" or (N, {h}, {w}) or (N, {h}, {w}, {int(n_in // (h * w))})"
            raise AcceleratorInputError(f"input shape {x.shape}, expected {want}")
        if flat.shape[0] == 0:
            raise AcceleratorInputError("input holds no images (N = 0)")
        if self.batch_size is not None and flat.shape[0] > positive_int(self.batch_size, "batch_size"):
            raise AcceleratorInputError(
                f"batch of {flat.shape[0]} images exceeds the allocated buffers "
                f"({self.batch_size} images); split it or create the accelerator with "
                f"batch_size={flat.shape[0]}")
        dt = self.input_dtype
        if dt is not None and (dt.min > 0 or dt.max < 255):
            lo, hi = int(flat.min()), int(flat.max())
            if lo < dt.min or hi > dt.max:
                raise AcceleratorInputError(
                    f"input values span [{lo}, {hi}], the accelerator's input is {dt.name} "
                    f"([{dt.min}, {dt.max}])")
        return np.ascontiguousarray(flat)

    def execute(self, x) -> np.ndarray:
        """Predicted labels, shape (N,) (or (N, K) for a top-K output)."""
        return self._run(self.check_input(x))

    def execute_int(self, x) -> np.ndarray:
        """Integer outputs of the last MVAU (the logits before LabelSelect), (N, n_out)."""
        return self._run_int(self.check_input(x))

    def _run(self, x):  # pragma: no cover - abstract
        raise NotImplementedError

    def _run_int(self, x):  # pragma: no cover - abstract
        raise NotImplementedError
