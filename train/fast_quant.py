"""Brevitas' quantizers of a binary `ResBinMLP` in plain torch ops and `train.fast_kernels`' fused
loops, for `train.fast_model`.

Each function or autograd node computes what Brevitas computes, op for op, from Brevitas' own
state (see `train.fast_model` for the whole picture and the two sign-of-zero differences):
`sign` / `SignSTE` / `binary_weight` (binary activations and weights, straight-through
gradients), `weight_quant_forward` / `_backward` (`Int8WeightPerTensorFixedPoint`: AbsMax
power-of-two scale), `StatsActQuant` / `LearnedActQuant` (the add / requant / head quantizers
during and after Brevitas' statistics steps) and the per-module wrappers `ActQuantizer`,
`WeightQuantizer`.
"""
from __future__ import annotations

import functools
import math

import numpy as np
import torch

from brevitas.core.function_wrapper import TensorClamp, TensorClampSte
from brevitas.core.utils import inplace_momentum_update, inplace_tensor_mul
from brevitas.nn import QuantLinear
from brevitas.utils.torch_utils import kthvalue

from train.fast_kernels import absmax, add_at_absmax_, quant_backward, quant_forward, sign, sign_backward


class SignSTE(torch.autograd.Function):
    """Sign activation with Brevitas' clipped straight-through gradient (`sign_backward`)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return sign(x)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return sign_backward(g, x)


class BinaryWeightSTE(torch.autograd.Function):
    """Sign of the latent weights with a plain straight-through gradient."""

    @staticmethod
    def forward(ctx, w):
        return sign(w)

    @staticmethod
    def backward(ctx, g):
        return g


def binary_weight(weight: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():  # Brevitas' InplaceTensorClampSte clamps the parameter itself
        weight.clamp_(-1.0, 1.0)
    return BinaryWeightSTE.apply(weight)


def _f32(x) -> np.float32:
    return np.float32(x)


def _pow2_scale(v: float, clamp_min: float, threshold: float) -> tuple[float, float]:
    """(p, s) of Brevitas' power-of-two scale: p = 2 ** ceil(v), s = clamp_min(p, m) / t, as the
    float32 values torch computes (also for an infinite or NaN v: a diverged run)."""
    if math.isfinite(v):
        v = min(max(math.ceil(v), -200), 200)  # beyond float32's range either way: 0 or inf
    return _pow2_scale_of(v, clamp_min, threshold)


@functools.lru_cache(maxsize=1024)
def _pow2_scale_of(v, clamp_min: float, threshold: float) -> tuple[float, float]:
    """`_pow2_scale` of an integer (or infinite or NaN) v; memoized: a run sees a few dozen."""
    with np.errstate(over="ignore"):
        p = _f32(2.0 ** v)
    return float(p), float(_f32(max(p, _f32(clamp_min))) / _f32(threshold))


@functools.lru_cache(maxsize=1024)
def _pow2_grad_factors(p: float, threshold: float) -> tuple[np.float32, np.float32]:
    return _f32(threshold), _f32(p) * _f32(_LN2)


def _pow2_scale_grad(g_s, p: float, threshold: float) -> np.float32:
    """Gradient through s = clamp_min(2 ** ceil_ste(v), m) / t to v, with torch's float32 rounding of
    `(g / t) * (p * ln 2)` (pow's backward; the clamp and ceil are straight through)."""
    t, f = _pow2_grad_factors(p, threshold)
    return _f32(g_s.item()) / t * f


def _ste_clamp(tq) -> bool:
    """Whether Brevitas' integer quantizer `tq` clamps with a straight-through gradient."""
    impl = tq.int_quant.tensor_clamp_impl
    if isinstance(impl, TensorClampSte):
        return True
    if isinstance(impl, TensorClamp):
        return False
    raise ValueError(f"fast path: unsupported clamp {type(impl).__name__} in a quantizer")


def check_zero_point(zero_point: torch.Tensor) -> None:
    if float(zero_point) != 0.0:
        raise ValueError(f"fast path: a quantizer has the zero point {float(zero_point)}; it assumes 0")


_LN2 = 0.6931471805599453  # the constant of torch's log2 / pow backward formulas


def weight_quant_forward(w, t: float, m1: float, m2: float, lo: float, hi: float, ste_clamp: bool):
    """Brevitas' `Int8WeightPerTensorFixedPoint`: scale (`StatsFromParameterScaling`, `AbsMax`, power
    of two) s = clamp_min(2 ** ceil(log2(clamp_min(max|w|, m1))), m2) / t, then the integer
    quantization. Returns (y, what `weight_quant_backward` needs)."""
    a, ties = absmax(w)
    c = torch.clamp_min(a, m1)  # = ScalarSignedClampMinSte on a >= 0
    p, s = _pow2_scale(torch.log2(c).item(), m2, t)  # torch's float32 log2, as Brevitas
    y, saved = quant_forward(w, s, lo, hi, ste_clamp)
    return y, (w, a, ties, saved, p, s, c.item(), t)


def weight_quant_backward(g, saved):
    """The direct gradient plus the one through the scale (ceil STE, log2, pow, max with ties
    sharing it, abs), as autograd sums them for Brevitas."""
    w, a, ties, qsaved, p, s, c, t = saved
    g_w, g_s = quant_backward(g, s, qsaved)
    g_c = _pow2_scale_grad(g_s, p, t) / (_f32(c) * _f32(_LN2))  # log2's backward
    with np.errstate(divide="ignore", invalid="ignore"):  # no ties: a NaN max (a diverged run)
        share = float(g_c / _f32(ties))  # max's backward: ties share the gradient
    add_at_absmax_(g_w, w, a, share)  # abs's backward: * sgn
    return g_w


class WeightQuant(torch.autograd.Function):
    """`weight_quant_forward` / `weight_quant_backward` as one autograd node."""

    @staticmethod
    def forward(ctx, w, t: float, m1: float, m2: float, lo: float, hi: float, ste_clamp: bool):
        y, ctx.saved = weight_quant_forward(w, t, m1, m2, lo, hi, ste_clamp)
        return y

    @staticmethod
    def backward(ctx, g):
        return weight_quant_backward(g, ctx.saved), None, None, None, None, None, None


def learned_act_backward(g, saved, noise=None):
    """(gradient of x, float32 gradient of the learned `value`) of `LearnedActQuant` (of
    `g * noise` if a dropout mask comes after it)."""
    qsaved, p, s, t = saved
    g_x, g_s = quant_backward(g, s, qsaved, noise)
    return g_x, _pow2_scale_grad(g_s, p, t)


class LearnedActQuant(torch.autograd.Function):
    """Activation quantizer after Brevitas' statistics steps (`ParameterFromRuntimeStatsScaling`):
    s = clamp_min(2 ** ceil_ste(value), m) / t (p = 2 ** ceil(value) and s given as floats), then
    the integer quantization."""

    @staticmethod
    def forward(ctx, x, value, p: float, s: float, t: float, lo: float, hi: float, ste_clamp: bool):
        y, saved = quant_forward(x, s, lo, hi, ste_clamp)
        ctx.saved = (saved, p, s, t)
        ctx.like = (value.dtype, value.device, value.shape)
        return y

    @staticmethod
    def backward(ctx, g):
        g_x, g_v = learned_act_backward(g, ctx.saved)
        dtype, device, shape = ctx.like
        g_v = torch.tensor(float(g_v), dtype=dtype, device=device).reshape(shape)
        return g_x, g_v, None, None, None, None, None, None


class StatsActQuant(torch.autograd.Function):
    """Activation quantizer during Brevitas' statistics steps: s = clamp_min(percentile(|x|) + 0 *
    value, m) / t (`AbsPercentile`: kthvalue), then the integer quantization. Returns (y, s, the
    clamped statistic for the running buffer)."""

    @staticmethod
    def forward(ctx, x, value, t, k: int, m: float, lo: float, hi: float, ste_clamp: bool):
        kth, idx = kthvalue(x.abs().view(-1), k)
        c = torch.clamp_min(kth + 0. * value, m)
        s = c / t
        y, (y1, q, m) = quant_forward(x, float(s), lo, hi, ste_clamp)
        ctx.save_for_backward(x, idx, t, s, y1, q, m)
        ctx.mark_non_differentiable(s, c)
        return y, s, c

    @staticmethod
    def backward(ctx, g, _s, _c):
        x, idx, t, s, y1, q, m = ctx.saved_tensors
        g_x, g_s = quant_backward(g, float(s), (y1, q, m))
        g1 = g_s / t
        i = idx.view(1)  # kthvalue's backward puts the gradient at the k-th element, abs's multiplies by sgn
        flat = g_x.view(-1)
        flat[i] = flat[i] + g1.view(1) * x.view(-1)[i].sgn()
        return g_x, g1 * 0., None, None, None, None, None, None


class ActQuantizer:
    """Brevitas' `RescalingIntQuant` + `ParameterFromRuntimeStatsScaling` of one QuantIdentity: the
    statistics go into the module's own `buffer` / `counter`, the learned scale is its `value`."""

    def __init__(self, quant_identity):
        tq = quant_identity.act_quant.fused_activation_quant_proxy.tensor_quant
        self.si = si = tq.scaling_impl
        with torch.no_grad():
            bw = tq.msb_clamp_bit_width_impl()
            self.int_threshold = tq.int_scaling_impl(bw)
            check_zero_point(tq.zero_point_impl.zero_point())
            self.threshold = float(si.restrict_threshold(si.restrict_threshold_pre(self.int_threshold)))
            self.lo = float(tq.int_quant.min_int(bw))
            self.hi = float(tq.int_quant.max_int(bw))
        self.ste_clamp = _ste_clamp(tq)
        self.clamp_min = si.clamp_scaling.clamp_min_ste.min_val
        self.q = si.stats.stats_impl.q
        self.last_scale = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        si = self.si
        if not si.training:
            s = si(x, self.int_threshold)
            y = torch.clamp(torch.round(x / s), self.lo, self.hi) * s
        elif si.counter < si.collect_stats_steps:
            k = int(math.floor(.01 * self.q * x.numel() + 0.5))
            y, s, clamped = StatsActQuant.apply(x, si.value, self.int_threshold, k, self.clamp_min,
                                                self.lo, self.hi, self.ste_clamp)
            new_counter = si.counter + 1
            if si.counter == 0:
                inplace_tensor_mul(si.buffer, clamped)
            else:
                inplace_momentum_update(si.buffer, clamped, si.momentum, si.counter, new_counter)
            si.counter = new_counter
        else:
            if si.counter == si.collect_stats_steps:
                si.init_scale()
            p, s = _pow2_scale(si.value.item(), self.clamp_min, self.threshold)
            y = LearnedActQuant.apply(x, si.value, p, s, self.threshold, self.lo, self.hi, self.ste_clamp)
        self.last_scale = s  # a 0-dim tensor or a float (for the tests)
        return y

    def learned(self) -> bool:
        """Training past the statistics steps: the scale is the learned `value`."""
        return self.si.training and self.si.counter > self.si.collect_stats_steps

    def learned_forward(self, x: torch.Tensor, b: torch.Tensor | None = None):
        """`LearnedActQuant`'s forward (of x, or of x + b) without an autograd node: (y, what
        `learned_act_backward` needs)."""
        p, s = _pow2_scale(self.si.value.item(), self.clamp_min, self.threshold)
        y, saved = quant_forward(x, s, self.lo, self.hi, self.ste_clamp, b)
        self.last_scale = s
        return y, (saved, p, s, self.threshold)


class WeightQuantizer:
    """Brevitas' `Int8WeightPerTensorFixedPoint` of a QuantLinear's weights."""

    def __init__(self, linear: QuantLinear):
        tq = linear.weight_quant.tensor_quant
        self.linear = linear
        ss = tq.scaling_impl.stats_scaling_impl
        with torch.no_grad():
            bw = tq.msb_clamp_bit_width_impl()
            int_threshold = tq.int_scaling_impl(bw)
            self.threshold = float(ss.restrict_clamp_threshold(ss.restrict_threshold_pre(int_threshold)))
            check_zero_point(tq.zero_point_impl.zero_point())
            self.lo = float(tq.int_quant.min_int(bw))
            self.hi = float(tq.int_quant.max_int(bw))
        self.ste_clamp = _ste_clamp(tq)
        self.clamp_min = ss.clamp_scaling.clamp_min_ste.min_val
        self.clamp_min_restricted = ss.restrict_clamp_scaling.clamp_ste.min_val

    def args(self) -> tuple:
        return (self.linear.weight, self.threshold, self.clamp_min, self.clamp_min_restricted,
                self.lo, self.hi, self.ste_clamp)

    def __call__(self) -> torch.Tensor:
        return WeightQuant.apply(*self.args())
