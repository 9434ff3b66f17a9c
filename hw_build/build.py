"""The FINN build of one trained run for one board: steps, resume, fit check, stop without Xilinx.

`build(run_dir, ...)` runs FINN's step functions (H4a's HW-graph steps, then specialize ->
folding -> minimize bit width -> estimate reports -> HLS/RTL code generation -> with Vivado and
Vitis HLS: IP generation, FIFO sizing, stitched IP, bitfile, driver, deployment package) with a
`DataflowBuildConfig`, saving a checkpoint per completed step in `<out>/steps/` and the progress
in `<out>/build_state.json`, so that an interrupted build resumes at the next step.
The loop is ours rather than `build_dataflow_cfg`, which swallows exceptions into an exit code,
redirects sys.stdout for good, and cannot stop before a step with a typed error.
"""
from __future__ import annotations

import contextlib
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from deploy.bundle import sha256
from hw_build.boards import Board, get_board
from hw_build.finn_env import MissingToolError, ensure_finn, tools

__all__ = ["build", "BuildError", "StepError", "Step", "out_dir_for", "target_name", "UNTIL", "STATE_FILE",
           "TOOL_STEPS"]

UNTIL = ("estimate", "codegen", "bitstream")
STATE_FILE = "build_state.json"
# the first step needing Xilinx tools, and what it (and the steps after it) need
TOOL_STEPS = {"step_hw_ipgen": ("vitis_hls", "finn-hlslib", "vivado")}
_XILINX_STEPS = ("step_hw_ipgen", "step_set_fifo_depths", "step_create_stitched_ip",
                 "step_synthesize_bitfile", "step_make_driver", "step_deployment_package")


# files a build writes beside steps/ (removed when a folder is rebuilt from scratch)
_ARTIFACTS = ("report.json", "report.md", "golden.npz", "hw_graph.onnx", "folding_config.json",
              "folding_info.json", "reference.npz")


class BuildError(ValueError):
    """Bad build arguments or run folder (a user error: exit code 2)."""


class StepError(RuntimeError):
    """A FINN step failed (exit code 1); the traceback is in the build log."""


def _is_ours(e: Exception) -> bool:
    """Errors of this project (one-line messages meant for the user) pass through unchanged."""
    mod = type(e).__module__ or ""
    return mod.split(".")[0] in ("hw_build", "train", "export")


@dataclass
class Step:
    name: str
    fn: Callable  # (ModelWrapper, DataflowBuildConfig) -> ModelWrapper
    stage: str    # "graph" | "estimate" | "codegen" | "bitstream"


def _num(x: float) -> str:
    """1000000 -> '1e6', 125000 -> '125e3', 2.5 -> '2p5' (file-name safe)."""
    if float(x).is_integer() and x > 0:
        n, e = int(x), 0
        while n % 10 == 0:
            n, e = n // 10, e + 1
        return f"{n}e{e}" if e else str(n)
    return f"{x:g}".replace(".", "p").replace("+", "")


def target_name(target_fps: float | None = None, folding: str | Path | None = None,
                search: str = "resource", budget_fraction: float = 0.9) -> str:
    if folding is not None:
        return f"folding-{Path(folding).stem}"
    if target_fps is not None:
        return f"fps{_num(target_fps)}" + ("-stock" if search == "stock" else "")
    return "auto" if budget_fraction == 0.9 else f"auto-b{_num(budget_fraction)}"


def out_dir_for(run_dir: str | Path, board: Board, clock_mhz: float, target: str) -> Path:
    clk = "" if clock_mhz == board.clock_mhz else f"-{_num(clock_mhz)}MHz"
    return Path(run_dir) / "hw" / f"{board.name}-{target}{clk}"


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _write_json(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str))
    tmp.replace(path)


def _run_info(run_dir: Path) -> dict:
    cfg = _read_json(run_dir / "config.json") or {}
    return {"dataset": cfg.get("dataset"), "model": cfg.get("model")}


# ---------------------------------------------------------------------------------------------

