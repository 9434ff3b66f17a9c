"""The ONE place with workarounds for finn-plus 1.6.1 bugs that change a ResBin model's numbers.

Each is a qonnx Transformation named after the bug, with a note in docs/upstream/ that could be
sent upstream, and a test in tests/test_finn_fixes.py that shows the stock behaviour going wrong:

- `ExactThresholds`: ConvertQONNXtoFINN turns a `Quant` (rounding_mode ROUND = round half to
  even, as Brevitas/torch/numpy round) into thresholds that round half *up* (ties are real for
  the residual requantizer: an integer sum requantized at twice its step), and streamlining's
  float32 threshold arithmetic can land a threshold one integer off. docs/upstream/
  quant-round-half-even.md
- `BipolarInputThresholdFix`: a Thresholding layer whose input is BIPOLAR is computed wrongly by
  finn-plus' HLS and RTL templates (they read the +1 bit as a signed 1-bit -1), while its Python
  model is right. docs/upstream/bipolar-threshold-input.md
- `XnorAccumulatorFix`: MinimizeAccumulatorWidth sizes an XNOR MVAU's accumulator as if it
  computed a bipolar dot product (INT7 for MW=88), but XNOR-popcount lives in [0, MW];
  RoundAndClipThresholds then clips its thresholds. docs/upstream/xnor-accumulator-width.md
- `BipolarElementwiseGuard` (a refusal, no rewrite): the HLS ElementwiseAdd & co. declare a
  BIPOLAR input as ap_int<1> while execute_node streams it as (x+1)/2, so -1 arrives as 0 and
  +1 as -1. docs/upstream/elementwiseadd-bipolar.md
- `cppsim_without_rtlsim_packing` (speed, not numbers): HLSBackend.execute_node packs every
  input for rtlsim even in cppsim mode, where the result is never used.
"""
from __future__ import annotations

import contextlib

import numpy as np

from core.bits import bits_for
from hw_build.finn_env import ensure_finn

ensure_finn()

from qonnx.core.datatype import DataType  # noqa: E402
from qonnx.core.modelwrapper import ModelWrapper  # noqa: E402
from qonnx.custom_op.registry import getCustomOp  # noqa: E402
from qonnx.transformation.base import Transformation  # noqa: E402
from qonnx.transformation.infer_datatypes import InferDataTypes  # noqa: E402

__all__ = ["FixError", "quantizer_specs", "ExactThresholds", "BipolarInputThresholdFix",
           "XnorAccumulatorFix", "bipolar_input_thresholds", "is_xnor_mvau", "xnor_acc_type",
           "BipolarElementwiseGuard", "bipolar_elementwise_inputs", "cppsim_without_rtlsim_packing"]


class FixError(RuntimeError):
    """A graph the workarounds cannot make exact (names the node and why)."""


# ------------------------------------------------------------------ exact thresholds

_CHAIN_OPS = {"BatchNormalization", "Mul", "Add", "Sub", "Div"}
_GRID_PASS = {"Reshape", "Flatten", "Transpose", "MaxPool", "MaxPoolNHWC", "Identity",
              "Squeeze", "Unsqueeze", "Im2Col"}
_SEARCH_BITS = 23  # thresholds are searched for |acc| <= 2^23 grid steps (exact in float32)


def quantizer_specs(model: ModelWrapper) -> dict[str, dict]:
    """{input tensor: spec} of the activation quantizers of a QONNX model (call it before
    ConvertQONNXtoFINN; the MultiThreshold that replaces a quantizer reads the same tensor).
    Raises FixError for rounding modes FINN's thresholds cannot express."""
    specs = {}
    for node in model.graph.node:
        if model.get_initializer(node.input[0]) is not None:
            continue  # weight quantizers become integer weights, not thresholds
        if node.op_type == "Quant":
            inst = getCustomOp(node)
            mode = inst.get_nodeattr("rounding_mode").upper()
            if mode not in ("ROUND", "HALF_EVEN"):
                raise FixError(f"{node.name}: activation Quant with rounding_mode {mode}; FINN's "
                               "thresholds implement round-to-nearest only")
            specs[node.input[0]] = {
                "op": "Quant", "node": node.name,
                "scale": model.get_initializer(node.input[1]).astype(np.float32),
                "zeropt": model.get_initializer(node.input[2]).astype(np.float32),
                "bits": model.get_initializer(node.input[3]).astype(np.float32),
                "signed": int(inst.get_nodeattr("signed")),
                "narrow": int(inst.get_nodeattr("narrow")), "mode": mode}
        elif node.op_type == "BipolarQuant":
            specs[node.input[0]] = {"op": "BipolarQuant", "node": node.name,
                                    "scale": model.get_initializer(node.input[1]).astype(np.float32)}
    return specs


