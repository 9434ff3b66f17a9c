"""Fast training path of a binary `ResBinMLP`: Brevitas' arithmetic without Brevitas' overhead.

A small model's Brevitas step is mostly overhead (proxies, QuantTensor wrappers, ~160 nested
module calls, scalar scale graphs of a dozen nodes, `torch.where` clamps, which this CPU build
runs ~20x slower than arithmetic). `FastPath(model)` computes the SAME model's logits from the
model's own parameters, quantizer state and modules, in plain torch ops:

- input quantizer: clamp(round(x / s), 0, 2^b - 1) * s (Brevitas' `IntQuant`), with the constant
  scale s read once from Brevitas' quantizer; no gradient needed;
- binary weights: in-place clamp of the latent weights to [-1, 1], sign (0 -> +1, NaN -> -1),
  straight-through gradient (Brevitas: `InplaceTensorClampSte`, `binary_sign_ste`, scale 1);
- sign activations: the same sign, gradient zeroed outside -1 <= x <= 1 (Brevitas: `TensorClamp`
  to [-1, 1] then `binary_sign_ste`);
- each scaled quantizer is ONE autograd node computing Brevitas' scale with the op sequence of its
  scaling modules, from Brevitas' own state, then the integer quantization; its backward is the
  gradient autograd computes through Brevitas' ops (div, round STE, clamp, mul, ceil STE, log2,
  pow, max/kthvalue, abs), written out, without `torch.where` (slow on this CPU build):
  `WeightQuant` (Q/P shortcut and output weights: `StatsFromParameterScaling` + `AbsMax`),
  `StatsActQuant` and `LearnedActQuant` (add / requant / head quantizers:
  `ParameterFromRuntimeStatsScaling`, percentile statistics for `collect_stats_steps` training
  calls, accumulated in the module's own `buffer` and `counter`, then the learned `value`). In
  eval mode the Brevitas scaling module itself gives the scale;
- linear layers, batch-norm, pooling and dropout run the model's modules in Brevitas' order, so
  dropout draws the same random numbers.

Outputs, gradients, parameters after Adam steps and the quantizers' statistics are Brevitas' own,
compared with torch.equal (tests/test_fast_train.py). Two differences are in the sign of zeros
only: Brevitas adds and subtracts the zero point 0 around the rounding (the fast path does not:
Brevitas turns a -0.0 there into +0.0), and where a clamp blocks a gradient Brevitas' `where`
writes +0.0 and the fast path's mask product g * 0 may write -0.0. torch.equal does not tell
them apart, and no non-zero value can change because of them (they never divide anything). The parameters are the
model's, so export and checkpoints are as before (`train.trainer.training_forward`).
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from brevitas.core.function_wrapper import TensorClamp, TensorClampSte
from brevitas.core.utils import inplace_momentum_update, inplace_tensor_mul
from brevitas.nn import QuantLinear
from brevitas.utils.torch_utils import kthvalue


def _sign(x: torch.Tensor) -> torch.Tensor:
    """Brevitas' `binary_sign`: +1 where x >= 0 (also -0.0), else -1 (also NaN); without bool tensors."""
    return torch.nan_to_num(x, nan=-1.0).sign_().add_(0.5).sign_()