def _make_steps(ctx: dict, graph_steps, mbw_step) -> list[Step]:
    """The full ordered step list (the `until` cut is applied by the caller)."""
    from finn.builder.build_dataflow_steps import build_dataflow_step_lookup as finn_steps
    from qonnx.core.modelwrapper import ModelWrapper

    from hw_build import estimate as est
    from hw_build import folding as fold

    board: Board = ctx["board"]
    out: Path = ctx["out_dir"]

    def step_resbin_folding(model, cfg):
        if ctx["folding"] is not None:
            model = fold.apply_folding_file(model, ctx["folding"])
            info = {"method": "file", "file": str(ctx["folding"])}
        elif ctx["search"] == "stock":
            model = fold.stock_folding(model, ctx["target_fps"], ctx["clock_mhz"])
            info = {"method": "finn_set_folding", "target_fps": ctx["target_fps"],
                    "target_cycles": fold.cycles_per_frame(ctx["target_fps"], ctx["clock_mhz"])}
        else:
            model, info = fold.resource_aware_folding(
                model, board, budget_fraction=ctx["budget_fraction"],
                target_fps=ctx["target_fps"], clock_mhz=ctx["clock_mhz"])
        fold.save_folding(model, out / "folding_config.json")
        _write_json(out / "folding_info.json", info)
        return model

    def step_resbin_estimate(model, cfg):
        finn_steps["step_generate_estimate_reports"](model, cfg)  # FINN's own report/*.json
        info = _read_json(out / "folding_info.json") or {}
        finn_perf = _read_json(out / "report" / "estimate_network_performance.json")
        report = est.collect_report(
            model, board, ctx["clock_mhz"],
            folding=_read_json(out / "folding_config.json"),
            extra={**ctx["run_info"], "run_dir": str(ctx["run_dir"]), "target": ctx["target"],
                   "target_fps": ctx["target_fps"], "folding_source": _folding_source(info),
                   "folding_search": info, "finn_network_performance": finn_perf})
        est.write_report(report, out)
        return model

    def step_resbin_golden(model, cfg):
        from hw_build.golden import driver_io, write_golden

        hw_graph = out / "hw_graph.onnx"
        if not hw_graph.exists():
            raise BuildError(f"{hw_graph}: missing (written by the HW-graph steps); "
                             "delete the build folder and rebuild")
        write_golden(ModelWrapper(str(hw_graph)), out / "golden.npz",
                     meta={**ctx["run_info"], "board": board.name, "part": board.part,
                           "clk_ns": 1000.0 / ctx["clock_mhz"], "target": ctx["target"],
                           "io": driver_io(model)})
        return model

    steps = [Step(getattr(f, "__name__", str(f)), f, "graph") for f in graph_steps]
    steps += [Step("step_specialize_layers", finn_steps["step_specialize_layers"], "estimate"),
              Step("step_resbin_folding", step_resbin_folding, "estimate"),
              # FINN minimizes bit widths again after folding (implementation specifics)
              Step("step_resbin_minimize_bit_width_folded", mbw_step, "estimate"),
              Step("step_resbin_estimate", step_resbin_estimate, "estimate"),
              Step("step_resbin_golden", step_resbin_golden, "estimate"),
              Step("step_hw_codegen", finn_steps["step_hw_codegen"], "codegen")]
    steps += [Step(n, finn_steps[n], "bitstream") for n in _XILINX_STEPS]
    return steps


def _seed_from_sibling(out: Path, run_dir: Path, config: dict, graph_names: list[str],
                       progress: bool) -> list[str]:
    """Copy the HW-graph steps (and step_specialize_layers if the FPGA part is the same) of
    another build of the same QONNX model, so that a new board/target/folding does not redo
    them. Returns the step names now completed in `out` (empty if no build matches)."""
    import shutil

    same = ("qonnx_sha256", "verify_n", "standalone_thresholds")
    best: tuple[list[str], Path] | None = None
    for d in {p.parent for base in (out.parent, run_dir / "hw") if base.is_dir()
              for p in base.glob(f"*/{STATE_FILE}")}:
        if d.resolve() == out.resolve():
            continue
        st = _read_json(d / STATE_FILE) or {}
        c = st.get("config") or {}
        if any(c.get(k) != config[k] for k in same) or c.get("steps", [])[:len(graph_names)] != \
                graph_names:
            continue
        shared = list(graph_names)
        if c.get("part") == config["part"]:
            shared.append("step_specialize_layers")
        done = []
        for name in shared:
            if name not in st.get("completed", []) or not (d / "steps" / f"{name}.onnx").exists():
                break
            done.append(name)
        if len(done) >= len(graph_names) and (d / "hw_graph.onnx").exists() and \
                (best is None or len(done) > len(best[0])):
            best = (done, d)
    if best is None:
        return []
    done, d = best
    for name in done:
        shutil.copyfile(d / "steps" / f"{name}.onnx", out / "steps" / f"{name}.onnx")
    for f in ("hw_graph.onnx", "reference.npz"):
        if (d / f).exists():
            shutil.copyfile(d / f, out / f)
    if progress:
        print(f"hw_build: reusing {len(done)} steps (HW graph) of {d}", file=sys.stderr)
    return done


