"""Graph rewrites of ResBin's build that change how FINN builds a layer, not what it computes.

Each is a qonnx `Transformation` used by one step of `hw_build.steps` (listed in
`NUMERIC_STEPS`, so the build checks the graph bit-exactly against the QONNX model after it):

- 1-bit (0/1) inputs. finn-plus converts every 1-bit quantizer as a bipolar one, and its HLS
  MVAU refuses BINARY {0,1} inputs outside XNOR mode ("True binary (non-bipolar) inputs not yet
  supported"), so the shortcut MVAU cannot read a 0/1 stream. `widen_unsigned_1bit` +
  `trim_unsigned_1bit` make the converter emit the exact 0/1 quantizer (one threshold, BINARY);
  `BipolarInputStream` then lets that Thresholding layer emit the same bits as BIPOLAR {-1,+1}
  (b = 2x - 1, FINN streams both as the bit x) and absorbs the affine map into the consumers'
  thresholds: a bipolar-weight MVAU becomes an XNOR popcount p = x.W + #(W = -1) (thresholds
  + #(W = -1) per column), an integer-weight MVAU computes b.W = 2 x.W - colsum(W) (thresholds
  2t - colsum).
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

__all__ = ["RewriteError", "widen_unsigned_1bit", "trim_unsigned_1bit", "BipolarInputStream",
           "int_type_for"]


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


def trim_unsigned_1bit(model: ModelWrapper, tensors: list[str]) -> list[str]:
    """The MultiThresholds made from the widened quantizers (reading `tensors`): keep the first
    threshold, BINARY output. Exact when the other thresholds lie above every value the (integer)
    input can take, which ExactThresholds guarantees for a 1-bit quantizer's unreachable levels."""
    done = []
    for node in model.graph.node:
        if node.op_type != "MultiThreshold" or node.input[0] not in tensors:
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
    """(node, threshold input index) of the thresholds that compare `mvau`'s accumulator."""
    if not getCustomOp(mvau).get_nodeattr("noActivation"):
        return [(mvau, 2)]
    out = []
    for c in model.find_consumers(mvau.output[0]) or []:
        if not c.op_type.startswith("Thresholding"):
            raise RewriteError(f"{mvau.name}: its accumulator feeds {c.name} ({c.op_type}), not "
                               "thresholds; the 0/1 -> bipolar input map cannot be absorbed")
        out.append((c, 1))
    if not out:
        raise RewriteError(f"{mvau.name}: its accumulator is a graph output; the 0/1 -> bipolar "
                           "input map cannot be absorbed")
    return out


class BipolarInputStream(Transformation):
    """A Thresholding layer emitting BINARY {0,1} into integer-weight MVAUs (which finn-plus'
    HLS MVAU refuses) emits BIPOLAR instead: the same bits, read as b = 2x - 1; each consumer
    MVAU reads b and its thresholds absorb the map (see the module docstring). Run it on the
    HW graph (after convert-to-HW, before the bit widths are minimized)."""

    def apply(self, model: ModelWrapper):
        for thr in model.graph.node:
            if not thr.op_type.startswith("Thresholding"):
                continue
            inst = getCustomOp(thr)
            if inst.get_nodeattr("outputDataType") != "BINARY":
                continue
            dups, ends = _stream_consumers(model, thr.output[0])
            mvaus = [c for c in ends if c.op_type.startswith("MVAU")
                     and not getCustomOp(c).get_nodeattr("binaryXnorMode")]
            if not mvaus:
                continue  # e.g. the sign of a hidden layer feeding XNOR MVAUs: fine as it is
            if len(mvaus) != len(ends):
                others = [c.name for c in ends if c not in mvaus]
                raise RewriteError(f"{thr.name}: its 0/1 stream also feeds {others}; cannot make "
                                   "it bipolar")
            if inst.get_nodeattr("ActVal") != 0:
                raise RewriteError(f"{thr.name}: BINARY output with ActVal "
                                   f"{inst.get_nodeattr('ActVal')}")
            for m in mvaus:
                self._absorb(model, m)
            inst.set_nodeattr("outputDataType", "BIPOLAR")
            for t in [thr.output[0]] + [o for d in dups for o in d.output]:
                model.set_tensor_datatype(t, DataType["BIPOLAR"])
            for d in dups:
                getCustomOp(d).set_nodeattr("inputDataType", "BIPOLAR")
            return model.transform(InferDataTypes()), True
        return model, False

    @staticmethod
    def _absorb(model: ModelWrapper, mvau) -> None:
        """The MVAU reads b = 2x - 1 instead of x; its thresholds move with the accumulator."""
        m = getCustomOp(mvau)
        w = model.get_initializer(mvau.input[1])
        if w is None:
            raise RewriteError(f"{mvau.name}: weights are not constant")
        w = np.asarray(w, dtype=np.float64)
        wdt = m.get_nodeattr("weightDataType")
        if wdt == "BIPOLAR":   # FINN's bipolar x bipolar MVAU counts matches: p = x.W + #(W=-1)
            alpha, beta = 1, (w < 0).sum(axis=0)
            lo, hi = 0, w.shape[0]
        else:                  # integer weights: b.W = 2 x.W - colsum(W)
            alpha, beta = 2, -w.sum(axis=0)
            lo, hi = -int(np.abs(w).sum(axis=0).max()), int(np.abs(w).sum(axis=0).max())
        m.set_nodeattr("inputDataType", "BIPOLAR")
        targets = _acc_thresholds(model, mvau)  # check before changing anything
        adt = int_type_for(lo, hi) if wdt != "BIPOLAR" else int_type_for(-hi, hi)  # as FINN sizes it
        m.set_nodeattr("accDataType", adt.name)
        if m.get_nodeattr("noActivation"):
            m.set_nodeattr("outputDataType", adt.name)
            model.set_tensor_datatype(mvau.output[0], adt)
        for node, i in targets:
            t = np.ceil(np.asarray(model.get_initializer(node.input[i]), dtype=np.float64))
            b = beta.reshape(-1, 1) if t.shape[0] == beta.size else None
            if b is None:  # one shared threshold set: per column after the map
                t = np.broadcast_to(t, (beta.size, t.shape[1]))
                b = beta.reshape(-1, 1)
            model.set_initializer(node.input[i], (alpha * t + b).astype(np.float32))
            if node is not mvau:
                inst = getCustomOp(node)
                inst.set_nodeattr("inputDataType", adt.name)
                if inst.get_nodeattr("NumChannels") != beta.size:
                    raise RewriteError(f"{node.name}: {inst.get_nodeattr('NumChannels')} "
                                       f"channels, expected {beta.size}")
