"""golden.npz node entries: what each FINN/qonnx HW op computes, as integers and index maps
(`node_spec`, one function per op in `NODE_SPECS`; `deploy.sim` has the matching executors)."""
from __future__ import annotations

import numpy as np

__all__ = ["GoldenWriteError", "NODE_SPECS", "node_spec", "base_op", "flat_size", "thresholds_int", "gather_index"]

# ops that only move a stream (identity on the flat per-image layout)
_IDENTITY_OPS = {"StreamingFIFO", "StreamingDataWidthConverter", "Reshape", "Flatten", "Squeeze",
                 "Unsqueeze", "Identity"}
_ELEMENTWISE = {"ElementwiseAdd": "add", "ElementwiseSub": "sub", "ElementwiseMul": "mul",
                "ElementwiseMax": "max", "ElementwiseMin": "min"}


class GoldenWriteError(Exception):
    """The HW graph holds something the golden model cannot represent exactly."""


def base_op(op_type: str) -> str:
    """The op without its implementation suffix: MVAU_hls -> MVAU."""
    for suffix in ("_hls", "_rtl"):
        if op_type.endswith(suffix):
            return op_type[: -len(suffix)]
    return op_type


def _int_array(a, what: str) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    if not np.all(np.isfinite(a)) or not np.array_equal(a, np.round(a)):
        raise GoldenWriteError(f"{what}: non-integer values; the golden model is integer-only")
    lo, hi = (int(a.min()), int(a.max())) if a.size else (0, 0)
    for t in (np.int8, np.int16, np.int32, np.int64):
        if np.iinfo(t).min <= lo and hi <= np.iinfo(t).max:
            return a.astype(t)
    raise GoldenWriteError(f"{what}: values out of int64 range")


def thresholds_int(t, what: str) -> np.ndarray:
    """Float thresholds -> int64: for integer x, `x >= t` <=> `x >= ceil(t)` (qonnx compares >=)."""
    t = np.asarray(t, dtype=np.float64)
    if t.ndim != 2:
        raise GoldenWriteError(f"{what}: thresholds of shape {t.shape}, expected (channels, steps)")
    lim = float(2**62)
    t = np.clip(np.ceil(np.nan_to_num(t, nan=lim, posinf=lim, neginf=-lim)), -lim, lim)
    return t.astype(np.int64)


def _pack_bits(bits: np.ndarray) -> np.ndarray:
    """(rows, n) array of 0/1 -> (rows, ceil(n/8)) uint8, MSB first (np.packbits default)."""
    return np.packbits(bits.astype(np.uint8), axis=-1)


def flat_size(shape) -> int:
    return int(np.prod(shape[1:])) if shape is not None and len(shape) > 1 else 1


def gather_index(model, node, inst=None) -> np.ndarray:
    """Run the node on arange values: output[j] = input[index[j]] (data-movement ops only)."""
    ishape = list(model.get_tensor_shape(node.input[0]))
    oshape = list(model.get_tensor_shape(node.output[0]))
    n = int(np.prod(ishape))
    if n >= 2**24:
        raise GoldenWriteError(f"{node.name}: {n} elements, too many for a float32 index map")
    x = np.arange(n, dtype=np.float32).reshape(ishape)
    if inst is None:  # ONNX Transpose (perm is an INTS attribute; absent: reverse the axes)
        from onnx import helper

        perm = [helper.get_attribute_value(a) for a in node.attribute if a.name == "perm"]
        out = np.transpose(x, list(perm[0]) if perm else None)
    else:
        ctx = {node.input[0]: x, node.output[0]: np.zeros(oshape, dtype=np.float32)}
        inst.execute_node(ctx, model.graph)
        out = ctx[node.output[0]]
    if out.shape[0] != 1 or ishape[0] != 1:
        raise GoldenWriteError(f"{node.name}: input shape {ishape} -> output shape {list(out.shape)}: "
                               "only per-image data movement of one image (batch axis first, "
                               "size 1) is supported")
    idx = out.reshape(-1).astype(np.int64)
    if not np.array_equal(idx.astype(np.float32), out.reshape(-1)):
        raise GoldenWriteError(f"{node.name}: not a pure data-movement op (non-index outputs)")
    return idx.astype(np.int32)