def _verified_steps(graph_steps, run_dir: Path, qonnx: Path, out: Path, n: int):
    """Wrap the numerics-changing HW-graph steps in hw_build.verify's check against the QONNX
    model's integer outputs on the first `n` test images (reference.npz, computed once)."""
    from hw_build import steps as hw_steps
    from hw_build import verify

    ref_path = out / verify.REFERENCE_FILE
    ref = None
    if ref_path.exists():
        ref = verify.Reference.load(ref_path)
        if len(ref.x) != n:
            ref = None
    if ref is None:
        ref = verify.reference_batch(run_dir, n=n, qonnx_model=qonnx)
        ref.save(ref_path)
    return [verify.verified(s, ref) if getattr(s, "__name__", "") in hw_steps.NUMERIC_STEPS else s
            for s in graph_steps]


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


def _make_cfg(board: Board, clock_mhz: float, out_dir: Path, until: str,
              standalone_thresholds: bool = False):
    import finn.builder.build_dataflow_config as bc

    outputs = [bc.DataflowOutputType.ESTIMATE_REPORTS]
    if until == "bitstream":
        outputs += [bc.DataflowOutputType.STITCHED_IP, bc.DataflowOutputType.BITFILE,
                    bc.DataflowOutputType.PYNQ_DRIVER, bc.DataflowOutputType.DEPLOYMENT_PACKAGE]
    cfg = bc.DataflowBuildConfig(
        output_dir=str(out_dir), synth_clk_period_ns=1000.0 / clock_mhz, board=board.finn_board,
        fpga_part=board.part, shell_flow_type=bc.ShellFlowType(board.shell_flow_type),
        generate_outputs=outputs, save_intermediate_models=False, verbose=False,
        standalone_thresholds=standalone_thresholds)
    cfg.get_report_directory().mkdir(parents=True, exist_ok=True)
    return cfg


def _produced(out: Path, model=None) -> str:
    """What an interrupted/stopped build has produced so far (one line)."""
    items = [f for f in ("report.json", "report.md", "golden.npz", "hw_graph.onnx",
                         "folding_config.json") if (out / f).exists()]
    if model is not None:
        from qonnx.custom_op.registry import getCustomOp

        dirs = []
        for n in model.graph.node:
            try:
                d = getCustomOp(n).get_nodeattr("code_gen_dir_ipgen")
            except (AttributeError, Exception):
                continue
            if d and Path(d).is_dir():
                dirs.append(d)
        if dirs:
            items.append(f"HLS/RTL code of {len(dirs)} layers (under {Path(dirs[0]).parent})")
    return f"produced in {out}: " + (", ".join(items) if items else "nothing yet")


@contextlib.contextmanager
def _quiet(log_path: Path):
    """FINN's prints, warnings and log records go to the build log, not the console."""
    import logging
    import warnings

    with open(log_path, "a") as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f), \
            warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = lambda msg, cat, fn, ln, file=None, line=None: f.write(
            warnings.formatwarning(msg, cat, fn, ln, line))
        handler = logging.StreamHandler(f)
        root = logging.getLogger()
        root.addHandler(handler)
        old_level = root.level
        root.setLevel(logging.INFO)
        try:
            yield f
        finally:
            root.removeHandler(handler)
            root.setLevel(old_level)


