"""FINN build steps for ResBin: QONNX model -> bit-exact HW-layer dataflow graph.

Every step has FINN's signature `step(model: ModelWrapper, cfg: DataflowBuildConfig) ->
ModelWrapper`, so `build_dataflow_cfg` can run them. `HW_GRAPH_STEPS` is the ordered list up
to and including the dataflow partition; the graph it returns (and saves as
`<cfg.output_dir>/hw_graph.onnx`) is the partition's *child* model: HW layers only, executable
standalone with FINN's Python execution (input: raw UINT values, output: the label from
LabelSelect, or the last MVAU's integer accumulator for a one-output model).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from hw_build.finn_env import ensure_finn

ensure_finn()

import finn.builder.build_dataflow_steps as stock  # noqa: E402
from finn.builder.build_dataflow_config import DataflowBuildConfig  # noqa: E402
from finn.transformation.fpgadataflow.minimize_accumulator_width import (  # noqa: E402
    MinimizeAccumulatorWidth,
)
from finn.transformation.fpgadataflow.minimize_weight_bit_width import (  # noqa: E402
    MinimizeWeightBitWidth,
)
from finn.transformation.streamline import Streamline  # noqa: E402
from finn.transformation.streamline.absorb import (  # noqa: E402
    AbsorbScalarBiasIntoMultiThreshold,
    AbsorbScalarMulAddIntoTopK,
)
from finn.transformation.streamline.reorder import (  # noqa: E402
    MoveLinearPastEltwiseAdd,
    MoveLinearPastFork,
    MoveMulPastAdd,
)
from finn.transformation.streamline.round_thresholds import RoundAndClipThresholds  # noqa: E402
from qonnx.core.modelwrapper import ModelWrapper  # noqa: E402
from qonnx.custom_op.registry import getCustomOp  # noqa: E402
from qonnx.transformation.infer_datatypes import InferDataTypes  # noqa: E402
from qonnx.transformation.insert_topk import InsertTopK  # noqa: E402

from hw_build.finn_fixes import (  # noqa: E402
    BipolarElementwiseGuard,
    BipolarInputThresholdFix,
    ExactThresholds,
    XnorAccumulatorFix,
    quantizer_specs,
)
from hw_build.shared_thresholds import SharedRequantThresholds  # noqa: E402
from hw_build.rewrites import (  # noqa: E402
    BinaryInputLayers,
    RewriteError,
    trim_unsigned_1bit,
    widen_unsigned_1bit,
    widened_thresholds,
)

__all__ = ["NotHardwareError", "HW_GRAPH_STEPS", "HW_GRAPH_FILE", "step_resbin_qonnx_to_finn",
           "step_resbin_tidy", "step_resbin_streamline", "step_resbin_bipolar_fix",
           "step_resbin_shared_thresholds", "step_resbin_convert_to_hw",
           "step_resbin_binary_input", "step_resbin_minimize_bit_width",
           "step_resbin_create_dataflow_partition", "non_hw_nodes", "NUMERIC_STEPS",
           "remove_identity_thresholds", "xnor_mvaus"]

HW_GRAPH_FILE = "hw_graph.onnx"
_RESNET_ROUNDS = 4  # rounds of the residual recipe; 2 suffice for one add, more are no-ops


class NotHardwareError(RuntimeError):
    """The graph still holds nodes FINN cannot build (named in the message)."""


def _is_hw(node) -> bool:
    return node.domain.startswith("finn.custom_op.fpgadataflow")


def non_hw_nodes(model: ModelWrapper) -> list[str]:
    """'name (op_type)' of every node that is not a FINN HW layer."""
    return [f"{n.name} ({n.op_type})" for n in model.graph.node if not _is_hw(n)]


def step_resbin_qonnx_to_finn(model: ModelWrapper, cfg: DataflowBuildConfig) -> ModelWrapper:
    """Stock QONNX -> FINN-ONNX conversion, then every quantizer's thresholds put exactly on
    the integer grid of its accumulator (hw_build.finn_fixes.ExactThresholds). Unsigned 1-bit
    quantizers (--input-bits 1), which the stock converter takes for bipolar ones, become one
    exact threshold with a 0/1 output (hw_build.rewrites)."""
    specs = quantizer_specs(model)
    one_bit = widen_unsigned_1bit(model)
    model = stock.step_qonnx_to_finn(model, cfg)
    one_bit = widened_thresholds(model, one_bit)
    model = model.transform(ExactThresholds(specs))
    try:
        trim_unsigned_1bit(model, one_bit)
    except RewriteError as e:
        raise NotHardwareError(str(e)) from None
    return model


def step_resbin_tidy(model: ModelWrapper, cfg: DataflowBuildConfig) -> ModelWrapper:
    """Stock tidy-up (shapes, constant folding, names, datatypes)."""
    return stock.step_tidy_up(model, cfg)


def remove_identity_thresholds(model: ModelWrapper) -> tuple[ModelWrapper, list[str]]:
    """Drop MultiThresholds that map every value of their integer input to itself (the 8-bit
    input quantizer on raw UINT8 pixels: thresholds 1..255), so the raw input streams straight
    into the first layers instead of through a 255-threshold layer. Exact by construction:
    for integer x in [lo, hi], lo + #{t in lo+1..hi : x >= t} = x."""
    from qonnx.custom_op.registry import getCustomOp as _op

    removed = []
    for node in list(model.graph.node):
        if node.op_type != "MultiThreshold":
            continue
        idt = model.get_tensor_datatype(node.input[0])
        t = model.get_initializer(node.input[1])
        inst = _op(node)
        if t is None or not idt.is_integer() or inst.get_nodeattr("out_scale") != 1.0:
            continue
        lo, hi = int(idt.min()), int(idt.max())
        if hi - lo == 1:
            continue  # a 0/1 input keeps its layer (step_resbin_binary_input types it)
        if hi - lo > 4096 or t.shape[-1] != hi - lo or inst.get_nodeattr("out_bias") != lo:
            continue
        if not np.array_equal(t, np.broadcast_to(np.arange(lo + 1, hi + 1), t.shape)):
            continue
        src, dst = node.input[0], node.output[0]
        if dst in [o.name for o in model.graph.output]:
            continue
        for c in model.find_consumers(dst) or []:
            for i, name in enumerate(c.input):
                if name == dst:
                    c.input[i] = src
        model.graph.node.remove(node)
        removed.append(node.name)
    return model, removed


