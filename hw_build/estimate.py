"""Estimate reports of a folded FINN graph, the fit check, report.json / report.md.

Resources and cycles come from FINN's own per-node estimators (the ones behind
step_generate_estimate_reports). Four corrections, each where FINN's estimator is known to
count nothing for hardware that exists (see `node_resources`):
- an HLS MVAU with embedded thresholds in `ram_style_thresholds=auto` is costed as distributed
  (FINN counts neither the threshold memory nor the comparators for `auto`);
- with `block` thresholds the threshold BRAMs and the comparators are added;
- a Thresholding_rtl left to "auto" memory is not put in URAM on a part without URAM, and one
  whose depth triggers make every memory distributed is costed in LUTRAM;
- a Thresholding_rtl with one threshold set shared by all channels is sized as the RTL builds it
  (one set per PE), not per channel.
FINN's uncorrected totals are reported next to ours.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from hw_build.finn_env import ensure_finn

ensure_finn()

from qonnx.core.modelwrapper import ModelWrapper  # noqa: E402
from qonnx.custom_op.registry import getCustomOp  # noqa: E402

from finn.analysis.fpgadataflow.dataflow_performance import dataflow_performance  # noqa: E402
from finn.transformation.fpgadataflow.annotate_cycles import AnnotateCycles  # noqa: E402
from finn.util.fpgadataflow import is_hls_node, is_rtl_node  # noqa: E402
from finn.util.memutil import get_memutil_alternatives, mem_primitives_versal  # noqa: E402

from hw_build.boards import BOARDS, FIT_BUDGET, RESOURCES, Board, budget_label, fits, over_budget  # noqa: E402

__all__ = ["DoesNotFitError", "node_resources", "model_resources", "stored_bits",
           "collect_report", "fit_check", "write_report", "summary_markdown"]

_BRAM18 = {k: v for k, v in mem_primitives_versal.items() if k.startswith("BRAM18")}
_NO_URAM_PRIMS = {k: v for k, v in mem_primitives_versal.items() if not k.startswith("URAM")}
_LUTRAM = {k: v for k, v in mem_primitives_versal.items() if k == "LUTRAM"}


class DoesNotFitError(RuntimeError):
    """The estimated resources exceed the board (hw_build exits with code 4)."""

    def __init__(self, message: str, report: dict | None = None):
        super().__init__(message)
        self.report = report


def _part_has_uram(fpgapart: str) -> bool:
    uram = {b.part: b.uram for b in BOARDS.values()}
    return uram.get(fpgapart, 1) > 0  # unknown part: trust FINN


def _bram18(width: int, depth: int) -> int:
    return min(c for _, (c, _e, _w) in get_memutil_alternatives((width, depth), _BRAM18))


def _shared_thresholds(inst, model) -> bool:
    """A Thresholding whose thresholds are one row for all channels (a per-tensor quantizer)."""
    if model is None or not inst.onnx_node.op_type.startswith("Thresholding"):
        return False
    shape = model.get_tensor_shape(inst.onnx_node.input[1])
    return shape is not None and len(shape) >= 1 and shape[0] == 1


def node_resources(inst, fpgapart: str, model: ModelWrapper | None = None) -> dict[str, float]:
    """LUT, BRAM_18K, DSP, URAM of one HW node: FINN's estimate plus the corrections above."""
    if inst.onnx_node.op_type == "Thresholding_rtl" and _shared_thresholds(inst, model):
        # the RTL keeps one threshold set per PE when all channels share it (thresholding_rtl.py
        # prepare_codegen_rtl_values: "If a single threshold value is found, set num_channels to
        # PE"); FINN's estimator sizes it per channel. Estimate what the RTL builds.
        nc = inst.get_nodeattr("NumChannels")
        inst.set_nodeattr("NumChannels", int(inst.get_nodeattr("PE")))
        try:
            return node_resources(inst, fpgapart, None)
        finally:
            inst.set_nodeattr("NumChannels", nc)
    res = {"LUT": float(inst.lut_estimation(fpgapart)), "BRAM_18K": float(inst.bram_estimation(fpgapart)),
           "DSP": float(inst.dsp_estimation(fpgapart)), "URAM": float(inst.uram_estimation(fpgapart))}
    op = inst.onnx_node.op_type
    if op == "MVAU_hls" and int(inst.get_nodeattr("noActivation")) == 0:
        style = inst.get_nodeattr("ram_style_thresholds")
        if style == "auto":
            inst.set_nodeattr("ram_style_thresholds", "distributed")
            res["LUT"] = float(inst.lut_estimation(fpgapart))
            inst.set_nodeattr("ram_style_thresholds", "auto")
        elif style == "block":
            pe = int(inst.get_nodeattr("PE"))
            steps = 2 ** inst.get_output_datatype().bitwidth() - 1
            acc = inst.get_accumulator_datatype().bitwidth()
            tmem = int(inst.calc_tmem())
            # HLS partitions the thresholds by PE and by step (ARRAY_PARTITION dims 1 and 3)
            res["BRAM_18K"] += pe * steps * _bram18(acc, tmem)
            res["LUT"] += math.ceil(1.1 * pe * steps * acc)  # comparators (FINN's c1 factor)
    elif op == "Thresholding_rtl":
        trig_b = int(inst.get_nodeattr("depth_trigger_bram"))
        trig_u = int(inst.get_nodeattr("depth_trigger_uram"))
        geoms = inst.get_pe_mem_geometries()
        if trig_b and trig_u and all(d < trig_b and d < trig_u for _w, d in geoms):
            prims = _LUTRAM  # the RTL makes every memory "distributed"; FINN's estimate does not
        elif trig_b == 0 and trig_u == 0 and not _part_has_uram(fpgapart):
            prims = _NO_URAM_PRIMS
        else:
            return res
        pe = int(inst.get_nodeattr("PE"))
        lut = bram = 0
        for width, depth in geoms:
            name, (count, _e, _w) = get_memutil_alternatives((width, depth), prims)[0]
            if name.startswith("BRAM"):
                bram += pe * count
            else:
                lut += pe * count
        res.update(LUT=float(lut), BRAM_18K=float(bram), URAM=0.0)
    return res


