"""The levels hw_build.cppsim runs a layer at: FINN's C++ simulation of an HLS layer (compiled
once for a batch of all images), Verilator for an RTL layer (hw_build.rtlsim; FINN's rtlsim
where Vivado is present), FINN Python execution (also the per-layer reference)."""
from __future__ import annotations

import copy
import json
import re
import sys
import time
from pathlib import Path

import numpy as np

__all__ = ["rtl_cache", "python_exec", "prepare_hls", "hls_exec", "RtlLevel", "LevelError"]


class LevelError(RuntimeError):
    """finn-plus changed something this module adapts (one line)."""


def _say(progress: bool, msg: str) -> None:
    if progress:
        print(f"[cppsim] {msg}", file=sys.stderr, flush=True)


def rtl_cache() -> Path:
    """Verilator builds of RTL layers, shared by all builds: named by the hash of the layer's
    generated HDL (hw_build.rtlsim adds the hash of everything else that goes into a build)."""
    import os

    return Path(os.environ["FINN_BUILD_DIR"]).parent / "cppsim-rtl"


def _base_node(node):
    """The node as FINN's generic HW layer (Python execution): suffix and backend dropped."""
    base = copy.deepcopy(node)
    base.op_type = re.sub(r"_(hls|rtl)$", "", node.op_type)
    base.domain = "finn.custom_op.fpgadataflow"
    return base


def _rows(model, node, ctx: dict, rows) -> list[list[np.ndarray]]:
    """FINN Python execution of the batch-1 `node`, image by image, for the given rows."""
    from qonnx.custom_op.registry import getCustomOp

    inst, out = getCustomOp(_base_node(node)), [[] for _ in node.output]
    for r in rows:
        c = {i: ctx[i][r:r + 1] if i in ctx else model.get_initializer(i) for i in node.input}
        c.update({o: np.zeros(model.get_tensor_shape(o), dtype=np.float32) for o in node.output})
        inst.execute_node(c, model.graph)
        for k, o in enumerate(node.output):
            out[k].append(np.asarray(c[o], dtype=np.float32).reshape(-1))
    return out


def _gather(model, node, ctx: dict, n: int, want) -> list[np.ndarray]:
    """ConvolutionInputGenerator's Python model takes one image (its im2col graph is batch-1):
    run it once on arange values to get its index map (hw_build.golden) and gather the batch."""
    from qonnx.custom_op.registry import getCustomOp

    from hw_build.golden_nodes import gather_index

    idx = gather_index(model, node, getCustomOp(_base_node(node)))
    return [ctx[node.input[0]].reshape(n, -1)[:, idx].reshape(want[0])]


def python_exec(model, bm, node, ctx: dict) -> list[np.ndarray]:
    """FINN Python execution of `node` on the batch in ctx: the batched layer (bm), accepted
    only if its first and last images equal the batch-1 layer's; else image by image."""
    from qonnx.custom_op.registry import getCustomOp

    n = len(next(ctx[i] for i in node.input if i in ctx))
    want = [tuple(bm.get_tensor_shape(o)) for o in node.output]
    if _base_node(node).op_type == "ConvolutionInputGenerator":
        return _gather(model, node, ctx, n, want)
    try:
        c = {i: ctx[i] if i in ctx else bm.get_initializer(i) for i in node.input}
        c.update({o: np.zeros(s, dtype=np.float32) for o, s in zip(node.output, want)})
        getCustomOp(_base_node(next(x for x in bm.graph.node if x.name == node.name))) \
            .execute_node(c, bm.graph)
        outs = [np.asarray(c[o], dtype=np.float32).reshape(s) for o, s in zip(node.output, want)]
        probe = _rows(model, node, ctx, sorted({0, n - 1}))
        if all(np.array_equal(o.reshape(n, -1)[[0, n - 1]], np.stack(p)[[0, -1]])
               for o, p in zip(outs, probe)):
            return outs
    except Exception:  # noqa: BLE001 - this layer's Python model takes one image at a time
        pass
    return [np.stack(r).reshape(s) for r, s in zip(_rows(model, node, ctx, range(n)), want)]