def step_resbin_streamline(model: ModelWrapper, cfg: DataflowBuildConfig) -> ModelWrapper:
    """Residual streamlining: FINN's ResNet passes, then the stock streamline, then rounding.

    The post-quantizer biases are absorbed into the MultiThresholds first (else the ResNet
    passes move them past the add and leave INT8-typed thresholds emitting 0..255); then the
    scales move past the fork and the add (MoveLinearPastFork / MoveLinearPastEltwiseAdd), the
    stock streamline makes XNOR popcounts and absorbs the rest, and RoundAndClipThresholds puts
    the thresholds on the integer grid (exact: x >= t <=> x >= ceil(t) for integer x).
    Identity thresholds (the input quantizer on raw pixels) are removed."""
    model = model.transform(AbsorbScalarBiasIntoMultiThreshold())
    for _ in range(_RESNET_ROUNDS):
        for t in (MoveLinearPastFork(), MoveLinearPastEltwiseAdd(), MoveMulPastAdd(),
                  AbsorbScalarBiasIntoMultiThreshold(), Streamline()):
            model = model.transform(t)
    model = stock.step_streamline(model, cfg)
    model = model.transform(RoundAndClipThresholds())
    model, _ = remove_identity_thresholds(model)
    return model.transform(InferDataTypes())


def step_resbin_bipolar_fix(model: ModelWrapper, cfg: DataflowBuildConfig) -> ModelWrapper:
    """Workaround for Thresholding layers with BIPOLAR input (see hw_build.finn_fixes)."""
    model = model.transform(BipolarInputThresholdFix())
    return model.transform(RoundAndClipThresholds()).transform(InferDataTypes())


def step_resbin_shared_thresholds(model: ModelWrapper, cfg: DataflowBuildConfig) -> ModelWrapper:
    """Per-channel requantizers whose thresholds an exact integer affine map per channel can
    share (the trunk's requantizer on an XNOR popcount: 255 thresholds x channels -> 255 in all)
    become Mul/Add by integer constants (FINN: ElementwiseMul/ElementwiseAdd) and one shared
    threshold set (hw_build.shared_thresholds.SharedRequantThresholds). Only with standalone thresholds
    (ResBin's default): with FINN's embedded ones the thresholds stay in their MVAU."""
    if not cfg.standalone_thresholds:
        return model
    return model.transform(SharedRequantThresholds()).transform(InferDataTypes())


