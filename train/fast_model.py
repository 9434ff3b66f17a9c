"""Fast training path of a binary `ResBinMLP`: Brevitas' arithmetic without Brevitas' overhead.

A small model's Brevitas step is mostly overhead (proxies, QuantTensor wrappers, ~160 nested
module calls, scalar scale graphs of a dozen nodes, `torch.where` clamps, which this CPU build
runs ~20x slower than arithmetic). `FastPath(model)` computes the SAME model's logits from the
model's own parameters, quantizer state and modules, in plain torch ops and the fused elementwise
loops of `train.fast_kernels` (C, compiled once per machine; bit for bit the torch ops they replace):

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
- linear layers, batch-norm, pooling and dropout run in Brevitas' order, so dropout draws the
  same random numbers (`train.fast_kernels.dropout`: torch's own generator and stream).

Once every activation quantizer has its learned scale (after Brevitas' 100 statistics steps), a
training step runs the whole network as ONE autograd node (`_Network`: `FastPath._forward` and
`_backward`), the same ops autograd runs for the per-quantizer nodes, written out (linear,
dropout, aten's batch-norm and its backward, `train.fast_quant`'s helpers); it saves the
bookkeeping of ~60 autograd nodes a step. On CPUs that node's forward and backward are C++
(`train/fast_step.cpp`: the same ATen ops and C loops, called without ~110 Python-level calls a
step); the Python step is its reference (tests) and runs on GPUs and for inputs the loops do
not take.

Outputs, gradients, parameters after Adam steps and the quantizers' statistics are Brevitas' own,
compared with torch.equal (tests/test_fast_train.py). Two differences are in the sign of zeros
only: Brevitas adds and subtracts the zero point 0 around the rounding (the fast path does not:
Brevitas turns a -0.0 there into +0.0), and where a clamp blocks a gradient Brevitas' `where`
writes +0.0 and the fast path's mask product g * 0 may write -0.0. torch.equal does not tell
them apart, and no non-zero value can change because of them (they never divide anything). The parameters are the
model's, so export and checkpoints are as before (`train.trainer.training_forward`).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from brevitas.nn import QuantLinear

from train import fast_kernels as K
from train.fast_quant import (ActQuantizer, SignSTE, WeightQuantizer, binary_weight, check_zero_point,
                              learned_act_backward, weight_quant_backward, weight_quant_forward)
from train.models import NHWCMaxPool


class FastPath:
    """`FastPath(model)(x)`: the logits `model(x)` computes, bit for bit, in train and eval mode.
    Build it after the model is on its device and after any `load_state_dict` (Brevitas re-creates
    its quantizer modules then); it reads the modules' training flags and statistics live."""

    def __init__(self, model, native: bool = True):
        if not model.binary:
            raise ValueError("FastPath is for binary models; a float model is plain torch already")
        self.model = m = model
        cpu = m.output.weight.device.type == "cpu"
        if cpu:
            K.library()  # compiled now (once per machine), not in the middle of the first epoch
        tq = m.input_quant.act_quant.fused_activation_quant_proxy.tensor_quant
        with torch.no_grad():
            _, self.in_scale, zero_point, bw = tq(torch.zeros(1, device=m.output.weight.device))
            check_zero_point(zero_point)
            self.in_lo, self.in_hi = float(tq.int_quant.min_int(bw)), float(tq.int_quant.max_int(bw))
        sc = m.shortcut
        self.shortcut_weight = WeightQuantizer(sc.linear) if sc is not None and isinstance(sc.linear, QuantLinear) else None
        self.output_weight = WeightQuantizer(m.output)
        self.add_quant = ActQuantizer(m.add_quant) if m.add_quant is not None else None
        self.add_requant = ActQuantizer(m.add_requant) if m.add_requant is not None else None
        self.head_quant = ActQuantizer(m.head_quant) if m.head_quant is not None else None

        self.quants = [q for q in (self.add_quant, self.add_requant, self.head_quant) if q is not None]
        self.params = [p for p in m.parameters() if p.requires_grad]
        self.plan = self._plan()
        # the one-node step in C++ (train/fast_step.cpp) on CPUs; `native=False`: the Python step
        # below, its reference (and the GPU path)
        self.native = self._native_args() if native and cpu else None
        self.ops = K.step_ops() if self.native is not None else None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.model.training and all(q.learned() for q in self.quants):
            return _Network.apply(self, x, *self.params)
        return self._autograd_forward(x)

    def _input(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return K.input_quant(x, self.model.input_div, self.in_scale, self.in_lo, self.in_hi)

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

    def _plan(self):
        """The modules' tensors and settings the one-node step reads, looked up once (nn.Module's
        attribute lookup is a measurable part of a small model's step); the tensors are the
        modules' own, so the parameters and statistics they hold are live."""
        m = self.model
        blocks = [(blk.in_quant is not None, _dropout_p(blk.dropout), blk.linear.weight, blk.linear.bias,
                   _BatchNorm.of(blk.bn)) for blk in m.hidden]
        sc = m.shortcut
        shortcut = None if sc is None else (sc.pool, sc.linear.weight, sc.linear.bias, _BatchNorm.of(sc.bn))
        return blocks, shortcut, _dropout_p(m.head_dropout)

    def _native_args(self):
        """(T, D, I, slots): the tensors, floats and integers that describe the model to
        `train/fast_step.cpp` (its `Net` reads them in this order), and for each of `self.params`
        its index in T (None: not there, no gradient). None where the C++ step does not apply."""
        m = self.model
        blocks, shortcut, head_p = self.plan
        T, D, I = [], [], []

        def batch_norm(bn):
            I.append(int(bn is not None))
            D.extend([float("nan") if bn is None or bn.momentum is None else bn.momentum, bn.eps if bn else 0.0])
            T.extend([bn.weight, bn.bias, bn.mean, bn.var, bn.count] if bn else [None] * 5)

        def weight_quant(q):
            I.append(int(q.ste_clamp))
            D.extend([q.threshold, q.clamp_min, q.clamp_min_restricted, q.lo, q.hi])

        def act_quant(q):
            I.append(int(q.ste_clamp))
            D.extend([q.clamp_min, q.threshold, q.lo, q.hi])
            T.append(q.si.value)

        I += [len(blocks), int(shortcut is not None), int(K.serial_bernoulli())]
        D += [m.input_div, float(self.in_scale), self.in_lo, self.in_hi]
        for sign_in, p, w, b, bn in blocks:
            I += [int(sign_in), int(p is not None)]
            D.append(1.0 if p is None else 1 - p)
            T += [w, b]
            batch_norm(bn)
        if shortcut is not None:
            pool, ws, bs, bn = shortcut
            if pool is not None and not isinstance(pool, NHWCMaxPool):
                return None
            I += [int(pool is not None), *(pool.hwc if pool is not None else (0, 0, 0)),
                  *(pool.kernel if pool is not None else (0, 0)), int(self.shortcut_weight is not None)]
            if self.shortcut_weight is not None:
                weight_quant(self.shortcut_weight)
            T += [ws, bs]
            batch_norm(bn)
            act_quant(self.add_quant)
            act_quant(self.add_requant)
        else:
            act_quant(self.head_quant)
        I.append(int(head_p is not None))
        D.append(1.0 if head_p is None else 1 - head_p)
        weight_quant(self.output_weight)
        T.append(self.output_weight.linear.weight)
        index = {id(t): i for i, t in enumerate(T) if t is not None}
        return T, D, I, [index.get(id(p)) for p in self.params]

    def _forward(self, x: torch.Tensor):
        blocks, shortcut, head_p = self.plan
        tape = {"blocks": []}
        x = self._input(x)
        h = x
        for sign_in, p, w, b, bn in blocks:
            x_sign = h if sign_in else None
            if sign_in:
                h = K.sign(h)
            h, noise = _dropout(h, p)
            wb = K.clamp_sign_(w)  # Brevitas' InplaceTensorClampSte, then the sign
            y, bn_saved = _batch_norm(bn, F.linear(h, wb, b))
            tape["blocks"].append((x_sign, noise, h, wb, bn_saved))
            h = y
        if shortcut is not None:
            pool, ws, bs, bn = shortcut
            s = pool(x) if pool is not None else x
            if self.shortcut_weight is not None:
                ws, tape["sc_wq"] = weight_quant_forward(*self.shortcut_weight.args())
            tape["sc_in"], tape["sc_w"] = s, ws
            s, tape["sc_bn"] = _batch_norm(bn, F.linear(s, ws, bs))
            a1, tape["aq_h"] = self.add_quant.learned_forward(h)
            a2, tape["aq_s"] = self.add_quant.learned_forward(s)
            h, tape["head_q"] = self.add_requant.learned_forward(a1, a2)  # of a1 + a2
        else:
            h, tape["head_q"] = self.head_quant.learned_forward(h)
        h, tape["head_noise"] = _dropout(h, head_p)
        wo, tape["out_wq"] = weight_quant_forward(*self.output_weight.args())
        tape["out_in"], tape["out_w"] = h, wo
        return F.linear(h, wo, None), tape

    def _backward(self, g: torch.Tensor, tape) -> dict:
        """Gradients of the parameters (by id) from the logits' gradient `g`."""
        blocks, shortcut, _ = self.plan
        grads = {}

        def put(param, grad):
            if param is not None and param.requires_grad:
                grads[id(param)] = grad

        put(self.output_weight.linear.weight, weight_quant_backward(g.t().mm(tape["out_in"]), tape["out_wq"]))
        g, g_v = learned_act_backward(g.mm(tape["out_w"]), tape["head_q"], tape["head_noise"])
        if shortcut is not None:
            _, ws, bs, bn = shortcut
            put(self.add_requant.si.value, g_v)
            g_h, g_v1 = learned_act_backward(g, tape["aq_h"])
            g_s, g_v2 = learned_act_backward(g, tape["aq_s"])
            put(self.add_quant.si.value, g_v1 + g_v2)  # float32, as autograd sums the two uses
            g_s = _batch_norm_backward(bn, g_s, tape["sc_bn"], put)
            put(bs, g_s.sum(0) if bs is not None else None)
            g_ws = g_s.t().mm(tape["sc_in"])
            put(ws, weight_quant_backward(g_ws, tape["sc_wq"]) if "sc_wq" in tape else g_ws)
            g = g_h
        else:
            put(self.head_quant.si.value, g_v)
        for i in range(len(blocks) - 1, -1, -1):
            _, _, w, b, bn = blocks[i]
            x_sign, noise, h_in, wb, bn_saved = tape["blocks"][i]
            g = _batch_norm_backward(bn, g, bn_saved, put)
            put(b, g.sum(0) if b is not None else None)
            put(w, g.t().mm(h_in))  # the sign's straight-through gradient
            if i == 0:
                break
            g = g.mm(wb)
            if x_sign is not None:
                g = K.sign_backward(g, x_sign, noise)  # of g * noise
            elif noise is not None:
                g = g * noise
        return grads


def _dropout_p(module) -> float | None:
    """The drop probability of a training nn.Dropout (None: no dropout)."""
    if not isinstance(module, torch.nn.Dropout) or module.p == 0:
        return None
    if module.p >= 1:
        raise ValueError("fast path: dropout p >= 1")
    return module.p


def _dropout(x: torch.Tensor, p: float | None):
    """nn.Dropout in training, as aten's CPU dropout computes it: (y, noise or None)."""
    return (x, None) if p is None else K.dropout(x, p)


class _BatchNorm:
    """An nn.BatchNorm1d's tensors and settings (`of` checks it has running statistics)."""

    @staticmethod
    def of(bn):
        if not isinstance(bn, torch.nn.BatchNorm1d):
            return None
        if not bn.track_running_stats or bn.running_mean is None:
            raise ValueError("fast path: a batch-norm without running statistics")
        return _BatchNorm(bn)

    def __init__(self, bn):
        self.weight, self.bias, self.mean, self.var = bn.weight, bn.bias, bn.running_mean, bn.running_var
        self.count, self.momentum, self.eps = bn.num_batches_tracked, bn.momentum, bn.eps
        self.mask = [True, self.weight is not None, self.bias is not None]


def _batch_norm(bn: _BatchNorm | None, x: torch.Tensor):
    """nn.BatchNorm1d's training forward (running statistics updated): (y, saved or None)."""
    if bn is None:
        return x, None
    bn.count.add_(1)
    momentum = 1.0 / float(bn.count) if bn.momentum is None else bn.momentum
    y, mean, invstd = torch.ops.aten.native_batch_norm(x, bn.weight, bn.bias, bn.mean, bn.var, True, momentum, bn.eps)
    return y, (x, mean, invstd)


def _batch_norm_backward(bn: _BatchNorm | None, g: torch.Tensor, saved, put) -> torch.Tensor:
    if saved is None:
        return g
    x, mean, invstd = saved
    gx, gw, gb = torch.ops.aten.native_batch_norm_backward(g.contiguous(), x, bn.weight, bn.mean, bn.var, mean,
                                                           invstd, True, bn.eps, bn.mask)
    put(bn.weight, gw)
    put(bn.bias, gb)
    return gx


class _Network(torch.autograd.Function):
    """`FastPath._forward` / `_backward` as one autograd node over the model's parameters."""

    @staticmethod
    def forward(ctx, path, x, *params):
        ctx.path = path
        ctx.native = path.native is not None and K.loops_apply(x)
        if ctx.native:
            T, D, I, _ = path.native
            logits, ctx.tape = path.ops.step_forward(x, T, D, I)
        else:
            logits, ctx.tape = path._forward(x)
        return logits

    @staticmethod
    def backward(ctx, g):
        path = ctx.path
        if ctx.native:
            T, D, I, slots = path.native
            grads = path.ops.step_backward(g, ctx.tape, T, D, I)
            del ctx.tape
            return (None, None, *[None if i is None else grads[i] for i in slots])
        grads = path._backward(g, ctx.tape)
        del ctx.tape
        out = []
        for p in path.params:
            gp = grads.get(id(p))
            if isinstance(gp, np.floating):  # a learned scale's float32 gradient
                gp = torch.tensor(float(gp), dtype=p.dtype, device=p.device).reshape(p.shape)
            out.append(gp)
        return (None, None, *out)
