"""Folding (PE/SIMD parallelism and memory styles) of a specialized FINN dataflow graph.

Three ways, all producing FINN's JSON folding format (`ApplyConfig`):
- `apply_folding_file`: an explicit file, checked against the graph, applied with ApplyConfig;
- `stock_folding`: FINN's own target-fps search (`SetFolding`);
- `resource_aware_folding`: the fastest (or, with a target, the cheapest) folding that fits a
  resource budget, chosen with FINN's own per-node estimators (`get_exp_cycles`,
  `lut/bram/dsp/uram_estimation`) over every divisor PE/SIMD and memory/resource style.
Call `hw_build.finn_env.ensure_finn()` before using this module.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from hw_build.finn_env import ensure_finn

ensure_finn()


from qonnx.core.modelwrapper import ModelWrapper  # noqa: E402
from qonnx.custom_op.registry import getCustomOp  # noqa: E402

from finn.transformation.fpgadataflow.set_folding import SetFolding, divisors  # noqa: E402
from finn.transformation.general import ApplyConfig  # noqa: E402
from finn.util.basic import MAX_ALLOWED_AP_INT_W  # noqa: E402
from finn.util.config import extract_model_config  # noqa: E402
from finn.util.fpgadataflow import is_hls_node, is_rtl_node  # noqa: E402

from hw_build.boards import FIT_BUDGET, RESOURCES, Board, over_budget  # noqa: E402
from hw_build.estimate import model_resources, node_resources  # noqa: E402

__all__ = ["FoldingError", "FOLDING_ATTRS", "extract_folding", "save_folding", "check_folding",
           "apply_folding_file", "stock_folding", "resource_aware_folding", "cycles_per_frame"]

# The attributes FINN itself writes into auto_folding_config.json (build_dataflow_steps).
FOLDING_ATTRS = ["PE", "SIMD", "EmbFold", "SeqFold", "parallel_window", "ram_style",
                 "ram_style_thresholds", "ram_style_mask", "depth", "impl_style", "resType",
                 "mac_resource", "mem_mode", "runtime_writeable_weights", "depth_trigger_uram",
                 "depth_trigger_bram"]

# "Never" for Thresholding_rtl's depth_trigger_uram: FINN's estimator sends every memory to URAM
# when only depth_trigger_bram is set (it treats trigger 0 as "always"; the RTL as "off").
_NO_URAM = 1 << 30

PE_OPS = ("DuplicateStreams_hls", "Thresholding_hls", "Thresholding_rtl", "GlobalAccPool_hls",
          "ElementwiseAdd_hls", "ElementwiseMul_hls", "ElementwiseSub_hls", "ElementwiseMax_hls",
          "ElementwiseAdd_rtl", "ElementwiseMul_rtl", "LabelSelect_hls", "Reshape_rtl")


class FoldingError(ValueError):
    """A folding file or folding value that does not fit the graph."""


def cycles_per_frame(target_fps: float, clock_mhz: float) -> int:
    """Cycle budget per frame, as FINN computes it (DataflowBuildConfig)."""
    return int(clock_mhz * 1e6 / target_fps)


def _hw_nodes(model: ModelWrapper):
    return [n for n in model.graph.node if is_hls_node(n) or is_rtl_node(n)]


def extract_folding(model: ModelWrapper) -> dict:
    """The model's folding in FINN's JSON format (layers without folding attributes omitted)."""
    cfg = extract_model_config(model, None, FOLDING_ATTRS)
    return {k: v for k, v in cfg.items() if k == "Defaults" or v}


def save_folding(model: ModelWrapper, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(extract_folding(model), indent=2, default=_jsonable))
    return path


def _jsonable(o):
    if hasattr(o, "tolist"):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _max_pe(inst) -> int | None:
    """Largest PE of a PE-folded node (FINN's rule in SetFolding), None if the node has no PE."""
    op = inst.onnx_node.op_type
    if op.startswith("MVAU") or op.startswith("VVAU"):
        return int(inst.get_nodeattr("MH")) if op.startswith("MVAU") else None
    if op == "LabelSelect_hls":
        return int(inst.get_nodeattr("Labels"))
    if op in PE_OPS:
        try:
            return int(inst.get_nodeattr("NumChannels"))
        except AttributeError:
            return int(inst.get_normal_output_shape()[-1])
    return None


def check_folding(model: ModelWrapper, source: str = "folding") -> None:
    """Raise FoldingError if a PE/SIMD value does not divide its dimension."""
    bad = []
    for node in _hw_nodes(model):
        inst = getCustomOp(node)
        op = node.op_type
        if op.startswith("MVAU"):
            for attr, dim in (("SIMD", "MW"), ("PE", "MH")):
                v, d = int(inst.get_nodeattr(attr)), int(inst.get_nodeattr(dim))
                if v < 1 or d % v:
                    bad.append(f"{node.name}.{attr}={v} (must divide {dim}={d})")
        else:
            mp = _max_pe(inst)
            if mp is not None:
                v = int(inst.get_nodeattr("PE"))
                if v < 1 or mp % v:
                    bad.append(f"{node.name}.PE={v} (must divide {mp})")
    if bad:
        raise FoldingError(f"{source}: invalid parallelism: {'; '.join(bad)}")


def apply_folding_file(model: ModelWrapper, path: str | Path) -> ModelWrapper:
    """Apply a FINN folding JSON (checked: known layer names, divisor PE/SIMD) with ApplyConfig."""
    path = Path(path)
    try:
        cfg = json.loads(path.read_text())
    except FileNotFoundError:
        raise FoldingError(f"{path}: folding file not found") from None
    except (OSError, json.JSONDecodeError) as e:
        raise FoldingError(f"{path}: expected a FINN folding JSON object ({e})") from None
    if not isinstance(cfg, dict) or not all(isinstance(v, dict) for v in cfg.values()):
        raise FoldingError(f"{path}: expected a JSON object of layer name -> {{attribute: value}}")
    names = {n.name for n in model.graph.node}
    unknown = sorted(k for k in cfg if k != "Defaults" and k not in names)
    if unknown:
        raise FoldingError(f"{path}: layers not in the graph: {', '.join(unknown)} "
                           f"(graph layers: {', '.join(n.name for n in _hw_nodes(model))})")
    for name, attrs in cfg.items():
        if name == "Defaults":
            continue
        inst = getCustomOp(model.get_node_from_name(name))
        known = inst.get_nodeattr_types()
        extra = sorted(a for a in attrs if a not in known)
        if extra:
            raise FoldingError(f"{path}: {name} ({inst.onnx_node.op_type}) has no attribute(s) "
                               f"{', '.join(extra)}")
    model = model.transform(ApplyConfig(str(path)))
    check_folding(model, str(path))
    return model


def stock_folding(model: ModelWrapper, target_fps: float, clock_mhz: float,
                  mvau_wwidth_max: int = 36, two_pass_relaxation: bool = True) -> ModelWrapper:
    """FINN's stock target-fps search (SetFolding), as step_target_fps_parallelization runs it."""
    return model.transform(SetFolding(cycles_per_frame(target_fps, clock_mhz),
                                       mvau_wwidth_max=mvau_wwidth_max,
                                       two_pass_relaxation=two_pass_relaxation))


# ---------------------------------------------------------------------------------------------
# resource-aware search

@dataclass
class _Option:
    attrs: dict
    cycles: int
    res: dict


@dataclass
class _NodeChoices:
    name: str
    options: list[_Option] = field(default_factory=list)


def _mvau_options(inst) -> list[dict]:
    op = inst.onnx_node.op_type
    mw, mh = int(inst.get_nodeattr("MW")), int(inst.get_nodeattr("MH"))
    wbits = inst.get_input_datatype(1).bitwidth()
    abits = inst.get_input_datatype(0).bitwidth()
    xnor = int(inst.get_nodeattr("binaryXnorMode")) == 1
    decoupled = inst.get_nodeattr("mem_mode") == "internal_decoupled"
    ram = ["block", "distributed"] if decoupled else [None]
    thr = ["distributed", "block"] if (op == "MVAU_hls" and int(inst.get_nodeattr("noActivation")) == 0) else [None]
    # DSPs only where there is a real multiplier (XNOR and +-1 weights are add/sub in LUTs)
    rt = ["lut", "dsp"] if (op == "MVAU_hls" and not xnor and wbits > 1 and abits > 1) else [None]
    out = []
    for simd in divisors(mw):
        if is_hls_node(inst.onnx_node) and simd * abits > MAX_ALLOWED_AP_INT_W:
            break
        for pe in divisors(mh):
            if is_hls_node(inst.onnx_node) and pe * simd * wbits > MAX_ALLOWED_AP_INT_W:
                break
            for r in ram:
                for t in thr:
                    for d in rt:
                        a = {"SIMD": simd, "PE": pe}
                        if r is not None:
                            a["ram_style"] = r
                        if t is not None:
                            a["ram_style_thresholds"] = t
                        if d is not None:
                            a["resType"] = d
                        out.append(a)
    return out


def _pe_options(inst) -> list[dict]:
    op = inst.onnx_node.op_type
    mp = _max_pe(inst)
    styles = [{}]
    if op == "Thresholding_rtl":
        # auto (Vivado decides), all in BRAM, all in LUTRAM (thresholding.sv: a non-zero
        # DEPTH_TRIGGER_BRAM above every depth means "distributed")
        styles = [{"depth_trigger_bram": 0, "depth_trigger_uram": 0},
                  {"depth_trigger_bram": 1, "depth_trigger_uram": _NO_URAM},
                  {"depth_trigger_bram": _NO_URAM, "depth_trigger_uram": _NO_URAM}]
    elif op == "Thresholding_hls":
        styles = [{"ram_style": "distributed"}, {"ram_style": "block"}]
    return [{"PE": pe, **s} for pe in divisors(mp) for s in styles]


def _options(inst) -> list[dict] | None:
    op = inst.onnx_node.op_type
    if op in ("MVAU_hls", "MVAU_rtl"):
        return _mvau_options(inst)
    if op in PE_OPS:
        return _pe_options(inst)
    return None  # left to FINN's SetFolding (e.g. sliding windows coupled to their consumer)


def _enumerate(model: ModelWrapper, fpgapart: str) -> dict[str, _NodeChoices]:
    """Cycles and resources of every option of every searchable node (FINN's estimators)."""
    table = {}
    for node in _hw_nodes(model):
        inst = getCustomOp(node)
        opts = _options(inst)
        if opts is None:
            continue
        # the attribute-type table does not depend on attribute values; FINN rebuilds it on every
        # get_nodeattr, which dominates the time of this loop (this instance is ours alone)
        types = inst.get_nodeattr_types()
        inst.get_nodeattr_types = lambda types=types: types
        saved = {k: inst.get_nodeattr(k) for k in {k for o in opts for k in o}}
        ch = _NodeChoices(node.name)
        for a in opts:
            for k, v in a.items():
                inst.set_nodeattr(k, v)
            ch.options.append(_Option(a, int(inst.get_exp_cycles()),
                                      node_resources(inst, fpgapart, model)))
        for k, v in saved.items():
            inst.set_nodeattr(k, v)
        table[node.name] = ch
    return table


def _cost(res: dict, weights: dict) -> float:
    return sum(res.get(r, 0) * w for r, w in weights.items())


def _pick(ch: _NodeChoices, t: int, weights: dict) -> _Option | None:
    best = None
    for o in ch.options:
        if o.cycles <= t:
            # equal cost: the least parallel option (FINN costs stream plumbing at 0 LUT)
            key = (_cost(o.res, weights), -o.cycles)
            if best is None or key < best[0]:
                best = (key, o)
    return None if best is None else best[1]


def _apply(model: ModelWrapper, picks: dict[str, _Option]) -> None:
    for name, o in picks.items():
        inst = getCustomOp(model.get_node_from_name(name))
        for k, v in o.attrs.items():
            inst.set_nodeattr(k, v)


def _budget(board: Board, fraction: float) -> dict[str, float]:
    return {r: board.capacity()[r] * fraction for r in RESOURCES}


def _try_target(model: ModelWrapper, table, t: int, board: Board, fraction: float, fpgapart: str,
                rounds: int = 8):
    """Fold every node for <= t cycles at minimum weighted cost; re-weight overflowing resources.

    Returns (model, picks, totals, fits).
    """
    m = model.transform(SetFolding(t, mvau_wwidth_max=MAX_ALLOWED_AP_INT_W,
                                   two_pass_relaxation=False))
    budget = _budget(board, fraction)
    # a resource with no capacity (e.g. URAM on a Zynq-7000) must never be chosen
    weights = {r: (1.0 / budget[r]) if budget[r] > 0 else 1e9 for r in RESOURCES}
    best = None
    for _ in range(rounds):
        picks = {}
        for name, ch in table.items():
            o = _pick(ch, t, weights)
            if o is None:  # this node cannot reach t: its fastest option
                o = min(ch.options, key=lambda o: (o.cycles, _cost(o.res, weights)))
            picks[name] = o
        _apply(m, picks)
        total = model_resources(m, fpgapart)
        over = over_budget(total, board, fraction)
        peak = max(total.get(r, 0) / budget[r] if budget[r] > 0 else
                   (math.inf if total.get(r, 0) else 0) for r in RESOURCES)
        if best is None or peak < best[0]:
            best = (peak, dict(picks), total)
        if not over:
            break
        for r in over:
            weights[r] *= 4.0
    peak, picks, total = best
    _apply(m, picks)
    return m, picks, total, peak <= 1.0 + 1e-9


def _max_cycles(model: ModelWrapper) -> int:
    return max(int(getCustomOp(n).get_exp_cycles()) for n in _hw_nodes(model))


def resource_aware_folding(model: ModelWrapper, board: Board, *, fpgapart: str | None = None,
                           budget_fraction: float = FIT_BUDGET, target_fps: float | None = None,
                           clock_mhz: float = 100.0) -> tuple[ModelWrapper, dict]:
    """Fastest folding whose estimate fits `budget_fraction` of the board (target_fps=None), or
    the cheapest folding that meets `target_fps`.

    For a cycle target T every searchable layer takes its cheapest option (PE/SIMD divisors x
    memory/resource styles, costed by FINN's per-node estimators, each resource weighted by
    1/budget) whose expected cycles are <= T; weights of resources that overflow are raised
    and the choice repeated. The smallest T that fits is found by bisection over the cycle
    counts the options can reach. Returns the folded model and a summary dict.
    """
    if not 0 < budget_fraction <= 1.5:
        raise FoldingError(f"budget fraction {budget_fraction}: expected a number in (0, 1.5]")
    fpgapart = fpgapart or board.part
    budget = _budget(board, budget_fraction)
    table = _enumerate(model, fpgapart)
    if not table:
        raise FoldingError("no foldable layer (MVAU/Thresholding/...) in the graph")
    # the slowest layer at its fastest option bounds every folding from below
    floor = max(min(o.cycles for o in ch.options) for ch in table.values())
    info = {"method": "resource_aware", "budget_fraction": budget_fraction,
            "budget": budget, "n_options": sum(len(c.options) for c in table.values())}
    if target_fps is not None:
        t = max(cycles_per_frame(target_fps, clock_mhz), 1)
        m, picks, total, fits = _try_target(model, table, t, board, budget_fraction, fpgapart)
        info.update(mode="target", target_fps=target_fps, target_cycles=t, fits_budget=fits)
    else:
        cands = sorted({o.cycles for ch in table.values() for o in ch.options if o.cycles >= floor})
        lo, hi = 0, len(cands) - 1
        m, picks, total, fits = _try_target(model, table, cands[hi], board, budget_fraction, fpgapart)
        best = (m, picks, total, fits, cands[hi])
        if fits:
            while lo < hi:  # smallest candidate T that fits
                mid = (lo + hi) // 2
                r = _try_target(model, table, cands[mid], board, budget_fraction, fpgapart)
                if r[3]:
                    best, hi = (*r, cands[mid]), mid
                else:
                    lo = mid + 1
        m, picks, total, fits, t = best
        # the layers that are not the bottleneck may have been over-provisioned: re-fold at
        # the bottleneck's cycles (never slower, never more resources)
        achieved = _max_cycles(m)
        if achieved < t:
            r = _try_target(model, table, achieved, board, budget_fraction, fpgapart)
            if r[3]:
                m, picks, total, fits = r
                t = achieved
        info.update(mode="fastest", target_cycles=t, fits_budget=fits)
    info.update(max_cycles=_max_cycles(m), estimated_fps=clock_mhz * 1e6 / _max_cycles(m),
                resources=total)
    return m, info