class SignSTE(torch.autograd.Function):
    """Sign activation; gradient passed where -1 <= x <= 1 (or x is NaN), +0.0 elsewhere."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return _sign(x)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        outside = torch.sign(torch.relu(x.abs() - 1.0)).nan_to_num_(0.0)  # 1 where |x| > 1
        return g * (1.0 - outside) + 0.0  # + 0.0: torch.where's +0.0, not -0.0


class BinaryWeightSTE(torch.autograd.Function):
    """Sign of the latent weights with a plain straight-through gradient."""

    @staticmethod
    def forward(ctx, w):
        return _sign(w)

    @staticmethod
    def backward(ctx, g):
        return g


def binary_weight(weight: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():  # Brevitas' InplaceTensorClampSte clamps the parameter itself
        weight.clamp_(-1.0, 1.0)
    return BinaryWeightSTE.apply(weight)


def _quant_forward(ctx, x, s, lo: float, hi: float, ste_clamp: bool):
    """Brevitas' `IntQuant` with zero point 0: clamp(round(x / s), lo, hi) * s. (Brevitas adds and
    subtracts the zero point 0, which only turns a -0.0 into +0.0.)"""
    y1 = x / s
    ctx.ste_clamp = ste_clamp
    if ste_clamp:  # the backward needs no clamp mask: round and clamp in place
        q = torch.round(y1).clamp_(lo, hi)
        return q * s, (y1, q, q)
    r = torch.round(y1)
    q = torch.clamp(r, lo, hi)
    return q * s, (y1, q, r)


def _quant_backward(ctx, g, s, y1, q, r):
    """The gradients autograd computes through Brevitas' div, round STE, clamp and mul: (of x, of
    the 0-dim scale s). The clamp is `TensorClamp` (no gradient where clamped: activations) or
    `TensorClampSte` (`ctx.ste_clamp`, straight through: weights). The scale may be a Python float
    (a power of two, exactly a float32): a 0-dim tensor and a Python scalar give the same products."""
    g_in = g * s
    if not ctx.ste_clamp:  # where's pass-through: inside [lo, hi], or NaN
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


def _zero_point_is_zero(zero_point: torch.Tensor) -> None:
    if float(zero_point) != 0.0:
        raise ValueError(f"fast path: a quantizer has the zero point {float(zero_point)}; it assumes 0")


_LN2 = 0.6931471805599453  # the constant of torch's log2 / pow backward formulas


class WeightQuant(torch.autograd.Function):
    """Brevitas' `Int8WeightPerTensorFixedPoint` in one node: scale (`StatsFromParameterScaling`,
    `AbsMax`, power of two) s = clamp_min(2 ** ceil(log2(clamp_min(max|w|, m1))), m2) / t, then
    the integer quantization; backward: the direct gradient plus the one through the scale (ceil
    STE, log2, pow, max with ties sharing it, abs), as autograd sums them for Brevitas."""

    @staticmethod
    def forward(ctx, w, t: float, m1: float, m2: float, lo: float, hi: float, ste_clamp: bool):
        aw = torch.abs(w)
        a = torch.max(aw)
        c = torch.clamp_min(a, m1)  # = ScalarSignedClampMinSte on a >= 0
        p, s = _pow2_scale(torch.log2(c).item(), m2, t)  # torch's float32 log2, as Brevitas
        y, (y1, q, r) = _quant_forward(ctx, w, s, lo, hi, ste_clamp)
        ctx.save_for_backward(w, aw, a, y1, q, r)
        ctx.scalars = (p, s, c.item(), t)
        return y

    @staticmethod
    def backward(ctx, g):
        w, aw, a, y1, q, r = ctx.saved_tensors
        p, s, c, t = ctx.scalars
        g_w, g_s = _quant_backward(ctx, g, s, y1, q, r)
        g_c = _pow2_scale_grad(g_s, p, t) / (_f32(c) * _f32(_LN2))  # log2's backward
        at_max = torch.nonzero((aw == a).view(-1)).view(-1)  # max's backward: ties share the gradient
        share = float(g_c / _f32(at_max.numel()))
        g_w.view(-1).index_add_(0, at_max, w.view(-1)[at_max].sgn() * share)  # abs's backward: * sgn
        return g_w, None, None, None, None, None, None


class LearnedActQuant(torch.autograd.Function):
    """Activation quantizer after Brevitas' statistics steps (`ParameterFromRuntimeStatsScaling`):
    s = clamp_min(2 ** ceil_ste(value), m) / t (p = 2 ** ceil(value) and s given as floats), then
    the integer quantization."""

    @staticmethod
    def forward(ctx, x, value, p: float, s: float, t: float, lo: float, hi: float, ste_clamp: bool):
        y, (y1, q, r) = _quant_forward(ctx, x, s, lo, hi, ste_clamp)
        ctx.save_for_backward(y1, q, r)
        ctx.scalars = (p, s, t, value.dtype, value.device, value.shape)
        return y

    @staticmethod
    def backward(ctx, g):
        y1, q, r = ctx.saved_tensors
        p, s, t, dtype, device, shape = ctx.scalars
        g_x, g_s = _quant_backward(ctx, g, s, y1, q, r)
        g_v = torch.tensor(float(_pow2_scale_grad(g_s, p, t)), dtype=dtype, device=device).reshape(shape)
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
        y, (y1, q, r) = _quant_forward(ctx, x, s, lo, hi, ste_clamp)
        ctx.save_for_backward(x, idx, t, s, y1, q, r)
        ctx.mark_non_differentiable(s, c)
        return y, s, c

    @staticmethod
    def backward(ctx, g, _s, _c):
        x, idx, t, s, y1, q, r = ctx.saved_tensors
        g_x, g_s = _quant_backward(ctx, g, s, y1, q, r)
        g1 = g_s / t
        i = idx.view(1)  # kthvalue's backward puts the gradient at the k-th element, abs's multiplies by sgn
        flat = g_x.view(-1)
        flat[i] = flat[i] + g1.view(1) * x.view(-1)[i].sgn()
        return g_x, g1 * 0., None, None, None, None, None, None


class _ActQuant:
    """Brevitas' `RescalingIntQuant` + `ParameterFromRuntimeStatsScaling` of one QuantIdentity: the
    statistics go into the module's own `buffer` / `counter`, the learned scale is its `value`."""

    def __init__(self, quant_identity):
        tq = quant_identity.act_quant.fused_activation_quant_proxy.tensor_quant
        self.si = si = tq.scaling_impl
        with torch.no_grad():
            bw = tq.msb_clamp_bit_width_impl()
            self.int_threshold = tq.int_scaling_impl(bw)
            _zero_point_is_zero(tq.zero_point_impl.zero_point())
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


