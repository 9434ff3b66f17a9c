"""Simulate the generated accelerator code before synthesis, layer by layer, on the test set.

`run_cppsim(build_dir, n)` takes a build folder (`<run>/hw/<board>-<target>/`, built at least to
the estimate), its specialized HW graph (the last checkpoint under steps/), inserts FINN's own
width converters and FIFOs (InsertDWC, InsertFIFO, SpecializeLayers: the node list that would
be stitched) and executes it node by node on the first `n` test images, each node at the most
faithful level this machine has:
- `*_hls`: FINN's C++ simulation (PrepareCppSim, CompileCppSim, exec_mode "cppsim"), compiled
  by g++ as hw_build.finn_env sets up, once per node for a batch of all images (FINN's own
  numInputVectors / shape attributes carry the batch, so one binary call runs every image);
- `*_rtl`: Verilator through hw_build.rtlsim.RtlNodeSim (with Vivado: FINN's own rtlsim);
- anything else, or an RTL layer Verilator cannot run: FINN Python execution, with a line
  saying why.
Every layer's output is also compared with FINN's Python execution of that layer on the same
inputs (the per-layer identical count), and the accelerator's integer outputs with golden.npz
(every image) and the QONNX reference (reference.npz). Writes cppsim.json and cppsim.md.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from core.files import read_json

from hw_build.cppsim_levels import RtlLevel, hls_exec, prepare_hls, python_exec, rtl_cache
from hw_build.finn_env import ensure_cppsim, ensure_finn

__all__ = ["run_cppsim", "stitched_graph", "CppsimError", "CppsimMismatchError", "RESULT_FILE",
           "REPORT_FILE", "batched_model"]

RESULT_FILE, REPORT_FILE = "cppsim.json", "cppsim.md"
WORK_DIR = "cppsim"  # inside the build folder: compiled HLS binaries, Verilator builds
# attributes that carry the batch (first) dimension of a layer's tensors
_BATCH_LISTS = ("numInputVectors", "lhs_shape", "rhs_shape", "out_shape", "inShape", "outShape",
                "normal_shape", "inp_shape")


class CppsimError(RuntimeError):
    """The build folder cannot be simulated (one line: what is missing and how to get it)."""


class CppsimMismatchError(RuntimeError):
    """The simulated accelerator's outputs differ from golden.npz / QONNX on some images."""


