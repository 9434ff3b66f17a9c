"""Brevitas binary residual MLPs and float baselines built from a `ModelSpec`.

Binary model (`B-...`), in forward order (attribute names in brackets; export/hw_build rely on them):

    raw x (0..input_max) / 2^r -> [input_quant] unsigned `input_bits`, fixed scale 2^-b
      (r = bits of input_max: 8 for pixels, so 8-bit input is the exact identity on k/256)
    trunk [hidden[i]]: ([in_quant] sign, i > 0) -> [dropout] -> [linear] 1-bit weights -> [bn]
    shortcut [shortcut]: ([pool] NHWC max-pool, P) -> [linear] Q/P: QuantLinear, F: float Linear -> [bn]
    with a shortcut:  [add_quant](trunk) + [add_quant](shortcut) -> [add_requant]   (ONE shared
                      power-of-two quantizer, so the add is integer: FINN cannot build an add of two scales)
    without:          [head_quant](trunk)
    [head_dropout] -> [output] QuantLinear (`output_weight_bits`, power-of-two scale, no bias)

Binary weights and sign activations use Brevitas' binary quantizers (scale 1, so weights and
activations are exactly +-1; the weight quantizer also clamps the latent weights to [-1, 1]).
Shortcut/output weights and the add/requant/head quantizers are fixed-point (power-of-two scale)
so that FINN's thresholds are exact. Float baselines (`F-...`) use torch Linear + ReLU.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from brevitas.core.restrict_val import RestrictValueType
from brevitas.core.scaling import ScalingImplType
from brevitas.inject.enum import ScalingPerOutputType
from brevitas.nn import QuantIdentity, QuantLinear
from brevitas.quant.base import UintQuant
from brevitas.quant.binary import SignedBinaryActPerTensorConst, SignedBinaryWeightPerTensorConst
from brevitas.quant.fixed_point import Int8ActPerTensorFixedPoint, Int8WeightPerTensorFixedPoint
from brevitas.quant.solver import ActQuantSolver

from train.options import ModelError, ModelOptions, check_options, options_suffix  # noqa: F401 (re-exported)
from train.shortcuts import get_shortcut
from train.spec import ModelSpec


# ---- quantizers -------------------------------------------------------------------------------

class InputQuant(UintQuant, ActQuantSolver):
    """Unsigned input quantizer with the fixed power-of-two scale 2^-b on x / 2^r in [0, 1):
    `max_val` is set to 1 - 2^-b at construction. For 8 bits and pixels (r = 8) it is the exact
    identity on k/256 (graph input = UINT8). A dyadic scale keeps every float32 sum downstream
    exact, so FINN's integer thresholds reproduce the QONNX model bit for bit (a 1/255 scale left
    1 of 10,000 MNIST images one requantization step off)."""
    scaling_impl_type = ScalingImplType.CONST
    restrict_scaling_type = RestrictValueType.FP
    scaling_per_output_type = ScalingPerOutputType.TENSOR
    min_val = 0.0
    max_val = 1.0
    bit_width = 8


class BinaryWeight(SignedBinaryWeightPerTensorConst):
    """+-1 weights (scale 1); latent weights clamped in place to [-1, 1] (BNN latent clipping)."""
    scaling_const = 1.0


class SignAct(SignedBinaryActPerTensorConst):
    """sign(x) in {-1, +1}; straight-through gradient clipped to |x| <= 1."""


class FixedPointAct(Int8ActPerTensorFixedPoint):
    """Signed power-of-two-scaled activation quantizer; scale learned after 100 statistics steps."""
    collect_stats_steps = 100


# ---- building blocks --------------------------------------------------------------------------

class AffineBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm1d whose inference forward is the explicit float32 affine x * a + b.

    torch and onnxruntime evaluate a BatchNormalization node with different operation orders, so
    a value that lands on a rounding boundary of the next quantizer could round differently in
    PyTorch and in the exported QONNX model (seen: 1 of 1,000 MNIST images, one step of the
    add quantizer). With the affine written out, both execute the same two float32 operations
    (Mul, Add on the same constants) and agree bit for bit. Training is plain batch-norm.

    The constants a, b are computed by torch and exported as they are (buffers `eval_scale`,
    `eval_shift`, not in state_dict): traced, `weight / sqrt(var + eps)` is constant-folded by
    the ONNX exporter with IEEE sqrt, while torch's float32 sqrt is not correctly rounded (1 ulp
    off on ~1 in 5 inputs), so 1-ulp-different a, b once moved a value off a quantizer tie
    (1 of 1,000 MNIST images, one add-quantizer step). Upstream note:
    docs/upstream/torch-float32-sqrt.md."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.register_buffer("eval_scale", None, persistent=False)
        self.register_buffer("eval_shift", None, persistent=False)

    def train(self, mode: bool = True):
        super().train(mode)
        if not mode:
            with torch.no_grad():
                self._affine()  # fresh constants for an export right after eval()
        return self

    def _affine(self):
        a = self.weight / torch.sqrt(self.running_var + self.eps)
        b = self.bias - self.running_mean * a
        self.eval_scale, self.eval_shift = a.detach(), b.detach()
        return a, b

    def forward(self, x):
        if self.training:
            return super().forward(x)
        if torch.compiler.is_compiling():  # export: torch's own constants, see the docstring
            return x * self.eval_scale + self.eval_shift
        a, b = self._affine()
        return x * a + b


class NHWCMaxPool(nn.Module):
    """Max-pool written in NHWC form (reshape -> permute -> max_pool2d -> permute -> flatten) so
    FINN's own transposes cancel and it maps to ConvolutionInputGenerator + Pool (a pool over the
    flat input would leave a Transpose that FINN maps to a slow Shuffle)."""

    def __init__(self, hwc: tuple[int, int, int], kernel: tuple[int, int]):
        super().__init__()
        self.hwc = tuple(hwc)
        self.kernel = tuple(kernel)

    @property
    def out_features(self) -> int:
        h, w, c = self.hwc
        return (h // self.kernel[0]) * (w // self.kernel[1]) * c

    def forward(self, x):
        x = x.reshape(-1, *self.hwc).permute(0, 3, 1, 2)
        x = F.max_pool2d(x, self.kernel, stride=self.kernel)
        return x.permute(0, 2, 3, 1).flatten(1)

    def extra_repr(self) -> str:
        return f"hwc={self.hwc}, kernel={self.kernel}"


class HiddenBlock(nn.Module):
    """`[sign] -> Dropout -> Linear -> [BatchNorm]` (binary) or `Dropout -> Linear -> [BN] -> ReLU` (float)."""

    def __init__(self, n_in, n_out, *, binary, first, dropout, bn, p):
        super().__init__()
        self.binary = binary
        self.in_quant = QuantIdentity(act_quant=SignAct) if binary and not first else None
        self.dropout = nn.Dropout(p) if dropout else nn.Identity()
        # A bias only where no batch-norm follows (the BN's shift plays that role).
        if binary:
            self.linear = QuantLinear(n_in, n_out, bias=not bn, weight_quant=BinaryWeight)
        else:
            self.linear = nn.Linear(n_in, n_out)
        self.bn = AffineBatchNorm1d(n_out) if bn else nn.Identity()

    def forward(self, x):
        if self.in_quant is not None:
            x = self.in_quant(x)
        x = self.bn(self.linear(self.dropout(x)))
        return x if self.binary else F.relu(x)


class Shortcut(nn.Module):
    """Input -> last hidden width: `[pool] -> Linear -> [BatchNorm]`."""

    def __init__(self, kind, n_in, n_out, *, binary, bn, pool, weight_bits):
        super().__init__()
        self.kind = kind
        self.pool = pool
        n = pool.out_features if pool is not None else n_in
        if binary and get_shortcut(kind).quantized:
            self.linear = QuantLinear(n, n_out, bias=not bn, weight_quant=Int8WeightPerTensorFixedPoint,
                                      weight_bit_width=weight_bits)
        else:
            self.linear = nn.Linear(n, n_out, bias=not bn or not binary)
        self.bn = AffineBatchNorm1d(n_out) if bn else nn.Identity()

    def forward(self, x):
        if self.pool is not None:
            x = self.pool(x)
        return self.bn(self.linear(x))


def _make_pool(options: ModelOptions, n_inputs: int, image_shape) -> NHWCMaxPool:
    k = options.pool_window
    if options.pool_mode == "flat":
        if k > n_inputs:
            raise ModelError(f"pool window {k} is larger than the {n_inputs} inputs")
        return NHWCMaxPool((1, n_inputs, 1), (1, k))
    if image_shape is None:
        raise ModelError("pool_mode 'vertical' needs the image shape (H, W, C); this data set has none")
    h, w, c = (tuple(image_shape) + (1,))[:3] if len(image_shape) == 2 else tuple(image_shape)
    if h * w * c != n_inputs:
        raise ModelError(f"image shape {tuple(image_shape)} does not hold {n_inputs} inputs")
    if k > h:
        raise ModelError(f"vertical pool window {k} is larger than the image height {h}")
    # Image columns (and colours) as channels, k consecutive rows pooled: streams W*C wide in FINN.
    return NHWCMaxPool((h, 1, w * c), (k, 1))


class ResBinMLP(nn.Module):
    """Binary (spec.kind "B") or float (spec.kind "F") residual MLP; see the module docstring."""

    def __init__(self, spec: ModelSpec, n_inputs: int, n_outputs: int, options: ModelOptions,
                 image_shape=None, input_max: int = 255):
        super().__init__()
        self.spec, self.options = spec, options
        self.n_inputs, self.n_outputs, self.input_max = n_inputs, n_outputs, input_max
        self.image_shape = tuple(image_shape) if image_shape is not None else None
        binary = spec.kind == "B"
        self.binary = binary
        p = options.dropout
        # divide by 2^r (not input_max): see InputQuant
        self.input_div = float(2 ** _bits_for(input_max, False))
        b = options.input_bits
        self.input_quant = (QuantIdentity(act_quant=InputQuant, bit_width=b, max_val=1.0 - 2.0 ** -b)
                            if binary else None)
        blocks, n = [], n_inputs
        for i, w in enumerate(spec.widths):
            blocks.append(HiddenBlock(n, w, binary=binary, first=i == 0, dropout=spec.dropout[i],
                                      bn=spec.batchnorm[i], p=p))
            n = w
        self.hidden = nn.ModuleList(blocks)
        self.shortcut = None
        if spec.shortcut is not None:
            pool = _make_pool(options, n_inputs, image_shape) if get_shortcut(spec.shortcut).pooled else None
            self.shortcut = Shortcut(spec.shortcut, n_inputs, n, binary=binary, bn=spec.shortcut_bn,
                                     pool=pool, weight_bits=options.shortcut_weight_bits)
        self.add_quant = self.add_requant = self.head_quant = None
        if binary and self.shortcut is not None:
            # ONE module for both branches: same scale -> integer add, which FINN can build.
            self.add_quant = QuantIdentity(act_quant=FixedPointAct, bit_width=options.add_bits,
                                           return_quant_tensor=True)
            self.add_requant = QuantIdentity(act_quant=FixedPointAct, bit_width=options.add_bits)
        elif binary:
            self.head_quant = QuantIdentity(act_quant=FixedPointAct, bit_width=options.add_bits)
        self.head_dropout = nn.Dropout(p) if spec.final_dropout else nn.Identity()
        if binary:
            self.output = QuantLinear(n, n_outputs, bias=False, weight_quant=Int8WeightPerTensorFixedPoint,
                                      weight_bit_width=options.output_weight_bits)
        else:
            self.output = nn.Linear(n, n_outputs)

    def forward(self, x):
        x = x / (self.input_div if self.binary else self.input_max)
        if self.input_quant is not None:
            x = self.input_quant(x)
        h = x
        for blk in self.hidden:
            h = blk(h)
        if self.shortcut is not None:
            s = self.shortcut(x)
            if self.add_quant is not None:
                h = self.add_requant(self.add_quant(h) + self.add_quant(s))
            else:
                h = h + s
        elif self.head_quant is not None:
            h = self.head_quant(h)
        return self.output(self.head_dropout(h))

    def binary_linears(self):
        return [blk.linear for blk in self.hidden if self.binary]

    def clip_latent_weights(self, bound: float = 1.0) -> None:
        """Clamp the latent float weights of the binary layers to [-bound, bound]."""
        with torch.no_grad():
            for lin in self.binary_linears():
                lin.weight.clamp_(-bound, bound)


def _check_options(options: ModelOptions) -> None:
    if not isinstance(options, ModelOptions):
        raise ModelError(f"options must be a ModelOptions, got {type(options).__name__}")
    check_options(options)


def build_model(spec: ModelSpec | str, n_inputs: int, n_outputs: int, options: ModelOptions = ModelOptions(),
                image_shape=None, *, input_max: int = 255, fpga: bool = False) -> ResBinMLP:
    """Build the model of `spec`; forward takes RAW values 0..input_max, returns logits (N, n_outputs).

    `fpga=True` refuses what cannot go to the accelerator (float models, the F shortcut).
    Raises ModelError (or the spec's SpecError) with a one-line message.
    """
    if isinstance(spec, str):
        spec = ModelSpec.parse(spec)
    _check_options(options)
    if n_inputs < 1 or n_outputs < 1:
        raise ModelError(f"{spec.name}: need at least one input and one output, got {n_inputs} -> {n_outputs}")
    if input_max < 1:
        raise ModelError(f"input_max={input_max} must be >= 1")
    spec.encode(n_inputs, n_outputs)  # widths that do not fit the thesis encoding raise SpecError
    if fpga and not spec.fpga_able:
        why = "float models stay on the CPU" if spec.kind != "B" else \
            "its F shortcut is a float layer, which FINN cannot build; use Q or P"
        raise ModelError(f"{spec.name} cannot go to the FPGA: {why}")
    return ResBinMLP(spec, n_inputs, n_outputs, options, image_shape, input_max)


# ---- deployed size ----------------------------------------------------------------------------

def _bits_for(max_abs: int, signed: bool) -> int:
    return max(1, math.ceil(math.log2(max_abs + 1))) + (1 if signed else 0)


def deployed_size(model: ResBinMLP) -> dict:
    """Bits the accelerator stores for `model` (FINN: weights in MVAUs, BN/quantizers as thresholds).

    Accounting (binary models):
    - binary hidden weights: 1 bit each in the XNOR layers, 2 in the first layer when its input
      has more than 1 bit (FINN's multiply MVAU stores +-1 as INT2); Q/P shortcut and output
      weights: their bit width each;
    - each hidden layer followed by a sign (BN + sign, or bias + sign): one threshold per unit at
      the layer's accumulator width (one shared threshold without BN and bias);
    - threshold widths are upper bounds (the accumulator's range); FINN stores each threshold
      tensor at the width its trained values need, never more (tests/test_hw_build.py checks
      counts and weight bits exactly, threshold bits as a bound);
    - the last hidden layer into the shared add quantizer (or the head quantizer): after an XNOR
      layer, a per-unit integer affine and one shared set of 2^add_bits - 1 thresholds
      (hw_build.shared_thresholds); after the first layer, 2^add_bits - 1 thresholds per unit;
    - the shortcut into the shared add quantizer:
      2^add_bits - 1 thresholds per unit (one shared set when no BN/bias makes them per-channel)
      at the accumulator width; the post-add requantizer: one set of 2^add_bits - 1 thresholds at
      add_bits + 1 bits (INT8 + INT8 -> INT9);
    - the input quantizer: nothing when it is the identity on the raw integers (b equals the
      raw input's bit width), else one set of 2^b - 1 thresholds at the raw input's width;
    - accumulator widths: first layer (b-bit unsigned x +-1): signed, |acc| <= n (2^b - 1);
      XNOR layers: unsigned popcount 0..n; quantized shortcut: signed, n (2^b - 1) (2^(w-1) - 1);
    - max-pooling, dropout and the add store nothing; an F shortcut (not deployable) counts its
      float32 weights and biases. Float models: every parameter at 32 bits (BN: 2 per unit).
    Returns {"total_bits", "total_kib", "fpga_able", "layers": [{"name", "what", "count",
    "bits_each", "bits"}, ...]}.
    """
    layers = []

    def add(name, what, count, bits_each):
        layers.append({"name": name, "what": what, "count": int(count), "bits_each": int(bits_each),
                       "bits": int(count) * int(bits_each)})

    spec, opt = model.spec, model.options
    if not model.binary:
        for name, mod in model.named_modules():
            if isinstance(mod, nn.Linear):
                add(name, "float32 weights + biases", mod.weight.numel() + (mod.bias.numel() if mod.bias is not None else 0), 32)
            elif isinstance(mod, nn.BatchNorm1d):
                add(name, "float32 batch-norm (scale, shift)", 2 * mod.num_features, 32)
        return _size_result(layers, False)

    b = opt.input_bits
    in_levels = 2 ** b - 1
    raw_bits = _bits_for(model.input_max, False)
    if b != raw_bits:  # else the input quantizer is the identity on the raw integers
        add("input_quant", f"input thresholds ({in_levels}, UINT{raw_bits})", in_levels, raw_bits)
    add_levels = 2 ** opt.add_bits - 1
    n_hidden = len(model.hidden)
    for i, blk in enumerate(model.hidden):
        lin = blk.linear
        n_in, n_out = lin.in_features, lin.out_features
        if i == 0 and b > 1:  # FINN's multiply MVAU (b-bit input x +-1) holds +-1 as INT2
            add(f"hidden.{i}.linear", "binary weights (INT2 in the multiply MVAU)", n_in * n_out, 2)
        else:  # XNOR-popcount MVAU: 1 bit per weight
            add(f"hidden.{i}.linear", "binary weights", n_in * n_out, 1)
        if i == 0:
            acc = _bits_for(n_in * in_levels, True)
        else:
            acc = _bits_for(n_in, False)
        per_channel = not isinstance(blk.bn, nn.Identity) or lin.bias is not None
        units = n_out if per_channel else 1
        if i < n_hidden - 1:
            add(f"hidden.{i}.bn+sign", f"sign thresholds (acc {acc} bits)", units, acc)
        else:
            q = "add_quant" if model.add_quant is not None else "head_quant"
            if per_channel and i > 0:  # hw_build.shared_thresholds on an XNOR popcount: affine + one set
                add(f"hidden.{i}.bn+{q}", f"{q} thresholds ({add_levels}, shared by the units, acc {acc} "
                    "bits)", add_levels, acc)
                add(f"hidden.{i}.affine", f"per-unit integer scale and offset before them ({acc} bits)",
                    2 * units, acc)
            else:
                add(f"hidden.{i}.bn+{q}", f"{q} thresholds ({add_levels}/unit, acc {acc} bits)",
                    units * add_levels, acc)
    sc = model.shortcut
    if sc is not None:
        lin = sc.linear
        if isinstance(lin, QuantLinear):
            wb = opt.shortcut_weight_bits
            add("shortcut.linear", f"{wb}-bit weights", lin.in_features * lin.out_features, wb)
            acc = _bits_for(lin.in_features * in_levels * (2 ** (wb - 1) - 1), True)
            per_channel = not isinstance(sc.bn, nn.Identity) or lin.bias is not None
            units = lin.out_features if per_channel else 1
            add("shortcut.bn+add_quant", f"add_quant thresholds ({add_levels}/unit, acc {acc} bits)",
                units * add_levels, acc)
        else:
            add("shortcut.linear", "float32 weights + biases (not deployable)",
                lin.weight.numel() + (lin.bias.numel() if lin.bias is not None else 0), 32)
            if not isinstance(sc.bn, nn.Identity):
                add("shortcut.bn", "float32 batch-norm (not deployable)", 2 * sc.bn.num_features, 32)
        add("add_requant", f"requant thresholds ({add_levels}, INT{opt.add_bits + 1})", add_levels, opt.add_bits + 1)
    out = model.output
    add("output", f"{opt.output_weight_bits}-bit weights", out.in_features * out.out_features, opt.output_weight_bits)
    return _size_result(layers, spec.fpga_able)


def _size_result(layers, fpga_able) -> dict:
    total = sum(l["bits"] for l in layers)
    return {"total_bits": total, "total_kib": total / 8 / 1024, "fpga_able": bool(fpga_able), "layers": layers}
