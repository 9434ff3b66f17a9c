"""ResBin's build steps after the HW graph, and the default step list.

Every step is a module-level function `step_x(model, cfg) -> model` (FINN's signature; `cfg` is a
`hw_build.config.ResBinBuildConfig`), named in `DEFAULT_STEPS` by FINN's own convention: a stock
step by its name, ours as `module.function`. A new step is one function here (or in
`hw_build.steps` for HW-graph rewrites) plus one name in the list.
"""
from __future__ import annotations

from core.files import read_json, write_json
from hw_build.finn_env import ensure_finn

ensure_finn()

from finn.builder.build_dataflow_steps import build_dataflow_step_lookup as finn_steps  # noqa: E402
from qonnx.core.modelwrapper import ModelWrapper  # noqa: E402

from hw_build import steps as hw_steps  # noqa: E402

__all__ = ["DEFAULT_STEPS", "GRAPH_STEPS", "CODE_STEPS", "XILINX_STEPS", "TOOL_STEPS",
           "default_steps", "step_name", "step_resbin_folding",
           "step_resbin_minimize_bit_width_folded", "step_resbin_estimate", "step_resbin_golden"]


def step_resbin_folding(model: ModelWrapper, cfg) -> ModelWrapper:
    """PE/SIMD and memory styles: a folding file, FINN's SetFolding at the target, or ours, the
    resource-aware search (the cheapest folding that meets the target, or the fastest within
    the board's budget); writes folding_config.json and folding_info.json."""
    from hw_build import folding as fold

    if cfg.folding_file is not None:
        model = fold.apply_folding_file(model, cfg.folding_file)
        info = {"method": "file", "file": cfg.folding_file}
    elif cfg.folding_search == "stock":
        model = fold.stock_folding(model, cfg.frame_rate, cfg.clock_mhz)
        info = {"method": "finn_set_folding", "target_fps": cfg.frame_rate,
                "target_cycles": fold.cycles_per_frame(cfg.frame_rate, cfg.clock_mhz)}
    else:
        model, info = fold.resource_aware_folding(
            model, cfg.target_board, budget_fraction=cfg.budget_fraction,
            target_fps=cfg.frame_rate, clock_mhz=cfg.clock_mhz)
    fold.save_folding(model, cfg.out / "folding_config.json")
    write_json(cfg.out / "folding_info.json", info)
    return model


def step_resbin_minimize_bit_width_folded(model: ModelWrapper, cfg) -> ModelWrapper:
    """FINN minimizes bit widths again after folding (implementation specifics), with our fix."""
    return hw_steps.step_resbin_minimize_bit_width(model, cfg)


def _folding_source(info: dict) -> str:
    m = info.get("method")
    if m == "file":
        return f"folding file {info.get('file')}"
    if m == "finn_set_folding":
        return f"FINN SetFolding at target {info.get('target_fps'):,.0f} fps"
    if m == "resource_aware":
        if info.get("mode") == "target":
            return (f"resource-aware search, cheapest folding for "
                    f"{info.get('target_cycles')} cycles/frame")
        return (f"resource-aware search, fastest folding within "
                f"{100 * info.get('budget_fraction', 0):.0f} % of the board")
    return "n/a"


def step_resbin_estimate(model: ModelWrapper, cfg) -> ModelWrapper:
    """FINN's own estimate reports (report/*.json), then ours: report.json / report.md."""
    from hw_build import estimate as est

    finn_steps["step_generate_estimate_reports"](model, cfg)
    out = cfg.out
    info = read_json(out / "folding_info.json") or {}
    report = est.collect_report(
        model, cfg.target_board, cfg.clock_mhz, folding=read_json(out / "folding_config.json"),
        extra={**cfg.run_info, "run_dir": cfg.run_dir, "target": cfg.target,
               "target_fps": cfg.frame_rate, "folding_source": _folding_source(info),
               "folding_search": info,
               "finn_network_performance": read_json(out / "report" /
                                                     "estimate_network_performance.json")})
    est.write_report(report, out)
    return model


def step_resbin_golden(model: ModelWrapper, cfg) -> ModelWrapper:
    """golden.npz: what the accelerator computes, for deploy.sim (from hw_graph.onnx)."""
    from hw_build.config import BuildError
    from hw_build.golden import driver_io, write_golden

    hw_graph = cfg.out / hw_steps.HW_GRAPH_FILE
    if not hw_graph.exists():
        raise BuildError(f"{hw_graph}: missing (written by the HW-graph steps); "
                         "delete the build folder and rebuild")
    board = cfg.target_board
    write_golden(ModelWrapper(str(hw_graph)), cfg.out / "golden.npz",
                 meta={**cfg.run_info, "board": board.name, "part": board.part,
                       "clk_ns": 1000.0 / cfg.clock_mhz, "target": cfg.target,
                       "io": driver_io(model)})
    return model


def _ours(fn) -> str:
    return f"{fn.__module__}.{fn.__name__}"


# QONNX model -> HW-layer graph (each checked against the QONNX model: hw_steps.NUMERIC_STEPS)
GRAPH_STEPS = [_ours(f) for f in hw_steps.HW_GRAPH_STEPS]
ESTIMATE_STEPS = ["step_specialize_layers", _ours(step_resbin_folding),
                  _ours(step_resbin_minimize_bit_width_folded), _ours(step_resbin_estimate),
                  _ours(step_resbin_golden)]
# the fit check runs before the first of these (code generation and everything after it)
CODE_STEPS = ["step_hw_codegen"]
XILINX_STEPS = ["step_hw_ipgen", "step_set_fifo_depths", "step_create_stitched_ip",
                "step_synthesize_bitfile", "step_make_driver", "step_deployment_package"]
# the first step needing Xilinx tools, and what it (and the steps after it) need
TOOL_STEPS = {"step_hw_ipgen": ("vitis_hls", "finn-hlslib", "vivado")}
DEFAULT_STEPS = {"estimate": GRAPH_STEPS + ESTIMATE_STEPS,
                 "codegen": GRAPH_STEPS + ESTIMATE_STEPS + CODE_STEPS,
                 "bitstream": GRAPH_STEPS + ESTIMATE_STEPS + CODE_STEPS + XILINX_STEPS}


def default_steps(until: str) -> list[str]:
    return list(DEFAULT_STEPS[until])


def step_name(step: str) -> str:
    """A step's checkpoint name: the function name of `step` (stock or `module.function`)."""
    return step.rsplit(".", 1)[-1]