def _quant_level(spec: dict, y: np.ndarray) -> np.ndarray:
    """Integer level that the QONNX quantizer `spec` gives float32 input y (qonnx's own code)."""
    from qonnx.custom_op.general.bipolar_quant import binary_quant
    from qonnx.custom_op.general.intquant import int_quant, min_int

    s = spec["scale"]
    if spec["op"] == "BipolarQuant":
        return (binary_quant(y, s) > 0).astype(np.int64)  # level 1 = +1
    out = int_quant(y, s, spec["zeropt"], spec["bits"], spec["signed"], spec["narrow"],
                    spec["mode"])
    lo = min_int(spec["signed"], spec["narrow"], spec["bits"])
    return (np.rint(out / s) - lo).astype(np.int64)


def _const_grid(arr: np.ndarray, max_steps: int = 2 ** 16) -> float | None:
    """Largest power of two p dividing every value of a float32 array, if the values are small
    integers on it (|v| / p <= max_steps: quantized weights/scales, not arbitrary floats)."""
    v = np.asarray(arr, dtype=np.float64).ravel()
    v = v[v != 0]
    if v.size == 0:
        return None
    m, e = np.frexp(np.abs(v))
    mant = (m * 2.0 ** 53).astype(np.uint64)  # exact: float32 values have 24-bit mantissas
    tz = np.array([(int(x) & -int(x)).bit_length() - 1 for x in mant])
    p = float(np.min(np.ldexp(1.0, (e - 53 + tz).astype(int))))
    return p if np.max(np.abs(v)) / p <= max_steps else None


def _grid(model: ModelWrapper, tensor: str, memo: dict) -> float | None:
    """g such that every value of `tensor` is an integer multiple of g (power of two), or None."""
    if tensor in memo:
        return memo[tensor]
    memo[tensor] = None
    init = model.get_initializer(tensor)
    if init is not None:
        memo[tensor] = _const_grid(init)
        return memo[tensor]
    prod = model.find_producer(tensor)
    g = None
    if prod is None:
        g = 1.0 if model.get_tensor_datatype(tensor).is_integer() else None
    elif prod.op_type == "MultiThreshold":
        inst = getCustomOp(prod)
        sc, b = inst.get_nodeattr("out_scale"), inst.get_nodeattr("out_bias")
        gs, gb = _const_grid(np.float32([sc])), _const_grid(np.float32([b]))
        if gs is not None and gs == abs(sc):  # values count * sc + b
            g = gs if b == 0 else (min(gs, gb) if gb is not None else None)
    elif prod.op_type in _GRID_PASS:
        g = _grid(model, prod.input[0], memo)
    elif prod.op_type in ("Add", "Sub", "MatMul", "Mul", "XnorPopcountMatMul"):
        ga, gb = (_grid(model, t, memo) for t in prod.input[:2])
        if ga is not None and gb is not None:
            if prod.op_type in ("Add", "Sub"):
                g = min(ga, gb)  # powers of two: the smaller divides the larger
            elif prod.op_type == "Mul" and any(model.get_initializer(t) is not None
                                               for t in prod.input[:2]):
                g = ga * gb
            elif prod.op_type in ("MatMul", "XnorPopcountMatMul"):
                g = ga * gb
    elif prod.op_type == "Div":
        c = model.get_initializer(prod.input[1])
        ga = _grid(model, prod.input[0], memo)
        if ga is not None and c is not None and c.size == 1 and _const_grid(c) == abs(float(c)):
            g = ga / abs(float(c))
    memo[tensor] = g
    return g


def _chain(model: ModelWrapper, mt) -> tuple[str, list]:
    """(Z, affine nodes Z -> ... -> MultiThreshold input): constant-operand elementwise ops."""
    nodes, t = [], mt.input[0]
    while True:
        p = model.find_producer(t)
        if p is None or p.op_type not in _CHAIN_OPS:
            return t, nodes[::-1]
        dyn = [i for i in p.input if model.get_initializer(i) is None]
        if len(dyn) != 1 or p.input[0] != dyn[0]:
            return t, nodes[::-1]
        nodes.append(p)
        t = p.input[0]


