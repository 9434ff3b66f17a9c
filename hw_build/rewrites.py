"""Graph rewrites of ResBin's build for 1-bit (0/1) inputs: they change how FINN builds a layer,
not what it computes. Used by steps of `hw_build.steps` listed in `NUMERIC_STEPS`, so the build
checks the graph bit-exactly against the QONNX model after each.

finn-plus converts every 1-bit quantizer as a bipolar one (it fails on ResBin's unsigned one:
"Unsupported BIPOLAR scale != 1"), and its HLS MVAU refuses BINARY {0,1} inputs outside XNOR
mode ("True binary (non-bipolar) inputs not yet supported"). `widen_unsigned_1bit` +
`trim_unsigned_1bit` make the converter emit the exact 0/1 quantizer (one threshold, BINARY);
`BinaryInputLayers` then makes its consumers buildable: the +-1-weight trunk layer as an XNOR
popcount p = x.W + #(W = -1) (thresholds + #(W = -1) per column), the integer-weight shortcut
reading the same 0/1 values typed UINT2. (The other rewrite, shared requantizer thresholds, is
in `hw_build.shared_thresholds`.)
"""
from __future__ import annotations

import numpy as np

from hw_build.finn_env import ensure_finn

ensure_finn()

from qonnx.core.datatype import DataType  # noqa: E402
from qonnx.core.modelwrapper import ModelWrapper  # noqa: E402
from qonnx.custom_op.registry import getCustomOp  # noqa: E402
from qonnx.transformation.base import Transformation  # noqa: E402
from qonnx.transformation.infer_datatypes import InferDataTypes  # noqa: E402

__all__ = ["RewriteError", "widen_unsigned_1bit", "widened_thresholds", "trim_unsigned_1bit",
           "BinaryInputLayers", "int_type_for"]


class RewriteError(RuntimeError):
    """A graph that a rewrite cannot handle exactly (names the node and why)."""


def int_type_for(lo: int, hi: int) -> DataType:
    """The smallest FINN integer datatype holding [lo, hi] (BINARY for [0, 1])."""
    if lo >= 0:
        return DataType["BINARY"] if hi <= 1 else DataType[f"UINT{max(1, int(hi).bit_length())}"]
    bits = max((-int(lo) - 1).bit_length(), int(hi).bit_length()) + 1
    return DataType[f"INT{bits}"]


# ------------------------------------------------------------------ 1-bit (0/1) inputs

def _is_unsigned_1bit(model: ModelWrapper, node) -> bool:
    if node.op_type != "Quant" or model.get_initializer(node.input[0]) is not None:
        return False
    bits = model.get_initializer(node.input[3])
    signed = any(a.name == "signed" and a.i for a in node.attribute)
    return bits is not None and float(bits) == 1.0 and not signed


def widen_unsigned_1bit(model: ModelWrapper) -> list[str]:
    """Give every unsigned 1-bit activation Quant bit width 2 (in place), so that FINN's
    converter makes a counting MultiThreshold (levels 0..3) instead of a bipolar one; returns
    the tensors they read. Call it after `quantizer_specs` (the specs keep the 1-bit quantizer,
    so ExactThresholds places threshold 1 exactly and levels 2, 3 out of reach) and undo the
    extra levels with `trim_unsigned_1bit` after the conversion."""
    tensors = []
    for node in model.graph.node:
        if _is_unsigned_1bit(model, node):
            name = model.make_new_valueinfo_name()
            model.set_initializer(name, np.asarray(2.0, dtype=np.float32))
            node.input[3] = name
            tensors.append(node.input[0])
    return tensors


def widened_thresholds(model: ModelWrapper, tensors: list[str]) -> list[str]:
    """Name (InputQuant1bit_<k>) the MultiThresholds the converter made from the widened
    quantizers and return the names (call it right after the conversion: they still read the
    quantizers' input `tensors`)."""
    names = []
    for n in model.graph.node:
        if n.op_type == "MultiThreshold" and n.input[0] in tensors:
            n.name = f"InputQuant1bit_{len(names)}"
            names.append(n.name)
    return names