def _hw_nodes(model: ModelWrapper):
    return [n for n in model.graph.node if is_hls_node(n) or is_rtl_node(n)]


def model_resources(model: ModelWrapper, fpgapart: str) -> dict[str, float]:
    """Summed `node_resources` of all HW nodes."""
    total = dict.fromkeys(RESOURCES, 0.0)
    for node in _hw_nodes(model):
        for k, v in node_resources(getCustomOp(node), fpgapart, model).items():
            total[k] += v
    return total


def stored_bits(model: ModelWrapper, node) -> dict[str, int]:
    """Weight, threshold and other parameter bits a HW node stores: weights at the MVAU's
    weightDataType (what the weight memory holds), thresholds at their tensor datatype (what
    the threshold memory holds); a threshold set shared by all channels of a Thresholding_rtl
    is held once per PE (as its RTL does)."""
    op = node.op_type
    inst = getCustomOp(node)
    out = {"weights": 0, "thresholds": 0, "other": 0}
    for i, t in enumerate(node.input):
        arr = model.get_initializer(t)
        if arr is None:
            continue
        n = int(np.prod(arr.shape))
        if op.startswith("MVAU") or op.startswith("VVAU"):
            if i == 1:
                out["weights"] += n * inst.get_input_datatype(1).bitwidth()
            else:
                out["thresholds"] += n * model.get_tensor_datatype(t).bitwidth()
        elif op.startswith("Thresholding"):
            copies = int(inst.get_nodeattr("PE")) if (op == "Thresholding_rtl" and
                                                       _shared_thresholds(inst, model)) else 1
            out["thresholds"] += copies * n * model.get_tensor_datatype(t).bitwidth()
        else:
            out["other"] += n * model.get_tensor_datatype(t).bitwidth()
    return out


_LAYER_ATTRS = ("PE", "SIMD", "ram_style", "ram_style_thresholds", "resType", "mem_mode",
                "depth_trigger_bram", "binaryXnorMode")


def _attrs(inst) -> dict:
    out = {}
    for a in _LAYER_ATTRS:
        try:
            out[a] = inst.get_nodeattr(a)
        except AttributeError:
            pass
    return out