def _say(progress: bool, msg: str) -> None:
    if progress:
        print(f"[cppsim] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------ the graph to simulate

def _last_checkpoint(build_dir: Path) -> tuple[Path, dict]:
    """(the last step checkpoint, the build's config: build_config.json, a ResBinBuildConfig)."""
    from hw_build.build import CONFIG_FILE, STATE_FILE

    try:
        state = json.loads((build_dir / STATE_FILE).read_text())
    except (OSError, ValueError):
        raise CppsimError(f"{build_dir}: no {STATE_FILE} (run `python -m hw_build codegen "
                          "--run <run>` first)") from None
    done = [s for s in state.get("completed", []) if (build_dir / "steps" / f"{s}.onnx").exists()]
    if "step_specialize_layers" not in done:
        raise CppsimError(f"{build_dir}: the build has no specialized HW graph yet (run "
                          "`python -m hw_build codegen --run <run>` first)")
    config = read_json(build_dir / CONFIG_FILE)
    if config is None:
        raise CppsimError(f"{build_dir}: no {CONFIG_FILE} (rebuild it with `python -m hw_build codegen`)")
    return build_dir / "steps" / f"{done[-1]}.onnx", config


def stitched_graph(model, fpga_part: str):
    """The HW graph as it would be stitched: FINN's InsertDWC and InsertFIFO, then
    SpecializeLayers. Every StreamingFIFO is made an RTL FIFO first (FINN's own choice by
    default, forced here): an HLS StreamingFIFO includes finn-plus's custom_hls/virtual_fifo.hpp,
    whose move() clashes with the one in finn-hlslib's utils.hpp, so it would not compile."""
    from finn.transformation.fpgadataflow.insert_dwc import InsertDWC
    from finn.transformation.fpgadataflow.insert_fifo import InsertFIFO
    from finn.transformation.fpgadataflow.specialize_layers import SpecializeLayers
    from qonnx.custom_op.registry import getCustomOp
    from qonnx.transformation.general import GiveUniqueNodeNames, SortGraph

    model = model.transform(InsertDWC()).transform(InsertFIFO(create_shallow_fifos=True))
    for node in model.get_nodes_by_op_type("StreamingFIFO"):
        getCustomOp(node).set_nodeattr("preferred_impl_style", "rtl")
    model = model.transform(SpecializeLayers(fpga_part)).transform(GiveUniqueNodeNames())
    model = model.transform(SortGraph())
    hls_fifos = [n.name for n in model.graph.node if n.op_type == "StreamingFIFO_hls"]
    if hls_fifos:
        raise CppsimError(f"HLS StreamingFIFO {hls_fifos}: finn-plus's virtual_fifo.hpp and "
                          "finn-hlslib's utils.hpp both define move(); use RTL FIFOs")
    return model


def batched_model(model, n: int):
    """Copy of a batch-1 HW graph whose layers take `n` images at once: the first dimension of
    every batch-carrying attribute (numInputVectors, shapes, Pool's BatchSize) becomes n."""
    from qonnx.custom_op.registry import getCustomOp

    from hw_build.verify import batched_copy

    b = batched_copy(model, n)
    for node in b.graph.node:
        if not node.domain.startswith("finn.custom_op.fpgadataflow"):
            continue
        inst, names = getCustomOp(node), {a.name for a in node.attribute}
        for k in _BATCH_LISTS:
            if k in names:
                v = list(inst.get_nodeattr(k))
                if v and v[0] in (1, n):
                    inst.set_nodeattr(k, [n] + v[1:])
        if "BatchSize" in names:
            inst.set_nodeattr("BatchSize", n)
    return b


# ------------------------------------------------------------------ the whole accelerator

def _references(build_dir: Path, run_dir: Path, x: np.ndarray) -> dict:
    """golden.npz's integer outputs and labels for x, and the QONNX reference (reference.npz:
    the first verify_n test images) where it covers x."""
    from deploy.sim import SimAccelerator
    from hw_build.verify import REFERENCE_FILE, Reference

    gpath = build_dir / "golden.npz"
    if not gpath.exists():
        raise CppsimError(f"{gpath}: missing (written by the estimate step; rebuild the folder)")
    acc = SimAccelerator(gpath)
    ref = {"golden_int": acc.execute_int(x), "golden_labels": acc.execute(x)}
    rpath = build_dir / REFERENCE_FILE
    if rpath.exists():
        r = Reference.load(rpath)
        k = min(len(r.x), len(x))
        if k and np.array_equal(r.x[:k], x[:k]):
            ref["qonnx_int"] = r.y_int[:k]
    return ref


def _layer_row(node, level, why, outs, py, seconds, compile_s, info) -> dict:
    n = len(outs[0])
    same = None
    if py is not None:
        same = int(np.all(np.stack([np.all(o.reshape(n, -1) == p.reshape(n, -1), axis=1)
                                    for o, p in zip(outs, py)]), axis=0).sum())
    row = {"layer": node.name, "op": node.op_type, "level": level, "why": why,
           "compile_s": round(float(compile_s or 0.0), 2), "seconds": round(seconds, 3),
           "images_per_s": round(n / max(seconds, 1e-9), 1),
           "identical_to_python": same, "images": n}
    if info.get("cycles_per_frame") is not None:
        row["cycles_per_frame"] = info["cycles_per_frame"]
        row["finn_est_cycles"] = info.get("exp_cycles")
    return row


def _outputs(model) -> tuple[str, str | None]:
    """(tensor of the integer outputs, tensor of the labels or None): through the FIFOs and
    width converters at the end to LabelSelect (its input) or the last MVAU."""
    out = t = model.graph.output[0].name
    while True:
        prod = model.find_producer(t)
        if prod is None or not prod.op_type.startswith(("StreamingFIFO", "StreamingDataWidth")):
            break
        t = prod.input[0]
    if prod is not None and prod.op_type.startswith("LabelSelect"):
        return prod.input[0], out
    return out, None


def _run_node(node, model, bm, rtl, compile_info, ctx, progress) -> tuple[list, dict]:
    from finn.util.fpgadataflow import is_hls_node, is_rtl_node

    t0, why, info, compile_s = time.perf_counter(), None, {}, None
    outs = None
    if is_hls_node(node):
        outs, level = hls_exec(bm, node, ctx), "cppsim"
        compile_s = compile_info.get(node.name, {}).get("seconds")
    elif is_rtl_node(node):
        outs, info, level = rtl.run(node, ctx)
        compile_s = info.get("compile_s")
        if outs is None:
            why, level = level, "python"
    else:
        why, level = f"{node.op_type} is neither an HLS nor an RTL layer", "python"
    seconds = info.get("sim_s", time.perf_counter() - t0)  # Verilator: without its build
    if outs is None:
        t0 = time.perf_counter()
        outs = python_exec(model, bm, node, ctx)
        seconds, py = time.perf_counter() - t0, None
    else:
        py = python_exec(model, bm, node, ctx)
    row = _layer_row(node, level, why, outs, py, seconds, compile_s, info)
    _say(progress or why is not None,
         f"{node.name:<34} {level:<9} {row['images_per_s']:>10,.0f} img/s"
         + (f", identical to Python on {row['identical_to_python']}/{row['images']}"
            if py is not None else f" (FINN Python execution: {why})"))
    return outs, row


def _simulate(model, x: np.ndarray, build_dir: Path, part: str, clk_ns: float,
              progress: bool) -> tuple[dict, list[dict]]:
    n = len(x)
    work = build_dir / WORK_DIR
    bm = batched_model(model, n)
    compile_info = prepare_hls(bm, work / f"hls-n{n}", progress)
    rtl = RtlLevel(model, rtl_cache(), part, clk_ns)
    inp = model.graph.input[0].name
    ctx = {inp: x.astype(np.float32).reshape([n] + list(model.get_tensor_shape(inp))[1:])}
    keep = {o.name for o in model.graph.output} | {t for t in _outputs(model) if t}
    rows = []
    for k, node in enumerate(model.graph.node):
        outs, row = _run_node(node, model, bm, rtl, compile_info, ctx, progress)
        ctx.update(zip(node.output, outs))
        rows.append(row)
        for t in node.input:  # free what no later layer reads
            if t not in keep and not any(t in m.input for m in model.graph.node[k + 1:]):
                ctx.pop(t, None)
    return ctx, rows


def run_cppsim(build_dir: str | Path, n: int | None = None, progress: bool = True,
               check: bool = True) -> dict:
    """Simulate the build's generated code on the first `n` test images (all by default);
    returns the result dict (also cppsim.json / cppsim.md in build_dir). Raises
    CppsimMismatchError (check=True) when any image's integer outputs differ from golden.npz
    or the QONNX reference, CppsimError when the folder cannot be simulated, MissingToolError
    when g++ / finn-hlslib / the HLS headers are missing."""
    from qonnx.core.modelwrapper import ModelWrapper

    from hw_build.cppsim_report import write_report
    from hw_build.finn_env import cppsim_status
    from hw_build.verify import load_test_set

    ensure_finn()
    build_dir = Path(build_dir).resolve()
    src, config = _last_checkpoint(build_dir)
    ensure_cppsim()
    part = config.get("fpga_part")
    clk_ns = 1000.0 / float(config.get("clock_mhz") or 100.0)
    run_dir = Path(config.get("run_dir") or build_dir.parent.parent)
    x, _ = load_test_set(run_dir)
    x = np.asarray(x[: int(n)] if n else x, dtype=np.uint8)
    if not len(x):
        raise CppsimError("--n must be at least 1")
    t0 = time.perf_counter()
    _say(progress, f"{build_dir.name}: {src.name}, {len(x)} test images; {cppsim_status()[1]}")
    model = stitched_graph(ModelWrapper(str(src)), part)
    ref = _references(build_dir, run_dir, x)
    ctx, rows = _simulate(model, x, build_dir, part, clk_ns, progress)
    int_name, label_name = _outputs(model)
    got = np.rint(ctx[int_name].reshape(len(x), -1)).astype(np.int64)
    same = np.all(got == ref["golden_int"], axis=1)
    res = {"build_dir": str(build_dir), "graph": src.name, "n_images": int(len(x)),
           "identical": f"{int(same.sum())}/{len(x)}", "toolchain": cppsim_status()[1],
           "levels": {lv: sum(r["level"] == lv for r in rows) for lv in
                      sorted({r["level"] for r in rows})},
           "compile_s": round(sum(r["compile_s"] for r in rows), 1),
           "seconds": round(time.perf_counter() - t0, 1), "layers": rows}
    if label_name is not None:
        labels = ctx[label_name].reshape(len(x), -1)[:, 0].astype(np.int64)
        res["labels_identical"] = f"{int((labels == ref['golden_labels']).sum())}/{len(x)}"
    if "qonnx_int" in ref:
        k = len(ref["qonnx_int"])
        q_same = np.all(got[:k] == ref["qonnx_int"], axis=1)
        res["qonnx_identical"] = f"{int(q_same.sum())}/{k}"
        same[:k] &= q_same
    res["sim_seconds"] = round(sum(r["seconds"] for r in rows), 2)
    write_report(res, build_dir / RESULT_FILE, build_dir / REPORT_FILE)
    bad = int((~same).sum())
    if check and bad:
        i = int(np.argmax(~same))
        raise CppsimMismatchError(
            f"{build_dir}: the simulated accelerator differs from golden.npz/QONNX on {bad} of "
            f"{len(x)} images (first: image {i}, {got[i].tolist()} vs "
            f"{ref['golden_int'][i].tolist()}); per-layer table in {build_dir / REPORT_FILE}")
    return res
