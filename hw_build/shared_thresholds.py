"""Per-channel requantizers as an exact integer affine map per channel and ONE shared threshold
set (`SharedRequantThresholds`, used by `hw_build.steps.step_resbin_shared_thresholds`, which
the build checks bit-exactly against the QONNX model)."""
from __future__ import annotations

import numpy as np

from hw_build.finn_env import ensure_finn

ensure_finn()

from qonnx.core.modelwrapper import ModelWrapper  # noqa: E402
from qonnx.transformation.base import Transformation  # noqa: E402

from hw_build.rewrites import int_type_for  # noqa: E402

__all__ = ["SharedRequantThresholds", "affine_for"]

_EXACT = 2 ** 24     # FINN's Python execution computes in float32: every value stays below 2^24


def _acc_range(model: ModelWrapper, tensor: str) -> tuple[int, int] | None:
    """The integer range [lo, hi] `tensor` can take: an XNOR popcount (0..MW), an integer
    MatMul's accumulator (per-column bound from the weights), else its datatype's range."""
    prod = model.find_producer(tensor)
    if prod is not None and prod.op_type == "XnorPopcountMatMul":
        return 0, int(model.get_tensor_shape(prod.input[0])[-1])
    dt = model.get_tensor_datatype(tensor)
    if prod is not None and prod.op_type == "MatMul":
        w = model.get_initializer(prod.input[1])
        idt = model.get_tensor_datatype(prod.input[0])
        if w is not None and idt.is_integer():
            w = np.asarray(w, dtype=np.float64)
            a, b = w * idt.min(), w * idt.max()
            return int(np.minimum(a, b).sum(0).min()), int(np.maximum(a, b).sum(0).max())
    if dt.is_integer() and dt.bitwidth() <= 32:
        return int(dt.min()), int(dt.max())
    return None


def affine_for(T: np.ndarray, lo: int, hi: int, D: int):
    """Integer A >= 0, B per channel with #{j : D*j <= A*x + B} = #{j : T[c, j-1] <= x} for every
    integer x in [lo, hi] (T sorted per row), or None if some channel has none at this D."""
    C, S = T.shape
    j = np.arange(1, S + 1, dtype=np.float64)
    A = np.zeros(C, dtype=np.int64)
    B = np.zeros(C, dtype=np.int64)
    for c in range(C):
        t = T[c]
        inner = (t > lo) & (t <= hi)
        # lower bounds B >= cl - A*tl, upper bounds B <= du - A*su (see the class docstring)
        cl = np.concatenate([D * j[inner], D * j[t <= lo]])
        tl = np.concatenate([t[inner], np.full(int((t <= lo).sum()), lo)])
        du = np.concatenate([D * j[inner] - 1, D * j[t > hi] - 1])
        su = np.concatenate([t[inner] - 1, np.full(int((t > hi).sum()), hi)])
        if len(cl) and len(du):
            num = du[None, :] - cl[:, None]
            den = su[None, :] - tl[:, None]
            if np.any((den == 0) & (num < 0)):
                return None
            a_min = max(0.0, np.max(num[den < 0] / den[den < 0], initial=0.0))
            a_max = np.min(num[den > 0] / den[den > 0], initial=np.inf)
            a = int(np.ceil(a_min))
            if a > a_max:
                return None
        else:
            a = 0
        lower = np.max(cl - a * tl, initial=-np.inf)
        upper = np.min(du - a * su, initial=np.inf)
        b = lower if np.isfinite(lower) else (upper if np.isfinite(upper) else 0)
        if not lower <= b <= upper:
            return None
        A[c], B[c] = a, int(b)
    return A, B


class SharedRequantThresholds(Transformation):
    """A per-channel requantizer (MultiThreshold with C > 1 channels of S >= 2 thresholds on an
    integer input) as an integer per-channel affine map and ONE shared threshold set:

        #{j : T[c, j] <= x}  ==  #{j : D*j <= A[c]*x + B[c]}   for every reachable integer x,

    with D = 2^k, found exactly from the breakpoints: with A > 0 both sides are monotone step
    functions, equal iff A*(T[c, j] - 1) + B < D*j <= A*T[c, j] + B for every threshold inside the
    input range (and the obvious one-sided bounds for those outside), which is a small
    two-variable integer program per channel (A the smallest feasible, B from its interval).
    FINN builds the Mul/Add as ElementwiseMul/ElementwiseAdd with constant operands and the
    shared thresholds as one (1, S) Thresholding set: S threshold words instead of C*S. The
    residual requantizers of ResBin models fit this (the batch-norm + quantizer chain is affine
    before rounding); a layer for which no D keeps every value below 2^24 (exact in FINN's
    float32 Python execution) is left as it is."""

    def __init__(self, min_channels: int = 2):
        super().__init__()
        self.min_channels = min_channels
        self.report: list[dict] = []

    def apply(self, model: ModelWrapper):
        from onnx import helper

        for mt in [n for n in model.graph.node if n.op_type == "MultiThreshold"]:
            T = model.get_initializer(mt.input[1])
            if T is None or T.ndim != 2 or T.shape[0] < self.min_channels or T.shape[1] < 2:
                continue
            rng = _acc_range(model, mt.input[0])
            if rng is None:
                continue
            lo, hi = rng
            T = np.sort(np.ceil(np.asarray(T, dtype=np.float64)), axis=1)  # x >= t <=> x >= ceil(t)
            found = None
            D = 1
            while D * T.shape[1] < _EXACT:
                found = affine_for(T, lo, hi, D)
                if found is not None:
                    break
                D *= 2
            if found is None:
                self.report.append({"node": mt.name, "rewritten": False, "why": "no exact D"})
                continue
            A, B = found
            vlo = int(np.minimum(A * lo, A * hi).min() + B.min())
            vhi = int(np.maximum(A * lo, A * hi).max() + B.max())
            if max(abs(vlo), abs(vhi)) >= _EXACT:
                self.report.append({"node": mt.name, "rewritten": False, "why": "beyond 2^24"})
                continue
            shape = model.get_tensor_shape(mt.input[0])
            names = {k: model.make_new_valueinfo_name() for k in ("a", "b", "ax", "axb", "t")}
            model.set_initializer(names["a"], A.astype(np.float32))
            model.set_initializer(names["b"], B.astype(np.float32))
            for key, (l, h) in (("ax", (int(np.minimum(A * lo, A * hi).min()),
                                        int(np.maximum(A * lo, A * hi).max()))), ("axb", (vlo, vhi))):
                model.set_tensor_shape(names[key], shape)
                model.set_tensor_datatype(names[key], int_type_for(l, h))
            model.set_tensor_datatype(names["a"], int_type_for(int(A.min()), int(A.max())))
            model.set_tensor_datatype(names["b"], int_type_for(int(B.min()), int(B.max())))
            shared = (D * np.arange(1, T.shape[1] + 1, dtype=np.float64)).reshape(1, -1)
            model.set_initializer(names["t"], shared.astype(np.float32))
            at = list(model.graph.node).index(mt)
            model.graph.node.insert(at, helper.make_node("Add", [names["ax"], names["b"]], [names["axb"]],
                                                         name=f"{mt.name}_shift"))
            model.graph.node.insert(at, helper.make_node("Mul", [mt.input[0], names["a"]], [names["ax"]],
                                                         name=f"{mt.name}_scale"))
            self.report.append({"node": mt.name, "rewritten": True, "channels": int(T.shape[0]),
                                "steps": int(T.shape[1]), "D": D, "input_range": [lo, hi]})
            mt.input[0], mt.input[1] = names["axb"], names["t"]
            return model, True
        return model, False
