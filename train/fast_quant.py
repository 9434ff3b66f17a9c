"""Brevitas' quantizers of a binary `ResBinMLP` in plain torch ops, for `train.fast_model`.

Each function or autograd node computes what Brevitas computes, op for op, from Brevitas' own
state (see `train.fast_model` for the whole picture and the two sign-of-zero differences):
`sign` / `SignSTE` / `binary_weight` (binary activations and weights, straight-through
gradients), `weight_quant_forward` / `_backward` (`Int8WeightPerTensorFixedPoint`: AbsMax
power-of-two scale), `StatsActQuant` / `LearnedActQuant` (the add / requant / head quantizers
during and after Brevitas' statistics steps) and the per-module wrappers `ActQuantizer`,
`WeightQuantizer`.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from brevitas.core.function_wrapper import TensorClamp, TensorClampSte
from brevitas.core.utils import inplace_momentum_update, inplace_tensor_mul
from brevitas.nn import QuantLinear
from brevitas.utils.torch_utils import kthvalue


def sign(x: torch.Tensor) -> torch.Tensor:
    """Brevitas' `binary_sign`: +1 where x >= 0 (also -0.0), else -1 (also NaN); without bool tensors."""
    return torch.nan_to_num(x, nan=-1.0).sign_().add_(0.5).sign_()


def sign_backward(g: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Sign activation's gradient: passed where -1 <= x <= 1 (or x is NaN), +0.0 elsewhere."""
    outside = torch.sign(torch.relu(x.abs() - 1.0)).nan_to_num_(0.0)  # 1 where |x| > 1
    return g * (1.0 - outside) + 0.0  # + 0.0: torch.where's +0.0, not -0.0


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


def _quant_forward(x, s, lo: float, hi: float, ste_clamp: bool):
    """Brevitas' `IntQuant` with zero point 0: clamp(round(x / s), lo, hi) * s. (Brevitas adds and
    subtracts the zero point 0, which only turns a -0.0 into +0.0.) Returns (y, (y1, q, r))."""
    y1 = x / s
    if ste_clamp:  # the backward needs no clamp mask: round and clamp in place
        q = torch.round(y1).clamp_(lo, hi)
        return q * s, (y1, q, q)
    r = torch.round(y1)
    q = torch.clamp(r, lo, hi)
    return q * s, (y1, q, r)


def _quant_backward(g, s, y1, q, r, ste_clamp: bool):
    """The gradients autograd computes through Brevitas' div, round STE, clamp and mul: (of x, of
    the 0-dim scale s). The clamp is `TensorClamp` (no gradient where clamped: activations) or
    `TensorClampSte` (`ste_clamp`, straight through: weights). The scale may be a Python float
    (a power of two, exactly a float32): a 0-dim tensor and a Python scalar give the same products."""
    g_in = g * s
    if not ste_clamp:  # where's pass-through: inside [lo, hi], or NaN
        g_in.mul_(torch.eq(r, q).logical_or_(torch.isnan(r)))
    # mul backward (grad * q) + div backward (-grad * ((x / s) / s)), each summed to s's shape ();
    # sum(-a) == -sum(a) exactly, so the second term is subtracted
    g_s = (g * q).sum_to_size(()) - (y1 / s).mul_(g_in).sum_to_size(())
    return g_in / s, g_s


def _f32(x) -> np.float32:
    return np.float32(x)


def _pow2_scale(v: float, clamp_min: float, threshold: float) -> tuple[float, float]:
    """(p, s) of Brevitas' power-of-two scale: p = 2 ** ceil(v), s = clamp_min(p, m) / t, as the
    float32 values torch computes (also for an infinite or NaN v: a diverged run)."""
    if math.isfinite(v):
        v = min(max(math.ceil(v), -200), 200)  # beyond float32's range either way: 0 or inf
    with np.errstate(over="ignore"):
        p = _f32(2.0 ** v)
    return float(p), float(_f32(max(p, _f32(clamp_min))) / _f32(threshold))


def _pow2_scale_grad(g_s: torch.Tensor, p: float, threshold: float) -> np.float32:
    """Gradient through s = clamp_min(2 ** ceil_ste(v), m) / t to v, with torch's float32 rounding of
    `(g / t) * (p * ln 2)` (pow's backward; the clamp and ceil are straight through)."""
    return _f32(g_s.item()) / _f32(threshold) * (_f32(p) * _f32(_LN2))


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
    aw = torch.abs(w)
    a = torch.max(aw)
    c = torch.clamp_min(a, m1)  # = ScalarSignedClampMinSte on a >= 0
    p, s = _pow2_scale(torch.log2(c).item(), m2, t)  # torch's float32 log2, as Brevitas
    y, (y1, q, r) = _quant_forward(w, s, lo, hi, ste_clamp)
    return y, (w, aw, a, y1, q, r, p, s, c.item(), t, ste_clamp)


def weight_quant_backward(g, saved):
    """The direct gradient plus the one through the scale (ceil STE, log2, pow, max with ties
    sharing it, abs), as autograd sums them for Brevitas."""
    w, aw, a, y1, q, r, p, s, c, t, ste_clamp = saved
    g_w, g_s = _quant_backward(g, s, y1, q, r, ste_clamp)
    g_c = _pow2_scale_grad(g_s, p, t) / (_f32(c) * _f32(_LN2))  # log2's backward
    at_max = torch.nonzero((aw == a).view(-1)).view(-1)  # max's backward: ties share the gradient
    share = float(g_c / _f32(at_max.numel()))
    g_w.view(-1).index_add_(0, at_max, w.view(-1)[at_max].sgn() * share)  # abs's backward: * sgn
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


def learned_act_backward(g, saved):
    """(gradient of x, float32 gradient of the learned `value`) of `LearnedActQuant`."""
    y1, q, r, p, s, t, ste_clamp = saved
    g_x, g_s = _quant_backward(g, s, y1, q, r, ste_clamp)
    return g_x, _pow2_scale_grad(g_s, p, t)


class LearnedActQuant(torch.autograd.Function):
    """Activation quantizer after Brevitas' statistics steps (`ParameterFromRuntimeStatsScaling`):
    s = clamp_min(2 ** ceil_ste(value), m) / t (p = 2 ** ceil(value) and s given as floats), then
    the integer quantization."""

    @staticmethod
    def forward(ctx, x, value, p: float, s: float, t: float, lo: float, hi: float, ste_clamp: bool):
        y, (y1, q, r) = _quant_forward(x, s, lo, hi, ste_clamp)
        ctx.saved = (y1, q, r, p, s, t, ste_clamp)
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
        y, (y1, q, r) = _quant_forward(x, s, lo, hi, ste_clamp)
        ctx.save_for_backward(x, idx, t, s, y1, q, r)
        ctx.ste_clamp = ste_clamp
        ctx.mark_non_differentiable(s, c)
        return y, s, c

    @staticmethod
    def backward(ctx, g, _s, _c):
        x, idx, t, s, y1, q, r = ctx.saved_tensors
        g_x, g_s = _quant_backward(g, s, y1, q, r, ctx.ste_clamp)
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

    def learned_forward(self, x: torch.Tensor):
        """`LearnedActQuant`'s forward without an autograd node: (y, what `learned_act_backward` needs)."""
        p, s = _pow2_scale(self.si.value.item(), self.clamp_min, self.threshold)
        y, (y1, q, r) = _quant_forward(x, s, self.lo, self.hi, self.ste_clamp)
        self.last_scale = s
        return y, (y1, q, r, p, s, self.threshold, self.ste_clamp)


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
