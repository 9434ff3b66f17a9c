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
- linear layers, batch-norm, pooling and dropout run the model's modules in Brevitas' order, so
  dropout draws the same random numbers.

Once every activation quantizer has its learned scale (after Brevitas' 100 statistics steps), a
training step runs the whole network as ONE autograd node (`_Network`: `FastPath._forward` and
`_backward`), the same ops autograd runs for the per-quantizer nodes, written out (linear,
dropout, aten's batch-norm and its backward, `train.fast_quant`'s helpers); it saves the
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

import numpy as np
import torch
import torch.nn.functional as F

from brevitas.nn import QuantLinear

from train import fast_kernels as K
from train.fast_quant import (ActQuantizer, SignSTE, WeightQuantizer, binary_weight, check_zero_point,
                              learned_act_backward, weight_quant_backward, weight_quant_forward)


class FastPath:
    """`FastPath(model)(x)`: the logits `model(x)` computes, bit for bit, in train and eval mode.
    Build it after the model is on its device and after any `load_state_dict` (Brevitas re-creates
    its quantizer modules then); it reads the modules' training flags and statistics live."""

    def __init__(self, model):
        if not model.binary:
            raise ValueError("FastPath is for binary models; a float model is plain torch already")
        self.model = m = model
        if m.output.weight.device.type == "cpu":
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

    def _forward(self, x: torch.Tensor):
        m = self.model
        tape = {"blocks": []}
        x = self._input(x)
        h = x
        for blk in m.hidden:
            rec = {}
            if blk.in_quant is not None:
                rec["sign_in"] = h
                h = K.sign(h)
            h, rec["noise"] = _dropout(blk.dropout, h)
            rec["in"], rec["w"] = h, K.clamp_sign_(blk.linear.weight)  # Brevitas' InplaceTensorClampSte, sign
            h, rec["bn"] = _batch_norm(blk.bn, F.linear(h, rec["w"], blk.linear.bias))
            tape["blocks"].append(rec)
        sc = m.shortcut
        if sc is not None:
            s = sc.pool(x) if sc.pool is not None else x
            if self.shortcut_weight is not None:
                ws, tape["sc_wq"] = weight_quant_forward(*self.shortcut_weight.args())
            else:
                ws = sc.linear.weight
            tape["sc_in"], tape["sc_w"] = s, ws
            s, tape["sc_bn"] = _batch_norm(sc.bn, F.linear(s, ws, sc.linear.bias))
            a1, tape["aq_h"] = self.add_quant.learned_forward(h)
            a2, tape["aq_s"] = self.add_quant.learned_forward(s)
            h, tape["head_q"] = self.add_requant.learned_forward(a1, a2)  # of a1 + a2
        else:
            h, tape["head_q"] = self.head_quant.learned_forward(h)
        h, tape["head_noise"] = _dropout(m.head_dropout, h)
        wo, tape["out_wq"] = weight_quant_forward(*self.output_weight.args())
        tape["out_in"], tape["out_w"] = h, wo
        return F.linear(h, wo, None), tape

    def _backward(self, g: torch.Tensor, tape) -> dict:
        """Gradients of the parameters (by id) from the logits' gradient `g`."""
        m = self.model
        grads = {}

        def put(param, grad):
            if param is not None and param.requires_grad:
                grads[id(param)] = grad

        put(m.output.weight, weight_quant_backward(g.t().mm(tape["out_in"]), tape["out_wq"]))
        g, g_v = learned_act_backward(g.mm(tape["out_w"]), tape["head_q"], tape["head_noise"])
        sc = m.shortcut
        if sc is not None:
            put(self.add_requant.si.value, g_v)
            g_h, g_v1 = learned_act_backward(g, tape["aq_h"])
            g_s, g_v2 = learned_act_backward(g, tape["aq_s"])
            put(self.add_quant.si.value, g_v1 + g_v2)  # float32, as autograd sums the two uses
            g_s = _batch_norm_backward(sc.bn, g_s, tape["sc_bn"], put)
            put(sc.linear.bias, g_s.sum(0) if sc.linear.bias is not None else None)
            g_ws = g_s.t().mm(tape["sc_in"])
            put(sc.linear.weight, weight_quant_backward(g_ws, tape["sc_wq"]) if "sc_wq" in tape else g_ws)
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
            if "sign_in" in rec:
                g = K.sign_backward(g, rec["sign_in"], rec["noise"])  # of g * noise
            elif rec["noise"] is not None:
                g = g * rec["noise"]
        return grads


def _dropout(module, x: torch.Tensor):
    """nn.Dropout in training, as aten's CPU dropout computes it: (y, noise or None)."""
    if not isinstance(module, torch.nn.Dropout) or module.p == 0:
        return x, None
    if module.p >= 1:
        raise ValueError("fast path: dropout p >= 1")
    return K.dropout(x, module.p)


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