def build(run_dir: str | Path, *, board: str | Board = "Pynq-Z2", clock_mhz: float | None = None,
          target_fps: float | None = None, folding: str | Path | None = None,
          search: str = "resource", budget_fraction: float = 0.9, until: str = "estimate",
          out_dir: str | Path | None = None, resume: bool = True, check_fit: bool = True,
          progress: bool = True, verify_n: int = 100, standalone_thresholds: bool = True,
          graph_steps=None, mbw_step=None,
          model_file: str | Path | None = None, _stop_after: str | None = None) -> dict:
    """Build `run_dir`'s QONNX model for `board` up to `until`; returns the report dict.

    target_fps=None and folding=None: the fastest folding that fits `budget_fraction` of the
    board; target_fps: the cheapest folding that meets it (search="stock": FINN's SetFolding);
    folding: a FINN folding JSON. Raises BuildError (bad input), DoesNotFitError (check_fit and
    the estimate exceeds the board: checked right after the estimate step, before any code
    generation), MissingToolError (right before step_hw_ipgen without Vivado/Vitis HLS),
    hw_build.verify.DivergenceError (a HW-graph step changed the integer outputs of the first
    `verify_n` test images against the QONNX model; 0 skips these checks).
    standalone_thresholds (FINN's option): every requantization is its own Thresholding_rtl
    layer (binary-search thresholds, memory in LUTRAM/BRAM) instead of comparators inside the
    MVAU; measured on the thesis model (784-128-88-88-10, Q8 shortcut, Pynq-Z2): 781k instead of
    223k fps estimated within 90 % of the board.
    """
    ensure_finn()
    from qonnx.core.modelwrapper import ModelWrapper

    from hw_build import estimate as est

    if until not in UNTIL:
        raise BuildError(f"until={until!r}: expected one of {', '.join(UNTIL)}")
    if search not in ("resource", "stock"):
        raise BuildError(f"search={search!r}: expected 'resource' or 'stock'")
    if folding is not None and target_fps is not None:
        raise BuildError("give either a target frame rate or a folding file, not both")
    if search == "stock" and target_fps is None and folding is None:
        raise BuildError("FINN's stock folding search needs a target frame rate (--target-fps)")
    if target_fps is not None and not target_fps > 0:
        raise BuildError(f"target fps {target_fps}: expected a positive number")
    brd = board if isinstance(board, Board) else get_board(board)
    clock_mhz = float(clock_mhz or brd.clock_mhz)
    if not 1.0 <= clock_mhz <= 1000.0:
        raise BuildError(f"clock {clock_mhz} MHz: expected 1..1000 MHz")
    run_dir = Path(run_dir)
    qonnx = Path(model_file) if model_file is not None else run_dir / "model.qonnx.onnx"
    if not qonnx.exists():
        raise BuildError(f"{qonnx}: no exported QONNX model (run the export stage first)")
    if folding is not None:
        folding = Path(folding).resolve()
        if not folding.exists():
            raise BuildError(f"{folding}: folding file not found")
    target = target_name(target_fps, folding, search, budget_fraction)
    out = Path(out_dir) if out_dir is not None else out_dir_for(run_dir, brd, clock_mhz, target)
    out.mkdir(parents=True, exist_ok=True)
    (out / "steps").mkdir(exist_ok=True)

    from hw_build import steps as hw_steps

    graph_steps = hw_steps.HW_GRAPH_STEPS if graph_steps is None else graph_steps
    mbw_step = hw_steps.step_resbin_minimize_bit_width if mbw_step is None else mbw_step
    ctx = {"board": brd, "clock_mhz": clock_mhz, "target_fps": target_fps, "folding": folding,
           "search": search, "budget_fraction": budget_fraction, "out_dir": out,
           "run_dir": run_dir, "target": target, "run_info": _run_info(run_dir)}
    all_steps = _make_steps(ctx, graph_steps, mbw_step)
    names = [s.name for s in all_steps]
    config = {"run_dir": str(run_dir.resolve()), "qonnx": str(qonnx.resolve()),
              "qonnx_sha256": sha256(qonnx), "board": brd.name, "part": brd.part,
              "clock_mhz": clock_mhz, "target_fps": target_fps, "search": search,
              "budget_fraction": budget_fraction, "target": target, "verify_n": verify_n,
              "standalone_thresholds": standalone_thresholds,
              "folding": str(folding) if folding else None,
              "folding_sha256": sha256(folding) if folding else None, "steps": names}
    last_stage = {"estimate": "estimate", "codegen": "codegen", "bitstream": "bitstream"}[until]
    order = ["graph", "estimate", "codegen", "bitstream"]
    todo = [s for s in all_steps if order.index(s.stage) <= order.index(last_stage)]

    state = _read_json(out / STATE_FILE) if resume else None
    if state is not None and state.get("config") != config:
        if progress:
            print(f"hw_build: {out} was built with another configuration; starting over",
                  file=sys.stderr)
        state = None
    completed: list[str] = []
    if state is not None:  # the longest prefix of steps done with their checkpoints present
        saved = set(state.get("completed", []))
        for name in names:
            if name not in saved or not (out / "steps" / f"{name}.onnx").exists():
                break
            completed.append(name)
    if not completed:  # start over: nothing of an earlier build may be mistaken for this one's
        for f in (out / "steps").glob("*.onnx"):
            f.unlink()
        for f in _ARTIFACTS:
            (out / f).unlink(missing_ok=True)
        completed = _seed_from_sibling(out, run_dir, config, [s.name for s in all_steps
                                                               if s.stage == "graph"], progress)
    model = ModelWrapper(str(out / "steps" / f"{completed[-1]}.onnx" if completed else qonnx))
    if verify_n and any(getattr(f, "__name__", "") not in completed for f in graph_steps):
        if progress:
            print(f"[hw_build] QONNX reference outputs of {verify_n} test images", file=sys.stderr)
        with _quiet(out / "build.log"):
            graph_steps = _verified_steps(graph_steps, run_dir, qonnx, out, verify_n)
        all_steps = _make_steps(ctx, graph_steps, mbw_step)
        todo = [s for s in all_steps if order.index(s.stage) <= order.index(last_stage)]
    state = {"config": config, "completed": completed, "seconds": {}, "status": "running"}
    if progress and completed:
        print(f"hw_build: resuming {out.name} after {completed[-1]} "
              f"({len(completed)}/{len(todo)} steps done)", file=sys.stderr)
    _write_json(out / STATE_FILE, state)

    cfg = _make_cfg(brd, clock_mhz, out, until, standalone_thresholds)
    log_path = out / "build.log"
    tool_info = None
    fit_checked = False
    n = len(todo)
    for i, step in enumerate(todo, 1):
        if step.name in completed:
            continue
        if step.stage in ("codegen", "bitstream") and check_fit and not fit_checked:
            est.fit_check(_read_json(out / "report.json"), brd)
            fit_checked = True
        if step.name in TOOL_STEPS:
            tool_info = tool_info or tools()
            missing = [t for t in TOOL_STEPS[step.name] if not tool_info[t]["found"]]
            if missing:
                state["status"] = f"stopped before {step.name}: missing {', '.join(missing)}"
                _write_json(out / STATE_FILE, state)
                also = f"(also missing: {', '.join(missing[1:])}) " if missing[1:] else ""
                raise MissingToolError(missing[0], step.name,
                                       also + _produced(out, model) + "; rerun the same command "
                                       "where Vivado and Vitis HLS are installed to continue")
        if progress:
            print(f"[hw_build {i}/{n}] {step.name}", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        with _quiet(log_path) as logf:
            try:
                model = step.fn(model, cfg)
            except (BuildError, MissingToolError):
                raise
            except Exception as e:
                import traceback

                traceback.print_exc(file=logf)
                state["status"] = f"failed in {step.name}"
                _write_json(out / STATE_FILE, state)
                if _is_ours(e):
                    raise
                first = (str(e).strip().splitlines() or [""])[0]
                raise StepError(f"{step.name} failed: {type(e).__name__}: {first} "
                                f"(traceback in {log_path})") from e
        state["seconds"][step.name] = round(time.perf_counter() - t0, 2)
        model.save(str(out / "steps" / f"{step.name}.onnx"))
        completed.append(step.name)
        state["completed"] = completed
        _write_json(out / STATE_FILE, state)
        if step.name == _stop_after:  # tests: simulate an interruption after this step
            raise KeyboardInterrupt(f"stopped after {step.name}")

    state["status"] = f"done ({until})"
    _write_json(out / STATE_FILE, state)
    report = _read_json(out / "report.json")
    if report is None:
        raise BuildError(f"{out}/report.json missing after the estimate step")
    report["out_dir"] = str(out)
    if progress:
        print(est.summary_markdown(report), file=sys.stderr)
    if check_fit and not fit_checked:
        est.fit_check(report, brd)
    return report


# ---------------------------------------------------------------------------------------------
# benchmark table (make bench-hw)

def _target_arg(t) -> float | None:
    if t is None or str(t).lower() == "auto":
        return None
    try:
        v = float(t)
    except ValueError:
        raise BuildError(f"target {t!r}: expected a frame rate such as 1e6, or 'auto'") from None
    if not v > 0:
        raise BuildError(f"target {t!r}: expected a positive frame rate")
    return v


def bench(runs, *, targets=("1e5", "1e6"), board: str = "Pynq-Z2", clock_mhz: float | None = None,
          out: str | Path | None = None, simulate: bool = True, n: int | None = None,
          progress: bool = True) -> list[dict]:
    """Estimate every run at every target (resource-aware folding; 'auto' = the fastest that
    fits), simulate each run's HW graph once on the test set, and write a markdown table.

    Returns one row per (run, target). A design that does not fit is a row with fits = no.
    """
    brd = get_board(board)
    tlist = [_target_arg(t) for t in targets]
    rows, sims = [], {}
    for run in runs:
        run = Path(run)
        for t in tlist:
            rep = build(run, board=brd, clock_mhz=clock_mhz, target_fps=t, until="estimate",
                        check_fit=False, progress=progress)
            if simulate and run not in sims:
                from hw_build.simulate import SimulationError, simulate as sim

                try:
                    sims[run] = sim(rep["out_dir"], n=n, progress=progress)
                except SimulationError as e:  # its counts are in sim.json; the table shows them
                    sims[run] = _read_json(Path(rep["out_dir"]) / "sim.json") or {"error": str(e)}
            s = sims.get(run, {})
            rows.append({"run": str(run), "model": f"{rep.get('model')}{_options_label(run)}",
                         "dataset": rep.get("dataset"),
                         "target": "auto" if t is None else t,
                         "estimated_fps": rep["estimated_fps"], "latency_us": rep["latency_us"],
                         "LUT": rep["resources"]["LUT"], "BRAM_18K": rep["resources"]["BRAM_18K"],
                         "DSP": rep["resources"]["DSP"], "fits": rep["fits"],
                         "sim_accuracy": s.get("accuracy"), "identical": s.get("identical"),
                         "sim_images": s.get("n_images"), "out_dir": rep["out_dir"]})
    if out is not None:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(bench_markdown(rows, brd, clock_mhz or brd.clock_mhz))
        _write_json(out.with_suffix(".json"), rows)
    return rows


def _options_label(run: Path) -> str:
    """The run's non-default build options as its folder suffix, e.g. `__in2_sc4` ('' for defaults)."""
    from train.models import ModelOptions, options_suffix

    cfg = _read_json(run / "config.json") or {}
    return options_suffix(ModelOptions.from_dict(cfg["options"])) if isinstance(cfg.get("options"), dict) else ""


def bench_markdown(rows: list[dict], board: Board, clock_mhz: float) -> str:
    cap = board.capacity()
    lines = [f"# Hardware estimates on {board.name} ({board.part}) at {clock_mhz:g} MHz", "",
             "FINN (finn-plus) estimates after the resource-aware folding search: for a target the "
             "cheapest folding that meets it, for `auto` the fastest folding within 90 % of the "
             f"board. Capacity: {cap['LUT']:,} LUT, {cap['BRAM_18K']} BRAM18, {cap['DSP']} DSP. "
             "Simulated accuracy: FINN Python execution of the HW graph on the test set; "
             "identical: images whose integer outputs equal the QONNX model's.", "",
             "| model | target fps | est. fps | latency (us) | LUT | BRAM18 | DSP | fits | "
             "sim. test acc. | identical to QONNX |",
             "|---|---:|---:|---:|---:|---:|---:|---|---:|---:|"]
    for r in rows:
        tgt = r["target"] if r["target"] == "auto" else f"{r['target']:,.0f}"
        acc = f"{r['sim_accuracy']:.4f}" if isinstance(r.get("sim_accuracy"), float) else "n/a"
        lines.append(f"| `{r['model']}` | {tgt} | {r['estimated_fps']:,.0f} | {r['latency_us']:.2f} | "
                     f"{r['LUT']:,.0f} | {r['BRAM_18K']:,.0f} | {r['DSP']:,.0f} | "
                     f"{'yes' if r['fits'] else 'no'} | {acc} | {r.get('identical') or 'n/a'} |")
    return "\n".join(lines) + "\n"