def trim_unsigned_1bit(model: ModelWrapper, names: list[str]) -> list[str]:
    """The MultiThresholds `names` (`widened_thresholds`, after ExactThresholds): keep the first
    threshold, BINARY output. Exact when the other thresholds lie above every value the (integer)
    input can take, which ExactThresholds guarantees for a 1-bit quantizer's unreachable levels."""
    done = []
    for node in model.graph.node:
        if node.op_type != "MultiThreshold" or node.name not in names:
            continue
        t = model.get_initializer(node.input[1])
        idt = model.get_tensor_datatype(node.input[0])
        inst = getCustomOp(node)
        if (inst.get_nodeattr("out_scale"), inst.get_nodeattr("out_bias")) != (1.0, 0.0) \
                or t is None or t.shape[-1] != 3:
            raise RewriteError(f"{node.name}: unexpected conversion of a 1-bit input quantizer "
                               "(expected 3 thresholds, out_scale 1, out_bias 0)")
        if not idt.is_integer() or np.any(t[:, 1:] <= idt.max()):
            raise RewriteError(f"{node.name}: levels 2 and 3 of the widened 1-bit quantizer are "
                               f"reachable from its {idt.name} input; cannot trim them")
        model.set_initializer(node.input[1], np.ascontiguousarray(t[:, :1]))
        inst.set_nodeattr("out_dtype", "BINARY")
        model.set_tensor_datatype(node.output[0], DataType["BINARY"])
        done.append(node.name)
    if len(done) != len(names):
        raise RewriteError(f"1-bit input quantizer(s) {sorted(set(names) - set(done))} not found "
                           "after the conversion")
    return done


def _stream_consumers(model: ModelWrapper, tensor: str) -> tuple[list, list]:
    """(DuplicateStreams nodes, other consumers) reading `tensor`, through DuplicateStreams."""
    dups, ends, todo = [], [], [tensor]
    while todo:
        for c in model.find_consumers(todo.pop()) or []:
            if c.op_type.startswith("DuplicateStreams"):
                dups.append(c)
                todo.extend(c.output)
            else:
                ends.append(c)
    return dups, ends


def _acc_thresholds(model: ModelWrapper, mvau) -> list[tuple]:
    """Where `mvau`'s accumulator is compared: (node, threshold input index) of its thresholds,
    or (ElementwiseAdd node, None) behind an ElementwiseMul by a constant (the shared-threshold
    requantizer of hw_build.steps.step_resbin_shared_thresholds)."""
    if not getCustomOp(mvau).get_nodeattr("noActivation"):
        return [(mvau, 2)]
    out = []
    for c in model.find_consumers(mvau.output[0]) or []:
        if c.op_type.startswith("Thresholding"):
            out.append((c, 1))
            continue
        add = model.find_consumer(c.output[0]) if c.op_type.startswith("ElementwiseMul") else None
        if add is not None and add.op_type.startswith("ElementwiseAdd") \
                and model.get_initializer(c.input[1]) is not None \
                and model.get_initializer(add.input[1]) is not None:
            out.append((add, None))
            continue
        raise RewriteError(f"{mvau.name}: its accumulator feeds {c.name} ({c.op_type}), not "
                           "thresholds; cannot absorb the XNOR offset")
    if not out:
        raise RewriteError(f"{mvau.name}: its accumulator is a graph output; cannot absorb the "
                           "XNOR offset")
    return out