class _Spec:
    """One node's entry in golden.npz being written: op, tensors, attributes, arrays."""

    def __init__(self, model, node, k: int, arrays: dict):
        op = base_op(node.op_type)
        self.model, self.node, self.k, self._arrays = model, node, k, arrays
        self.d = {"op": op, "name": node.name or f"{op}_{k}", "inputs": list(node.input),
                  "outputs": list(node.output), "attrs": {}, "arrays": {}}
        self.name, self.attrs = self.d["name"], self.d["attrs"]

    def put(self, role: str, a: np.ndarray) -> None:
        key = f"n{self.k}_{role}"
        self._arrays[key] = a
        self.d["arrays"][role] = key

    def inst(self):
        from qonnx.custom_op.registry import getCustomOp

        return getCustomOp(self.node)

    def initializer(self, i: int, what: str):
        a = self.model.get_initializer(self.node.input[i])
        if a is None:
            raise GoldenWriteError(f"{self.name}: {what} are not an initializer")
        return a


def _mvau_weights(s: _Spec, g) -> None:
    w = s.model.get_initializer(s.node.input[1])
    if w is None:
        raise GoldenWriteError(f"{s.name}: weights are not an initializer (mem_mode "
                               f"{g('mem_mode')!r}); only constant weights are supported")
    w = np.asarray(w, dtype=np.float64)
    if w.shape != (g("MW"), g("MH")):
        raise GoldenWriteError(f"{s.name}: weights of shape {w.shape}, expected (MW, MH)")
    idt, wdt = g("inputDataType"), g("weightDataType")
    if g("binaryXnorMode"):
        mode = "xnor"          # xnorpopcountmatmul(x, w): inputs and weights in {0, 1}
    elif idt == "BIPOLAR" and wdt == "BIPOLAR":
        mode = "bipolar_xnor"  # xnorpopcountmatmul((x+1)/2, (w+1)/2)
    else:
        mode = "int"           # np.matmul(x, w)
    s.attrs["mode"] = mode
    if mode != "int" or wdt in ("BINARY", "BIPOLAR"):
        # xnor mode reads the weights as bits, as FINN's xnorpopcountmatmul does
        bipolar = mode == "bipolar_xnor" or (mode == "int" and wdt == "BIPOLAR")
        bits = (w + 1) / 2 if bipolar else w
        if not np.all((bits == 0) | (bits == 1)):
            raise GoldenWriteError(f"{s.name}: {wdt} weights hold values outside its range")
        s.attrs["weight_encoding"] = "bipolar_bits" if bipolar else "bits"
        s.put("weights", _pack_bits(bits.T))   # (MH, ceil(MW/8))
    else:
        s.attrs["weight_encoding"] = "int"
        s.put("weights", _int_array(w, f"{s.name} weights"))  # (MW, MH)


def _spec_mvau(s: _Spec) -> None:
    g = s.inst().get_nodeattr
    for a in ("MW", "MH", "PE", "SIMD", "binaryXnorMode", "noActivation", "ActVal",
              "inputDataType", "weightDataType", "outputDataType", "accDataType"):
        s.attrs[a] = g(a)
    s.attrs["numInputVectors"] = list(g("numInputVectors"))
    s.d["inputs"] = [s.node.input[0]]
    _mvau_weights(s, g)
    if not g("noActivation"):
        odt = g("outputDataType")
        s.attrs["out_scale"] = 2 if odt == "BIPOLAR" else 1
        s.attrs["out_bias"] = -1 if odt == "BIPOLAR" else int(g("ActVal"))
        s.put("thresholds", thresholds_int(s.initializer(2, "thresholds"), f"{s.name} thresholds"))


def _spec_thresholding(s: _Spec) -> None:
    g = s.inst().get_nodeattr
    for a in ("NumChannels", "numSteps", "ActVal", "inputDataType", "outputDataType"):
        s.attrs[a] = g(a)
    s.d["inputs"] = [s.node.input[0]]
    s.put("thresholds", thresholds_int(s.initializer(1, "thresholds"), f"{s.name} thresholds"))
    odt = g("outputDataType")
    s.attrs["out_scale"] = 2 if odt == "BIPOLAR" else 1
    s.attrs["out_bias"] = (2 * int(g("ActVal")) - 1) if odt == "BIPOLAR" else int(g("ActVal"))


