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

Once every activation quantizer has its learned scale (after Brevitas' 100 statistics steps), a
training step runs the whole network as ONE autograd node (`_Network`: `FastPath._forward` and
`_backward`), the same ops autograd runs for the per-quantizer nodes, written out (linear,
dropout, aten's batch-norm and its backward, the quantizers' helpers above); it saves the
bookkeeping of ~60 autograd nodes a step.

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


def _sign_backward(g: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Sign activation's gradient: passed where -1 <= x <= 1 (or x is NaN), +0.0 elsewhere."""
    outside = torch.sign(torch.relu(x.abs() - 1.0)).nan_to_num_(0.0)  # 1 where |x| > 1
    return g * (1.0 - outside) + 0.0  # + 0.0: torch.where's +0.0, not -0.0


class SignSTE(torch.autograd.Function):
    """Sign activation with Brevitas' clipped straight-through gradient (`_sign_backward`)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return _sign(x)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return _sign_backward(g, x)


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


def _zero_point_is_zero(zero_point: torch.Tensor) -> None:
    if float(zero_point) != 0.0:
        raise ValueError(f"fast path: a quantizer has the zero point {float(zero_point)}; it assumes 0")


_LN2 = 0.6931471805599453  # the constant of torch's log2 / pow backward formulas


def _weight_quant_forward(w, t: float, m1: float, m2: float, lo: float, hi: float, ste_clamp: bool):
    """Brevitas' `Int8WeightPerTensorFixedPoint`: scale (`StatsFromParameterScaling`, `AbsMax`, power
    of two) s = clamp_min(2 ** ceil(log2(clamp_min(max|w|, m1))), m2) / t, then the integer
    quantization. Returns (y, what `_weight_quant_backward` needs)."""
    aw = torch.abs(w)
    a = torch.max(aw)
    c = torch.clamp_min(a, m1)  # = ScalarSignedClampMinSte on a >= 0
    p, s = _pow2_scale(torch.log2(c).item(), m2, t)  # torch's float32 log2, as Brevitas
    y, (y1, q, r) = _quant_forward(w, s, lo, hi, ste_clamp)
    return y, (w, aw, a, y1, q, r, p, s, c.item(), t, ste_clamp)


def _weight_quant_backward(g, saved):
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
    """`_weight_quant_forward` / `_weight_quant_backward` as one autograd node."""

    @staticmethod
    def forward(ctx, w, t: float, m1: float, m2: float, lo: float, hi: float, ste_clamp: bool):
        y, ctx.saved = _weight_quant_forward(w, t, m1, m2, lo, hi, ste_clamp)
        return y

    @staticmethod
    def backward(ctx, g):
        return _weight_quant_backward(g, ctx.saved), None, None, None, None, None, None


def _learned_act_backward(g, saved):
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
        g_x, g_v = _learned_act_backward(g, ctx.saved)
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

    def learned(self) -> bool:
        """Training past the statistics steps: the scale is the learned `value`."""
        return self.si.training and self.si.counter > self.si.collect_stats_steps

    def learned_forward(self, x: torch.Tensor):
        """`LearnedActQuant`'s forward without an autograd node: (y, what `_learned_act_backward` needs)."""
        p, s = _pow2_scale(self.si.value.item(), self.clamp_min, self.threshold)
        y, (y1, q, r) = _quant_forward(x, s, self.lo, self.hi, self.ste_clamp)
        self.last_scale = s
        return y, (y1, q, r, p, s, self.threshold, self.ste_clamp)


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

    def args(self) -> tuple:
        return (self.linear.weight, self.threshold, self.clamp_min, self.clamp_min_restricted,
                self.lo, self.hi, self.ste_clamp)

    def __call__(self) -> torch.Tensor:
        return WeightQuant.apply(*self.args())


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

        self.quants = [q for q in (self.add_quant, self.add_requant, self.head_quant) if q is not None]
        self.params = [p for p in m.parameters() if p.requires_grad]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.model.training and all(q.learned() for q in self.quants):
            return _Network.apply(self, x, *self.params)
        return self._autograd_forward(x)

    def _input(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            x = x / self.model.input_div
            return torch.clamp(torch.round(x / self.in_scale), self.in_lo, self.in_hi) * self.in_scale

    def _autograd_forward(self, x: torch.Tensor) -> torch.Tensor:
        """One autograd node per quantizer: the statistics steps, the switch to the learned scales, eval."""
        m = self.model
        x = self._input(x)
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

    # ---- the whole network as one autograd node (training with learned scales) -----------------
    # The ops and their order are those autograd runs for `_autograd_forward`, written out:
    # linear: y = x W^T (+ b), dW = g^T x, dx = g W, db = sum_0 g; dropout: noise = bernoulli(1 - p)
    # / (1 - p), y = x * noise, dx = g * noise; batch-norm: aten's native_batch_norm and its
    # backward. What it saves is one Python-level node's bookkeeping instead of ~60 (the step of a
    # small model is mostly per-op overhead).

    def _forward(self, x: torch.Tensor):
        m = self.model
        tape = {"blocks": []}
        x = self._input(x)
        h = x
        for blk in m.hidden:
            rec = {}
            if blk.in_quant is not None:
                rec["sign_in"] = h
                h = _sign(h)
            h, rec["noise"] = _dropout(blk.dropout, h)
            w = blk.linear.weight
            w.clamp_(-1.0, 1.0)  # Brevitas' InplaceTensorClampSte
            rec["in"], rec["w"] = h, _sign(w)
            h, rec["bn"] = _batch_norm(blk.bn, F.linear(h, rec["w"], blk.linear.bias))
            tape["blocks"].append(rec)
        sc = m.shortcut
        if sc is not None:
            s = sc.pool(x) if sc.pool is not None else x
            if self.shortcut_weight is not None:
                ws, tape["sc_wq"] = _weight_quant_forward(*self.shortcut_weight.args())
            else:
                ws = sc.linear.weight
            tape["sc_in"], tape["sc_w"] = s, ws
            s, tape["sc_bn"] = _batch_norm(sc.bn, F.linear(s, ws, sc.linear.bias))
            a1, tape["aq_h"] = self.add_quant.learned_forward(h)
            a2, tape["aq_s"] = self.add_quant.learned_forward(s)
            h, tape["head_q"] = self.add_requant.learned_forward(a1 + a2)
        else:
            h, tape["head_q"] = self.head_quant.learned_forward(h)
        h, tape["head_noise"] = _dropout(m.head_dropout, h)
        wo, tape["out_wq"] = _weight_quant_forward(*self.output_weight.args())
        tape["out_in"], tape["out_w"] = h, wo
        return F.linear(h, wo, None), tape

    def _backward(self, g: torch.Tensor, tape) -> dict:
        """Gradients of the parameters (by id) from the logits' gradient `g`."""
        m = self.model
        grads = {}

        def put(param, grad):
            if param is not None and param.requires_grad:
                grads[id(param)] = grad

        put(m.output.weight, _weight_quant_backward(g.t().mm(tape["out_in"]), tape["out_wq"]))
        g = g.mm(tape["out_w"])
        if tape["head_noise"] is not None:
            g = g * tape["head_noise"]
        g, g_v = _learned_act_backward(g, tape["head_q"])
        sc = m.shortcut
        if sc is not None:
            put(self.add_requant.si.value, g_v)
            g_h, g_v1 = _learned_act_backward(g, tape["aq_h"])
            g_s, g_v2 = _learned_act_backward(g, tape["aq_s"])
            put(self.add_quant.si.value, g_v1 + g_v2)  # float32, as autograd sums the two uses
            g_s = _batch_norm_backward(sc.bn, g_s, tape["sc_bn"], put)
            put(sc.linear.bias, g_s.sum(0) if sc.linear.bias is not None else None)
            g_ws = g_s.t().mm(tape["sc_in"])
            put(sc.linear.weight, _weight_quant_backward(g_ws, tape["sc_wq"]) if "sc_wq" in tape else g_ws)
            g = g_h
        else:
            put(self.head_quant.si.value, g_v)
        for i in range(len(m.hidden) - 1, -1, -1):
            blk, rec = m.hidden[i], tape["blocks"][i]
            g = _batch_norm_backward(blk.bn, g, rec["bn"], put)
            put(blk.linear.bias, g.sum(0) if blk.linear.bias is not None else None)
            put(blk.linear.weight, g.t().mm(rec["in"]))  # the sign's straight-through gradient
            if i == 0:
                break
            g = g.mm(rec["w"])
            if rec["noise"] is not None:
                g = g * rec["noise"]
            if "sign_in" in rec:
                g = _sign_backward(g, rec["sign_in"])
        return grads


def _dropout(module, x: torch.Tensor):
    """nn.Dropout in training, as aten's CPU dropout computes it: (y, noise or None)."""
    if not isinstance(module, torch.nn.Dropout) or module.p == 0:
        return x, None
    if module.p >= 1:
        raise ValueError("fast path: dropout p >= 1")
    noise = torch.empty_like(x).bernoulli_(1 - module.p)
    noise.div_(1 - module.p)
    return x * noise, noise


def _batch_norm(bn, x: torch.Tensor):
    """nn.BatchNorm1d's training forward (running statistics updated): (y, saved or None)."""
    if not isinstance(bn, torch.nn.BatchNorm1d):
        return x, None
    if not bn.track_running_stats or bn.running_mean is None:
        raise ValueError("fast path: a batch-norm without running statistics")
    bn.num_batches_tracked.add_(1)
    momentum = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
    y, mean, invstd = torch.ops.aten.native_batch_norm(x, bn.weight, bn.bias, bn.running_mean, bn.running_var,
                                                       True, momentum, bn.eps)
    return y, (x, mean, invstd)


def _batch_norm_backward(bn, g: torch.Tensor, saved, put) -> torch.Tensor:
    if saved is None:
        return g
    x, mean, invstd = saved
    gx, gw, gb = torch.ops.aten.native_batch_norm_backward(
        g.contiguous(), x, bn.weight, bn.running_mean, bn.running_var, mean, invstd, True, bn.eps,
        [True, bn.weight is not None, bn.bias is not None])
    put(bn.weight, gw)
    put(bn.bias, gb)
    return gx


class _Network(torch.autograd.Function):
    """`FastPath._forward` / `_backward` as one autograd node over the model's parameters."""

    @staticmethod
    def forward(ctx, path, x, *params):
        logits, ctx.tape = path._forward(x)
        ctx.path = path
        return logits

    @staticmethod
    def backward(ctx, g):
        path = ctx.path
        grads = path._backward(g, ctx.tape)
        del ctx.tape
        out = []
        for p in path.params:
            gp = grads.get(id(p))
            if isinstance(gp, np.floating):  # a learned scale's float32 gradient
                gp = torch.tensor(float(gp), dtype=p.dtype, device=p.device).reshape(p.shape)
            out.append(gp)
        return (None, None, *out)