def _run_node(node, values: dict) -> np.ndarray:
    """Execute one standard ONNX node like qonnx.core.onnx_exec does (own ORT session)."""
    import onnxruntime as rt
    from onnx import TensorProto, helper
    from qonnx.util.basic import qonnx_make_model

    ins = [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(values[n].shape))
           for n in node.input]
    outs = [helper.make_tensor_value_info(node.output[0], TensorProto.FLOAT, None)]
    m = qonnx_make_model(helper.make_graph([node], "chain-node", ins, outs))
    m.opset_import[0].version = 13
    return rt.InferenceSession(m.SerializeToString()).run(None, {n: values[n] for n in node.input})[0]


class ExactThresholds(Transformation):
    """Put every MultiThreshold made from a QONNX quantizer directly on the integer grid of the
    tensor Z it depends on, with thresholds found by searching the float32 function that the
    QONNX model computes (the affine chain Z -> BatchNorm/Mul/Add -> quantizer, run with
    onnxruntime and qonnx's own quantizer code), so that streamlining only moves exact
    power-of-two scales and integer offsets afterwards.

    Fixes two ways finn-plus' thresholds miss the QONNX model (docs/upstream/
    quant-round-half-even.md): ConvertQONNXtoFINN rounds ties half up where Quant rounds half
    to even, and the float32 arithmetic of BatchNormToAffine/absorption lands thresholds one
    integer off when the quantizer boundary falls within rounding error of an accumulator
    value. Channels whose chain decreases get a +-1 Mul in front (FINN absorbs it into the
    weights, as it does for negative batch-norm scales). Run right after ConvertQONNXtoFINN
    with the specs from `quantizer_specs` on the QONNX model."""

    def __init__(self, specs: dict[str, dict]):
        super().__init__()
        self.specs = specs
        self.report: list[dict] = []

    def apply(self, model: ModelWrapper):
        memo: dict = {}
        for mt in [n for n in model.graph.node if n.op_type == "MultiThreshold"]:
            spec = self.specs.get(mt.input[0])
            if spec is None:
                continue
            z, chain = _chain(model, mt)
            g = _grid(model, z, memo)
            if g is None:
                self.report.append({"node": spec["node"], "exact": False, "why": "no grid"})
                continue
            self._calibrate(model, mt, spec, z, chain, g)
        return model, False

    def _calibrate(self, model, mt, spec, z, chain, g):
        params = {i: model.get_initializer(i) for n in chain for i in n.input[1:]}
        per_channel = any(v.size > 1 for v in params.values()) or spec["scale"].size > 1
        zshape = model.get_tensor_shape(z)
        c = int(zshape[-1]) if per_channel else 1
        n_thr = model.get_initializer(mt.input[1]).shape[-1]
        ch_axis_ok = all(v.size in (1, c) for v in params.values())
        if not ch_axis_ok:
            raise FixError(f"{spec['node']}: chain parameters are not per last-axis channel")

        def level(n: np.ndarray) -> np.ndarray:  # n: (K, c) grid steps -> quantizer level
            vals = dict(params)
            vals[z] = (n.astype(np.float64) * g).astype(np.float32)
            for node in chain:
                for i in node.input[1:]:
                    v = vals[i]
                    if node.op_type != "BatchNormalization" and v.size == c and v.ndim == 1:
                        vals[i] = v.reshape(1, c)
                vals[node.output[0]] = _run_node(node, vals)
            y = vals[chain[-1].output[0]] if chain else vals[z]
            return _quant_level(spec, y.astype(np.float32))

        big = 2 ** _SEARCH_BITS
        ends = level(np.array([[-big] * c, [big] * c]))
        sgn = np.where(ends[1] >= ends[0], 1, -1)
        # smallest n (in sgn * Z / g units) whose level exceeds j, for every (j, channel)
        lo = np.full((n_thr, c), -big - 1, dtype=np.int64)  # level(lo) <= j (virtually)
        hi = np.full((n_thr, c), big + 1, dtype=np.int64)   # level(hi) > j (virtually)
        j = np.arange(n_thr)[:, None]
        while np.any(hi - lo > 1):
            mid = (lo + hi) // 2
            ok = level(np.clip(mid, -big, big) * sgn[None, :]) > j
            ok |= mid > big
            ok &= mid >= -big
            hi, lo = np.where(ok, mid, hi), np.where(ok, lo, mid)
        thr = (hi.T.astype(np.float64) * g).astype(np.float32)  # (c, n_thr)
        if not np.array_equal(thr.astype(np.float64) / g, hi.T.astype(np.float64)):
            raise FixError(f"{spec['node']}: thresholds are not exact in float32")
        t_name = model.make_new_valueinfo_name()
        model.set_initializer(t_name, thr)
        mt.input[1] = t_name
        src = z
        if np.any(sgn < 0):
            from onnx import helper

            s_name, o_name = model.make_new_valueinfo_name(), model.make_new_valueinfo_name()
            model.set_initializer(s_name, sgn.astype(np.float32).reshape(c))
            model.set_tensor_shape(o_name, zshape)
            model.set_tensor_datatype(o_name, model.get_tensor_datatype(z))
            mul = helper.make_node("Mul", [z, s_name], [o_name], name=f"{mt.name}_sign")
            model.graph.node.insert(list(model.graph.node).index(mt), mul)
            src = o_name
        old = mt.input[0]
        mt.input[0] = src
        for node in reversed(chain):  # drop chain nodes nobody else reads
            if not model.find_consumers(node.output[0]):
                model.graph.node.remove(node)
        self.report.append({"node": spec["node"], "exact": True, "grid": g, "chain":
                            [n.op_type for n in chain], "decreasing_channels": int((sgn < 0).sum()),
                            "replaced": old})