def _spec_duplicate(s: _Spec) -> None:
    s.attrs["NumOutputStreams"] = s.inst().get_nodeattr("NumOutputStreams")
    s.d["op"] = "Identity"


def _spec_identity(s: _Spec) -> None:
    shape = s.model.get_tensor_shape
    if flat_size(shape(s.node.input[0])) != flat_size(shape(s.node.output[0])):
        raise GoldenWriteError(f"{s.name}: {s.d['op']} changes the number of elements")
    s.d["inputs"] = [s.node.input[0]]
    s.d["op"] = "Identity"


def _spec_gather(s: _Spec) -> None:
    inst = s.inst() if s.d["op"] != "Transpose" else None
    s.d["inputs"] = [s.node.input[0]]
    s.put("index", gather_index(s.model, s.node, inst))
    s.d["op"] = "Gather"
    if inst is not None:
        for a in ("ConvKernelDim", "IFMDim", "OFMDim", "Stride", "Dilation"):
            s.attrs[a] = list(inst.get_nodeattr(a))
        s.attrs["IFMChannels"] = inst.get_nodeattr("IFMChannels")


def _spec_pool(s: _Spec) -> None:
    g = s.inst().get_nodeattr
    fn = g("Function")
    if fn not in ("MaxPool", "AccPool"):
        raise GoldenWriteError(f"{s.name}: Pool function {fn} is not supported (MaxPool, "
                               f"AccPool are)")
    s.attrs.update({"Function": fn, "KernelSize": list(g("KernelSize")),
                    "k2": int(np.prod(g("KernelSize"))), "Channels": g("Channels"),
                    "OutImgDims": list(g("OutImgDims"))})


def _spec_elementwise(s: _Spec) -> None:
    inst = s.inst()
    s.attrs["fn"] = _ELEMENTWISE[s.d["op"]]
    s.attrs["out_dtype"] = inst.get_nodeattr("out_dtype")
    out_shape = list(inst.get_nodeattr("out_shape"))
    ins = []
    for i, side in enumerate(("lhs", "rhs")):
        t = s.node.input[i]
        c = s.model.get_initializer(t)
        shape = list(inst.get_nodeattr(f"{side}_shape"))
        if c is not None:
            full = np.broadcast_to(np.asarray(c).reshape(shape), out_shape)
            s.put(side, _int_array(full.reshape(-1), f"{s.name} {side} constant"))
            ins.append(None)
        else:
            if int(np.prod(shape)) != int(np.prod(out_shape)):
                raise GoldenWriteError(f"{s.name}: broadcasting a streamed {side} "
                                       f"{shape} -> {out_shape} is not supported")
            ins.append(t)
    s.d["inputs"] = ins


def _spec_labelselect(s: _Spec) -> None:
    g = s.inst().get_nodeattr
    s.attrs.update({"K": g("K"), "Labels": g("Labels"), "outputDataType": g("outputDataType")})


# op (without _hls/_rtl) -> what it stores; deploy.sim's executors mirror this table
NODE_SPECS = {"MVAU": _spec_mvau, "Thresholding": _spec_thresholding,
               "DuplicateStreams": _spec_duplicate, "ConvolutionInputGenerator": _spec_gather,
               "Transpose": _spec_gather, "Pool": _spec_pool, "LabelSelect": _spec_labelselect,
               **dict.fromkeys(_IDENTITY_OPS, _spec_identity),
               **dict.fromkeys(_ELEMENTWISE, _spec_elementwise)}


def node_spec(model, node, k: int, arrays: dict) -> dict:
    s = _Spec(model, node, k, arrays)
    fn = NODE_SPECS.get(s.d["op"])
    if fn is None:
        raise GoldenWriteError(f"{s.name}: op {node.op_type} is not supported by the golden model "
                               f"(supported: {', '.join(sorted(NODE_SPECS))})")
    fn(s)
    s.d["out_dtypes"] = [model.get_tensor_datatype(t).name for t in node.output]
    return s.d