def prepare_hls(bm, work: Path, progress: bool) -> dict:
    """PrepareCppSim + CompileCppSim for every HLS layer of the batched graph `bm` (in place),
    code in work/<node>; returns {node: compile info}."""
    from finn.transformation.fpgadataflow.compile_cppsim import CompileCppSim
    from finn.transformation.fpgadataflow.prepare_cppsim import PrepareCppSim
    from finn.util.fpgadataflow import is_hls_node
    from qonnx.custom_op.registry import getCustomOp

    from hw_build.finn_env import COMPILE_INFO_FILE

    hls = [n for n in bm.graph.node if is_hls_node(n)]
    if not hls:
        return {}
    for node in hls:
        d = work / node.name
        d.mkdir(parents=True, exist_ok=True)
        getCustomOp(node).set_nodeattr("code_gen_dir_cppsim", str(d))
    _say(progress, f"generating and compiling the C++ of {len(hls)} HLS layers (g++)")
    model = bm.transform(PrepareCppSim())
    for node in hls:
        if node.op_type in _ONE_FRAME_DRIVERS:
            _batch_driver(node.op_type, work / node.name, int(bm.get_tensor_shape(node.input[0])[0]))
    model = model.transform(CompileCppSim())
    bm.graph.CopyFrom(model.graph)
    info = {}
    for node in filter(is_hls_node, bm.graph.node):
        getCustomOp(node).set_nodeattr("exec_mode", "cppsim")
        f = work / node.name / COMPILE_INFO_FILE
        info[node.name] = json.loads(f.read_text()) if f.exists() else {}
    return info


# Layers whose finn-plus 1.6.1 cppsim driver runs one frame whatever the batch attributes say:
# (generated file, pattern, replacement) giving the same finn-hlslib call the batch size. Both
# functions treat frames independently (LabelSelect_Batch loops numReps frames; Pool_batch pools
# consecutive groups of K inputs, so ISIZE * n inputs are n frames).
_ONE_FRAME_DRIVERS = {
    "LabelSelect_hls": ("execute_LabelSelect_hls.cpp",
                        r"(LabelSelect_Batch<[^;]*>\s*\(in0_V, out0_V, )1\);", r"\g<1>{n});"),
    "Pool_hls": ("execute_Pool_hls.cpp", r"(constexpr unsigned\s+ISIZE = )(\d+);",
                 r"\g<1>\g<2> * {n};"),
}


def _batch_driver(op_type: str, code_dir: Path, n: int) -> None:
    """Let a one-frame cppsim driver (see _ONE_FRAME_DRIVERS) run all n frames in one call."""
    fname, pat, rep = _ONE_FRAME_DRIVERS[op_type]
    f = code_dir / fname
    new, k = re.subn(pat, rep.format(n=n), f.read_text())
    if k != 1:
        raise LevelError(f"{f}: the one-frame call this batches is not there (finn-plus changed "
                         f"its {op_type} driver: update hw_build/cppsim_levels.py)")
    f.write_text(new)


def hls_exec(bm, node, ctx: dict) -> list[np.ndarray]:
    from qonnx.custom_op.registry import getCustomOp

    from hw_build.finn_fixes import cppsim_without_rtlsim_packing

    bnode = next(x for x in bm.graph.node if x.name == node.name)
    inst = getCustomOp(bnode)
    assert inst.get_nodeattr("exec_mode") == "cppsim", node.name
    c = {i: ctx[i] if i in ctx else bm.get_initializer(i) for i in node.input}
    c = {k: (v.astype(np.float32) if isinstance(v, np.ndarray) else v) for k, v in c.items()}
    with cppsim_without_rtlsim_packing():
        inst.execute_node(c, bm.graph)
    return [np.asarray(c[o], dtype=np.float32).reshape(bm.get_tensor_shape(o)) for o in node.output]