def step_resbin_convert_to_hw(model: ModelWrapper, cfg: DataflowBuildConfig) -> ModelWrapper:
    """Insert TopK (-> LabelSelect) for multi-class outputs, then FINN's convert-to-HW.

    The positive output scale folds into the TopK (argmax is unchanged). Refuses (with
    NotHardwareError) a graph that still has non-HW nodes, except a one-output model's final
    float scale, which stays outside the dataflow partition, and (FixError) an elementwise
    layer with a BIPOLAR input (hw_build.finn_fixes.BipolarElementwiseGuard)."""
    out = model.graph.output[0].name
    n_out = model.get_tensor_shape(out)[-1]
    if n_out > 1:
        model = model.transform(InsertTopK(k=1))
        model = model.transform(AbsorbScalarMulAddIntoTopK())
    model = stock.step_convert_to_hw(model, cfg)
    model = model.transform(BipolarElementwiseGuard())
    left = [n for n in model.graph.node if not _is_hw(n)]
    if n_out == 1 and left and left[-1] is model.graph.node[-1] and left[-1].op_type == "Mul":
        left = left[:-1]  # the float output scale of a one-unit (sigmoid) output
    if left:
        names = ", ".join(f"{n.name} ({n.op_type})" for n in left)
        raise NotHardwareError(f"FINN cannot build these nodes as hardware: {names} (a float "
                               "layer, e.g. an F shortcut, or an unsupported op)")
    return model


def step_resbin_binary_input(model: ModelWrapper, cfg: DataflowBuildConfig) -> ModelWrapper:
    """MVAUs reading a 0/1 input stream (1-bit inputs) outside XNOR mode, which finn-plus' HLS
    MVAU refuses: the +-1-weight trunk layer becomes an XNOR layer (thresholds shifted), the
    integer-weight shortcut reads the 0/1 values typed UINT2 (FINN's DSP MVAU)
    (hw_build.rewrites.BinaryInputLayers). No-op for other graphs."""
    try:
        return model.transform(BinaryInputLayers())
    except RewriteError as e:
        raise NotHardwareError(str(e)) from None


def step_resbin_minimize_bit_width(model: ModelWrapper, cfg: DataflowBuildConfig) -> ModelWrapper:
    """Stock minimize_bit_width (weights, accumulators, threshold rounding) with the XNOR
    accumulator fix applied before the thresholds are clipped. Use it wherever FINN's flow has
    step_minimize_bit_width_initial or step_minimize_bit_width."""
    if cfg.minimize_bit_width:
        model = model.transform(MinimizeWeightBitWidth(), apply_to_subgraphs=True)
        model = model.transform(MinimizeAccumulatorWidth(), apply_to_subgraphs=True)
    model = model.transform(XnorAccumulatorFix(), apply_to_subgraphs=True)
    model = model.transform(InferDataTypes(), apply_to_subgraphs=True)
    model = model.transform(RoundAndClipThresholds(), apply_to_subgraphs=True)
    model = model.transform(InferDataTypes(), apply_to_subgraphs=True)
    if cfg.minimize_bit_width:
        model = model.transform(MinimizeWeightBitWidth(), apply_to_subgraphs=True)
        model = model.transform(InferDataTypes(), apply_to_subgraphs=True)
    return model


def step_resbin_create_dataflow_partition(model: ModelWrapper,
                                          cfg: DataflowBuildConfig) -> ModelWrapper:
    """Stock dataflow partition; saves the child (HW-only) model as <output_dir>/hw_graph.onnx."""
    model = stock.step_create_dataflow_partition(model, cfg)
    bad = non_hw_nodes(model)
    if bad:
        raise NotHardwareError(f"dataflow partition holds non-HW nodes: {', '.join(bad)}")
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save(str(out / HW_GRAPH_FILE))
    return model


# The QONNX model -> executable HW graph (FINN Python execution); hw_build.build_steps appends
# specialize, folding, minimize bit widths again, estimates, golden model, code generation, ...
HW_GRAPH_STEPS = [
    step_resbin_qonnx_to_finn,
    step_resbin_tidy,
    step_resbin_streamline,
    step_resbin_bipolar_fix,
    step_resbin_shared_thresholds,
    step_resbin_convert_to_hw,
    step_resbin_binary_input,
    step_resbin_minimize_bit_width,
    step_resbin_create_dataflow_partition,
]

# Steps after which the graph's integer outputs must equal the QONNX model's (hw_build.verify).
NUMERIC_STEPS = tuple(s.__name__ for s in HW_GRAPH_STEPS)


def xnor_mvaus(model: ModelWrapper) -> list[tuple[str, int, str]]:
    """(name, MW, accDataType) of every XNOR MVAU (for reports and tests)."""
    return [(n.name, getCustomOp(n).get_nodeattr("MW"), getCustomOp(n).get_nodeattr("accDataType"))
            for n in model.graph.node
            if n.op_type.startswith("MVAU") and getCustomOp(n).get_nodeattr("binaryXnorMode")]