class _WeightQuant:
    """Brevitas' `Int8WeightPerTensorFixedPoint` of a QuantLinear's weights."""

    def __init__(self, linear: QuantLinear):
        tq = linear.weight_quant.tensor_quant
        self.linear = linear
        ss = tq.scaling_impl.stats_scaling_impl
        with torch.no_grad():
            bw = tq.msb_clamp_bit_width_impl()
            int_threshold = tq.int_scaling_impl(bw)
            self.threshold = float(ss.restrict_clamp_threshold(ss.restrict_threshold_pre(int_threshold)))
            _zero_point_is_zero(tq.zero_point_impl.zero_point())
            self.lo = float(tq.int_quant.min_int(bw))
            self.hi = float(tq.int_quant.max_int(bw))
        self.ste_clamp = _ste_clamp(tq)
        self.clamp_min = ss.clamp_scaling.clamp_min_ste.min_val
        self.clamp_min_restricted = ss.restrict_clamp_scaling.clamp_ste.min_val

    def __call__(self) -> torch.Tensor:
        return WeightQuant.apply(self.linear.weight, self.threshold, self.clamp_min, self.clamp_min_restricted,
                                 self.lo, self.hi, self.ste_clamp)


class FastPath:
    """`FastPath(model)(x)`: the logits `model(x)` computes, bit for bit, in train and eval mode.
    Build it after the model is on its device and after any `load_state_dict` (Brevitas re-creates
    its quantizer modules then); it reads the modules' training flags and statistics live."""

    def __init__(self, model):
        if not model.binary:
            raise ValueError("FastPath is for binary models; a float model is plain torch already")
        self.model = m = model
        tq = m.input_quant.act_quant.fused_activation_quant_proxy.tensor_quant
        with torch.no_grad():
            _, self.in_scale, zero_point, bw = tq(torch.zeros(1, device=m.output.weight.device))
            _zero_point_is_zero(zero_point)
            self.in_lo, self.in_hi = float(tq.int_quant.min_int(bw)), float(tq.int_quant.max_int(bw))
        sc = m.shortcut
        self.shortcut_weight = _WeightQuant(sc.linear) if sc is not None and isinstance(sc.linear, QuantLinear) else None
        self.output_weight = _WeightQuant(m.output)
        self.add_quant = _ActQuant(m.add_quant) if m.add_quant is not None else None
        self.add_requant = _ActQuant(m.add_requant) if m.add_requant is not None else None
        self.head_quant = _ActQuant(m.head_quant) if m.head_quant is not None else None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        m = self.model
        x = x / m.input_div
        with torch.no_grad():
            x = torch.clamp(torch.round(x / self.in_scale), self.in_lo, self.in_hi) * self.in_scale
        h = x
        for blk in m.hidden:
            if blk.in_quant is not None:
                h = SignSTE.apply(h)
            h = blk.bn(F.linear(blk.dropout(h), binary_weight(blk.linear.weight), blk.linear.bias))
        sc = m.shortcut
        if sc is not None:
            s = sc.pool(x) if sc.pool is not None else x
            if self.shortcut_weight is not None:
                s = F.linear(s, self.shortcut_weight(), sc.linear.bias)
            else:
                s = sc.linear(s)
            s = sc.bn(s)
            h = self.add_requant(self.add_quant(h) + self.add_quant(s))
        else:
            h = self.head_quant(h)
        return F.linear(m.head_dropout(h), self.output_weight(), None)