# ------------------------------------------------------------------ BIPOLAR-input thresholds

def _is_threshold(node) -> bool:
    return node.op_type == "MultiThreshold" or node.op_type.startswith("Thresholding")


def _bipolar_input_nodes(model: ModelWrapper) -> list:
    return [n for n in model.graph.node
            if _is_threshold(n) and model.get_tensor_datatype(n.input[0]) == DataType["BIPOLAR"]]


def bipolar_input_thresholds(model: ModelWrapper) -> list[str]:
    """Names (or op types, if unnamed) of threshold nodes (MultiThreshold / Thresholding*)
    whose input is BIPOLAR."""
    return [n.name or n.op_type for n in _bipolar_input_nodes(model)]


class BipolarInputThresholdFix(Transformation):
    """Feed thresholds BINARY {0,1} instead of BIPOLAR {-1,+1}.

    finn-plus bug (docs/upstream/bipolar-threshold-input.md): the HLS and RTL Thresholding
    templates read a BIPOLAR input bit 1 (= +1) as the signed 1-bit value -1, so every output is
    wrong in hardware while Python execution is right. For each BIPOLAR tensor that only
    threshold nodes consume and that a MultiThreshold produces (out_scale 2, out_bias -1): the
    producer emits the count b in {0,1} (x = 2b - 1) and each consumer threshold t becomes
    (t + 1) / 2, since 2b - 1 >= t  <=>  b >= (t + 1) / 2. Run it on the streamlined graph
    (before convert-to-HW)."""

    def apply(self, model: ModelWrapper):
        for node in _bipolar_input_nodes(model):
            name = node.name or node.op_type
            tensor = node.input[0]
            prod = model.find_producer(tensor)
            consumers = model.find_consumers(tensor) or []
            if prod is None or prod.op_type != "MultiThreshold":
                raise FixError(f"{name}: BIPOLAR input {tensor} is not made by a MultiThreshold "
                               f"({prod.op_type if prod else 'graph input'}); cannot rewrite")
            if not all(_is_threshold(c) for c in consumers):
                others = [c.name for c in consumers if not _is_threshold(c)]
                raise FixError(f"{name}: BIPOLAR tensor {tensor} also feeds {others}")
            p = getCustomOp(prod)
            if (p.get_nodeattr("out_scale"), p.get_nodeattr("out_bias")) != (2.0, -1.0) \
                    or model.get_initializer(prod.input[1]).shape[-1] != 1:
                raise FixError(f"{prod.name}: BIPOLAR MultiThreshold without out_scale 2 / "
                               "out_bias -1 and one threshold; cannot rewrite")
            p.set_nodeattr("out_scale", 1.0)
            p.set_nodeattr("out_bias", 0.0)
            p.set_nodeattr("out_dtype", "BINARY")
            model.set_tensor_datatype(tensor, DataType["BINARY"])
            for c in consumers:
                t = model.get_initializer(c.input[1]).astype(np.float64)
                model.set_initializer(c.input[1], ((t + 1.0) / 2.0).astype(np.float32))
            model = model.transform(InferDataTypes())
            return model, True  # graph changed: rescan
        return model, False