def collect_report(model: ModelWrapper, board: Board, clock_mhz: float, *,
                   folding: dict | None = None, extra: dict | None = None) -> dict:
    """Estimated frame rate, latency, per-layer cycles/resources/stored bits, totals, fit."""
    fpgapart = board.part
    model = model.transform(AnnotateCycles())
    perf = model.analysis(dataflow_performance)
    layers = []
    finn_total = dict.fromkeys(RESOURCES, 0.0)
    total = dict.fromkeys(RESOURCES, 0.0)
    bits = {"weights": 0, "thresholds": 0, "other": 0}
    for node in _hw_nodes(model):
        inst = getCustomOp(node)
        finn_res = inst.node_res_estimation(fpgapart)
        res = node_resources(inst, fpgapart, model)
        sb = stored_bits(model, node)
        for r in RESOURCES:
            finn_total[r] += float(finn_res.get(r, 0))
            total[r] += res[r]
        for k in bits:
            bits[k] += sb[k]
        layers.append({"name": node.name, "op_type": node.op_type,
                       "cycles": int(inst.get_exp_cycles()),
                       **{r: res[r] for r in RESOURCES},
                       "weight_bits": sb["weights"], "threshold_bits": sb["thresholds"],
                       "other_bits": sb["other"],
                       "weight_dtype": (str(inst.get_input_datatype(1).name)
                                        if node.op_type.startswith("MVAU") else None),
                       "folding": _attrs(inst)})
    cap = board.capacity()
    # None: used on a board that has none of it
    util = {r: (total[r] / cap[r] if cap[r] else (None if total[r] else 0.0)) for r in RESOURCES}
    max_cycles = int(perf["max_cycles"])
    clk_hz = clock_mhz * 1e6
    report = {
        "board": board.name, "part": board.part, "clock_mhz": clock_mhz,
        "capacity": cap,
        "estimated_fps": clk_hz / max_cycles,
        "max_cycles": max_cycles,
        "bottleneck": perf["max_cycles_node_name"],
        "latency_cycles": int(perf["critical_path_cycles"]),
        "latency_us": int(perf["critical_path_cycles"]) / clock_mhz,
        "resources": total,
        "finn_resources": finn_total,
        "utilization": util,
        "fits": fits(total, board),
        "fit_budget": FIT_BUDGET,
        "fit_rule": budget_label(board),
        "stored_bits": {**bits, "total": sum(bits.values()),
                        "total_kib": sum(bits.values()) / 8 / 1024},
        "layers": layers,
        "folding": folding if folding is not None else {},
        "notes": ["FINN's estimates leave out FIFOs, data-width converters, DMA and the Zynq shell.",
                  "Latency is FINN's critical-path sum (pessimistic: no overlap between layers)."],
    }
    if extra:
        report.update(extra)
    return report


def fit_check(report: dict, board: Board | None = None) -> None:
    """Raise DoesNotFitError (numbers + a hint) unless the estimate fits the board's budget
    (`hw_build.boards.fits`: every resource within FIT_BUDGET of the board)."""
    cap = board.capacity() if board is not None else report["capacity"]
    name = board.name if board is not None else report["board"]
    over = over_budget(report["resources"], cap)
    if not over:
        return
    nums = ", ".join(f"{r} {report['resources'][r]:,.0f} > {FIT_BUDGET * cap[r]:,.0f}" for r in over)
    hint = ("lower --target-fps (or drop it: the default picks the fastest folding that fits), "
            "use a cheaper shortcut (P, fewer shortcut weight bits, none) or smaller widths")
    raise DoesNotFitError(f"design does not fit {name} ({report['part']}) at "
                          f"{report['estimated_fps']:,.0f} fps estimated: {nums} "
                          f"(budget: {100 * FIT_BUDGET:.0f} % of the board); hint: {hint}",
                          report)


def _fmt(v) -> str:
    return f"{v:,.0f}" if isinstance(v, (int, float)) else str(v)


def summary_markdown(report: dict) -> str:
    """Short markdown: totals vs capacity, then one row per layer."""
    cap, res = report["capacity"], report["resources"]
    lines = [f"# Estimate: {report.get('model', '')} on {report['board']} @ {report['clock_mhz']:g} MHz".rstrip(),
             "",
             f"- estimated throughput: **{report['estimated_fps']:,.0f} fps** "
             f"({report['max_cycles']} cycles/frame, bottleneck {report['bottleneck']})",
             f"- latency (critical path): {report['latency_cycles']:,} cycles = {report['latency_us']:.2f} us",
             f"- stored parameters: {report['stored_bits']['weights']:,} weight bits, "
             f"{report['stored_bits']['thresholds']:,} threshold bits "
             f"({report['stored_bits']['total_kib']:.1f} KiB in all)",
             f"- folding: {report.get('folding_source', 'n/a')}",
             f"- fits: **{'yes' if report['fits'] else 'NO'}** ({report.get('fit_rule', 'n/a')})",
             "",
             "| resource | estimate | capacity | use |", "|---|---:|---:|---:|"]
    for r in RESOURCES:
        if cap[r] or res[r]:
            u = report["utilization"][r]
            lines.append(f"| {r} | {_fmt(res[r])} | {_fmt(cap[r])} | "
                         f"{'no such resource' if u is None else f'{100 * u:.1f} %'} |")
    lines += ["", "| layer | PE | SIMD | cycles | LUT | BRAM18 | DSP | weight bits | threshold bits |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for L in report["layers"]:
        f = L["folding"]
        lines.append(f"| {L['name']} | {f.get('PE', '')} | {f.get('SIMD', '')} | {L['cycles']:,} | "
                     f"{_fmt(L['LUT'])} | {_fmt(L['BRAM_18K'])} | {_fmt(L['DSP'])} | "
                     f"{L['weight_bits']:,} | {L['threshold_bits']:,} |")
    return "\n".join(lines) + "\n"


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def write_report(report: dict, out_dir: str | Path) -> tuple[Path, Path]:
    """Write report.json and report.md into out_dir."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rj, rm = out_dir / "report.json", out_dir / "report.md"
    rj.write_text(json.dumps(report, indent=2, default=_json_default))
    rm.write_text(summary_markdown(report))
    return rj, rm