def _to_xnor(model: ModelWrapper, mvau) -> None:
    """A 0/1-input, +-1-weight MVAU as FINN's XNOR layer: p = #(x == w bit) = x.W + #(W = -1)
    per column, so its thresholds move up by #(W = -1) (behind a constant Mul A: the Add's
    constant B becomes B - A * #(W = -1))."""
    m = getCustomOp(mvau)
    w = np.asarray(model.get_initializer(mvau.input[1]), dtype=np.float64)
    if not np.all(np.abs(w) == 1):
        raise RewriteError(f"{mvau.name}: BIPOLAR weights hold values other than +-1")
    shift = (w < 0).sum(axis=0)
    targets = _acc_thresholds(model, mvau)  # checked before anything changes
    model.set_initializer(mvau.input[1], ((w + 1) / 2).astype(np.float32))
    model.set_tensor_datatype(mvau.input[1], DataType["BINARY"])
    adt = DataType[f"UINT{int(w.shape[0]).bit_length()}"]  # popcount 0..MW
    for a, v in (("binaryXnorMode", 1), ("weightDataType", "BINARY"), ("inputDataType", "BINARY"),
                 ("accDataType", adt.name)):
        m.set_nodeattr(a, v)
    if m.get_nodeattr("noActivation"):
        m.set_nodeattr("outputDataType", adt.name)
        model.set_tensor_datatype(mvau.output[0], adt)
    for node, i in targets:
        if i is None:  # ElementwiseAdd behind ElementwiseMul(acc, A)
            mul = model.find_producer(node.input[0])
            a = np.asarray(model.get_initializer(mul.input[1]), dtype=np.float64).reshape(-1)
            b = np.asarray(model.get_initializer(node.input[1]), dtype=np.float64)
            nb = (b.reshape(-1) - a * shift).reshape(b.shape)
            model.set_initializer(node.input[1], nb.astype(np.float32))
            bdt = int_type_for(int(nb.min()), int(nb.max()))
            model.set_tensor_datatype(node.input[1], bdt)
            getCustomOp(node).set_nodeattr("rhs_dtype", bdt.name)
            getCustomOp(mul).set_nodeattr("lhs_dtype", adt.name)
            continue
        t = np.ceil(np.asarray(model.get_initializer(node.input[i]), dtype=np.float64))
        if t.shape[0] != shift.size:  # one shared threshold set: per column after the shift
            t = np.broadcast_to(t, (shift.size, t.shape[1]))
        model.set_initializer(node.input[i], (t + shift.reshape(-1, 1)).astype(np.float32))
        if node is not mvau:
            getCustomOp(node).set_nodeattr("inputDataType", adt.name)


def _as_uint2(model: ModelWrapper, thr) -> None:
    """A one-threshold 0/1 Thresholding typed UINT2: two more thresholds out of the input's
    reach, so the values stay 0/1 (FINN's RTL MVAU, on DSPs, wants inputs of 2 bits or more;
    its consumers are asked for it, FINN falls back to HLS where the widths do not allow it)."""
    idt = DataType[getCustomOp(thr).get_nodeattr("inputDataType")]
    if not idt.is_integer():
        raise RewriteError(f"{thr.name}: {idt.name} input; cannot place thresholds out of reach")
    t = np.asarray(model.get_initializer(thr.input[1]), dtype=np.float64)
    never = np.full((t.shape[0], 2), float(idt.max()) + 1)
    name = model.make_new_valueinfo_name()
    model.set_initializer(name, np.concatenate([t, never], axis=1).astype(np.float32))
    thr.input[1] = name
    inst = getCustomOp(thr)
    inst.set_nodeattr("numSteps", 3)
    inst.set_nodeattr("outputDataType", "UINT2")
    dups, ends = _stream_consumers(model, thr.output[0])
    for t_name in [thr.output[0]] + [o for d in dups for o in d.output]:
        model.set_tensor_datatype(t_name, DataType["UINT2"])
    for n in dups + ends:
        getCustomOp(n).set_nodeattr("inputDataType", "UINT2")
    for n in ends:  # FINN picks its RTL (DSP) MVAU by itself only for inputs of 4 bits or more
        if n.op_type == "MVAU" and getCustomOp(n).get_nodeattr("preferred_impl_style") == "":
            getCustomOp(n).set_nodeattr("preferred_impl_style", "rtl")