# ------------------------------------------------------------------ XNOR accumulator width

def is_xnor_mvau(node) -> bool:
    if not node.op_type.startswith("MVAU"):
        return False
    return getCustomOp(node).get_nodeattr("binaryXnorMode") == 1


def xnor_acc_type(mw: int) -> DataType:
    """Accumulator of an XNOR-popcount over MW inputs: UINT with ceil(log2(MW + 1)) bits."""
    return DataType[f"UINT{bits_for(mw)}"]


class XnorAccumulatorFix(Transformation):
    """Give XNOR MVAUs (binaryXnorMode=1) the accumulator type UINT(ceil(log2(MW+1))).

    finn-plus bug (docs/upstream/xnor-accumulator-width.md): MVAU.minimize_accumulator_width
    computes the range of a bipolar dot product (e.g. [-44, 44] -> INT7 for MW=88) although the
    XNOR-popcount accumulator counts matches in [0, MW]; the following RoundAndClipThresholds
    then clips thresholds above 64 and the layer's outputs change. Run it right after
    MinimizeAccumulatorWidth and before RoundAndClipThresholds."""

    def apply(self, model: ModelWrapper):
        for node in model.graph.node:
            if not is_xnor_mvau(node):
                continue
            inst = getCustomOp(node)
            adt = xnor_acc_type(inst.get_nodeattr("MW"))
            inst.set_nodeattr("accDataType", adt.name)
            if inst.get_nodeattr("noActivation"):
                inst.set_nodeattr("outputDataType", adt.name)
                model.set_tensor_datatype(node.output[0], adt)
        return model, False


# ------------------------------------------------------------------ BIPOLAR into ElementwiseAdd

_ELEMENTWISE = ("ElementwiseAdd", "ElementwiseSub", "ElementwiseMul", "ElementwiseMax",
                "ElementwiseMin")


def bipolar_elementwise_inputs(model: ModelWrapper) -> list[str]:
    """'node (tensor)' for every BIPOLAR input of an Elementwise{Add,Sub,Mul,Max,Min} layer."""
    return [f"{n.name or n.op_type} ({t})" for n in model.graph.node
            if n.op_type.split("_")[0] in _ELEMENTWISE
            for t in n.input if model.get_tensor_datatype(t) == DataType["BIPOLAR"]]


class BipolarElementwiseGuard(Transformation):
    """Refuse a graph in which an elementwise layer takes a BIPOLAR input.

    finn-plus bug (docs/upstream/elementwiseadd-bipolar.md): ElementwiseBinaryOperation_hls
    declares a BIPOLAR input as `ap_int<1>`, but execute_node (and the hardware stream) carry
    it as the bit (x+1)/2, so -1 is read as 0 and +1 as -1 (sums off by +1 / -2); Python
    execution is right. No ResBin model produces one (both residual branches are requantized by
    one shared quantizer of >= 2 bits); a graph that does must not reach code generation."""

    def apply(self, model: ModelWrapper):
        bad = bipolar_elementwise_inputs(model)
        if bad:
            raise FixError(f"BIPOLAR input to {', '.join(bad)}: finn-plus 1.6.1's HLS "
                           "elementwise layers read a BIPOLAR +1 as -1 (see docs/upstream/"
                           "elementwiseadd-bipolar.md); quantize both residual branches with "
                           "2 or more bits (--add-bits >= 2)")
        return model, False


# ------------------------------------------------------------------ cppsim input packing

@contextlib.contextmanager
def cppsim_without_rtlsim_packing():
    """Within this block, HLS layers in exec_mode "cppsim" skip packing their inputs for rtlsim.

    finn-plus 1.6.1's HLSBackend.execute_node converts every input with npy_to_rtlsim_input
    before it looks at exec_mode; in cppsim mode the packed list is never used, yet packing a
    784-byte image costs ~40 ms in Python (7 minutes for 10,000 MNIST images through one layer).
    Only for cppsim: rtlsim needs the packed inputs."""
    import finn.custom_op.fpgadataflow.hlsbackend as hb

    real = getattr(hb, "npy_to_rtlsim_input", None)
    if real is None:
        raise FixError("finn.custom_op.fpgadataflow.hlsbackend no longer imports "
                       "npy_to_rtlsim_input: update hw_build/finn_fixes.py")
    hb.npy_to_rtlsim_input = lambda *a, **k: []
    try:
        yield
    finally:
        hb.npy_to_rtlsim_input = real