def _rtl_key(model, node, fpga_part: str, clk_ns: float) -> str:
    """A name for an RTL layer from the HDL FINN generates for it (under a placeholder name), so
    identical layers, e.g. the many FIFOs of one width and depth, share one Verilator build."""
    import hashlib
    import tempfile

    from qonnx.custom_op.registry import getCustomOp

    m = copy.deepcopy(model)
    mnode = next(x for x in m.graph.node if x.name == node.name)
    mnode.name = "resbin_rtl_layer"
    inst = getCustomOp(mnode)
    h = hashlib.sha256(node.op_type.encode())
    with tempfile.TemporaryDirectory() as d:
        inst.set_nodeattr("code_gen_dir_ipgen", d)
        inst.code_generation_ipgen(m, fpga_part, clk_ns)
        for f in sorted(Path(d).rglob("*")):
            if f.is_file():
                h.update(f.name.encode() + f.read_bytes())
    return f"{node.op_type}_{h.hexdigest()[:12]}"


class RtlLevel:
    """RTL layers in Verilator (hw_build.rtlsim), or in FINN's rtlsim where Vivado is present."""

    def __init__(self, model, work: Path, fpga_part: str, clk_ns: float):
        import os

        self.model, self.work, self.part, self.clk = model, work, fpga_part, clk_ns
        self.native = bool(os.environ.get("XILINX_VIVADO"))
        try:
            from hw_build import rtlsim
            self.rtlsim, self.why = rtlsim, None
        except ImportError as e:
            self.rtlsim, self.why = None, f"hw_build.rtlsim is not available ({e})"

    def run(self, node, ctx: dict) -> tuple[list[np.ndarray] | None, dict, str]:
        """(outputs or None, info, level or the reason it fell back)."""
        if self.native:
            return self._finn_rtlsim(node, ctx)
        if self.rtlsim is None:
            return None, {}, self.why
        m = copy.deepcopy(self.model)
        mnode = next(x for x in m.graph.node if x.name == node.name)
        mnode.name = _rtl_key(self.model, node, self.part, self.clk)
        try:
            sim = self.rtlsim.RtlNodeSim(m, mnode, self.work, fpgapart=self.part, clk_ns=self.clk)
        except self.rtlsim.RtlSimUnsupported as e:
            return None, {}, str(e).replace(mnode.name, node.name)
        data = [ctx[i] for i in node.input if i in ctx]
        y, info = sim.run(data)
        n = len(data[0])
        shape = [n] + list(self.model.get_tensor_shape(node.output[0]))[1:]
        return [np.asarray(y, dtype=np.float32).reshape(shape)], info, "verilator"

    def _finn_rtlsim(self, node, ctx):  # pragma: no cover - needs Vivado (not on CI)
        """FINN's own rtlsim (Vivado XSI): PrepareIP + PrepareRTLSim on this one layer."""
        from finn.transformation.fpgadataflow.prepare_ip import PrepareIP
        from finn.transformation.fpgadataflow.prepare_rtlsim import PrepareRTLSim
        from qonnx.core.modelwrapper import ModelWrapper
        from qonnx.custom_op.registry import getCustomOp

        m = ModelWrapper(copy.deepcopy(self.model.model))
        keep = [x for x in m.graph.node if x.name == node.name]
        m.graph.ClearField("node")
        m.graph.node.extend(keep)
        t0 = time.perf_counter()
        m = m.transform(PrepareIP(self.part, self.clk)).transform(PrepareRTLSim())
        compile_s = time.perf_counter() - t0
        inst = getCustomOp(m.graph.node[0])
        inst.set_nodeattr("exec_mode", "rtlsim")
        outs = []
        data = {i: ctx[i] for i in node.input if i in ctx}
        n = len(next(iter(data.values())))
        for r in range(n):  # the batch-1 layer, one frame per call
            c = {i: v[r:r + 1] for i, v in data.items()}
            c.update({i: m.get_initializer(i) for i in node.input if i not in data})
            inst.execute_node(c, m.graph)
            outs.append(np.asarray(c[node.output[0]], dtype=np.float32))
        return [np.concatenate(outs)], {"compile_s": compile_s}, "rtlsim (FINN, Vivado XSI)"