def _split_fork(model: ModelWrapper, thr, dup) -> list:
    """thr -> DuplicateStreams -> branches becomes DuplicateStreams -> one copy of thr per
    branch (the fork then carries thr's input); returns the copies, in the fork's output order."""
    import copy

    src = thr.input[0]
    idt, shape = model.get_tensor_datatype(src), model.get_tensor_shape(src)
    dup.input[0] = src
    getCustomOp(dup).set_nodeattr("inputDataType", idt.name)
    model.graph.node.remove(thr)
    at = list(model.graph.node).index(dup) + 1
    copies = []
    for k, o in enumerate(list(dup.output)):
        fork = model.make_new_valueinfo_name()
        model.set_tensor_shape(fork, shape)
        model.set_tensor_datatype(fork, idt)
        dup.output[k] = fork
        node = copy.deepcopy(thr)
        node.name = f"{thr.name}_{k}"
        node.input[0], node.output[0] = fork, o
        model.graph.node.insert(at + k, node)
        copies.append(model.graph.node[at + k])
    return copies


class BinaryInputLayers(Transformation):
    """Make the MVAUs that read a Thresholding layer's 0/1 (BINARY) stream outside XNOR mode,
    which finn-plus' HLS MVAU refuses, buildable with the same integers:

    - +-1-weight MVAUs (the first trunk layer) become FINN's XNOR layer (`_to_xnor`);
    - integer-weight MVAUs (the Q shortcut) read the same 0/1 values typed UINT2 (`_as_uint2`),
      which FINN builds as its DSP-based RTL MVAU; where both kinds read one stream through a
      DuplicateStreams, the fork moves in front of the Thresholding and each branch gets a copy.
    (A bipolar stream, as for finn-plus' own 1-bit quantizers, would keep the shortcut off the
    DSPs: the HLS MVAU takes bipolar inputs through LUTs only, and MinimizeWeightBitWidth turns a
    bipolar x bipolar MVAU's +-1 weights into INT2, which changes what it computes.)
    Run it on the HW graph (after convert-to-HW, before the bit widths are minimized)."""

    def apply(self, model: ModelWrapper):
        for thr in model.graph.node:
            if not thr.op_type.startswith("Thresholding") or \
                    getCustomOp(thr).get_nodeattr("outputDataType") != "BINARY":
                continue
            dups, ends = _stream_consumers(model, thr.output[0])
            todo = [c for c in ends if c.op_type.startswith("MVAU")
                    and not getCustomOp(c).get_nodeattr("binaryXnorMode")]
            if not todo:
                continue  # e.g. a hidden layer's sign feeding XNOR MVAUs: FINN builds it
            if any(not c.op_type.startswith("MVAU") for c in ends):
                raise RewriteError(f"{thr.name}: its 0/1 stream also feeds "
                                   f"{[c.name for c in ends if not c.op_type.startswith('MVAU')]}")
            ints = [c for c in todo if getCustomOp(c).get_nodeattr("weightDataType") != "BIPOLAR"]
            for c in todo:
                if c not in ints:
                    _to_xnor(model, c)
            if ints and len(ints) == len(ends):
                _as_uint2(model, thr)
            elif ints:
                self._split(model, thr, dups, ints)
            return model.transform(InferDataTypes()), True
        return model, False

    @staticmethod
    def _split(model, thr, dups, ints) -> None:
        names = {c.name for c in ints}
        if len(dups) != 1 or len(model.find_consumers(thr.output[0]) or []) != 1:
            raise RewriteError(f"{thr.name}: its 0/1 stream reaches integer-weight MVAUs "
                               f"{sorted(names)} and XNOR layers other than through one fork")
        kinds = []
        for o in dups[0].output:
            k = {c.name in names for c in model.find_consumers(o) or []}
            if len(k) != 1:
                raise RewriteError(f"{thr.name}: a branch of {dups[0].name} feeds both integer-"
                                   "weight MVAUs and XNOR layers")
            kinds.append(k.pop())
        for copy_, is_int in zip(_split_fork(model, thr, dups[0]), kinds):
            if is_int:
                _as_uint2(model, copy_)
