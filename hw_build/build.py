"""The FINN build of one trained run for one board: run the config's steps, resume, fit check,
stop before a step whose Xilinx tool is missing.

`build(run_dir, ...)` makes a `hw_build.config.ResBinBuildConfig` and runs its steps (FINN's
`resolve_build_steps` turns their names into functions), saving a checkpoint per completed step
in `<out>/steps/` and the progress in `<out>/build_state.json`, so that an interrupted build
resumes at the next step. After each HW-graph step that changes numerics, the graph's integer
outputs are checked against the QONNX model's (hw_build.verify). The loop is ours rather than
`build_dataflow_cfg`, which swallows exceptions into an exit code, redirects sys.stdout for good,
and cannot stop before a step with a typed error.
"""
from __future__ import annotations

import contextlib
import shutil
import sys
import time
from pathlib import Path

from core.files import read_json, sha256, write_json
from hw_build.boards import Board
from hw_build.config import (BuildError, ResBinBuildConfig, make_config, out_dir_for,
                             target_name)
from hw_build.finn_env import MissingToolError, tools

__all__ = ["build", "run_steps", "BuildError", "StepError", "out_dir_for", "target_name",
           "STATE_FILE", "CONFIG_FILE"]

STATE_FILE = "build_state.json"
CONFIG_FILE = "build_config.json"
LOG_FILE = "build.log"
# files a build writes beside steps/ (removed when a folder is rebuilt from scratch)
_ARTIFACTS = ("report.json", "report.md", "golden.npz", "hw_graph.onnx", "folding_config.json",
              "folding_info.json", "reference.npz", "sim.json", "cppsim.json", "cppsim.md")
# what identifies a build's results: a folder built with other values starts over
_IDENTITY = ("run_dir", "qonnx_file", "fpga_part", "clock_mhz", "frame_rate", "folding_file",
             "folding_search", "budget_fraction", "target", "verify_n", "standalone_thresholds")


class StepError(RuntimeError):
    """A FINN step failed (exit code 1); the traceback is in the build log."""


def _project_error(e: Exception) -> bool:
    """Errors of this project (one-line messages meant for the user) pass through unchanged."""
    mod = type(e).__module__ or ""
    return mod.split(".")[0] in ("hw_build", "train", "export", "core")


def _identity(cfg: ResBinBuildConfig) -> dict:
    ident = {k: getattr(cfg, k) for k in _IDENTITY}
    ident["run_dir"] = str(Path(cfg.run_dir).resolve())  # one build however the run is spelled
    ident["qonnx_file"] = str(Path(cfg.qonnx_file).resolve())
    ident["qonnx_sha256"] = sha256(cfg.qonnx_file)
    ident["board"] = cfg.target_board.name
    ident["folding_sha256"] = sha256(cfg.folding_file) if cfg.folding_file else None
    ident["folding_file"] = str(Path(cfg.folding_file).resolve()) if cfg.folding_file else None
    return ident


def _done_prefix(out: Path, names: list[str], completed) -> list[str]:
    """The longest prefix of `names` completed with its checkpoints present."""
    done = []
    for name in names:
        if name not in completed or not (out / "steps" / f"{name}.onnx").exists():
            break
        done.append(name)
    return done


def _seed_from_sibling(cfg: ResBinBuildConfig, ident: dict, graph_names: list[str],
                       progress: bool) -> list[str]:
    """Copy the HW-graph steps (and step_specialize_layers if the FPGA part is the same) of
    another build of the same QONNX model, so that a new board/target/folding does not redo
    them. Returns the step names now completed in the build folder (empty if none matches)."""
    out, same = cfg.out, ("qonnx_sha256", "verify_n", "standalone_thresholds")
    best: tuple[list[str], Path] | None = None
    for d in {p.parent for base in (out.parent, Path(cfg.run_dir) / "hw") if base.is_dir()
              for p in base.glob(f"*/{STATE_FILE}")}:
        st = read_json(d / STATE_FILE) or {}
        other = st.get("identity") or {}
        if d.resolve() == out.resolve() or any(other.get(k) != ident[k] for k in same):
            continue
        shared = graph_names + (["step_specialize_layers"]
                                if other.get("fpga_part") == ident["fpga_part"] else [])
        done = _done_prefix(d, shared, st.get("completed", []))
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
            except Exception:  # not a HW node, or no such attribute
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


class _Checks:
    """The QONNX reference outputs (reference.npz, computed once) and the check after each
    numerics-changing HW-graph step."""

    def __init__(self, cfg: ResBinBuildConfig, progress: bool):
        self.cfg, self.progress, self.ref = cfg, progress, None

    def after(self, name: str, model) -> None:
        from hw_build import steps as hw_steps
        from hw_build import verify

        if not self.cfg.verify_n or name not in hw_steps.NUMERIC_STEPS:
            return
        if self.ref is None:
            path = self.cfg.out / verify.REFERENCE_FILE
            ref = verify.Reference.load(path) if path.exists() else None
            if ref is None or len(ref.x) != self.cfg.verify_n:
                if self.progress:
                    print(f"[hw_build] QONNX reference outputs of {self.cfg.verify_n} test images",
                          file=sys.stderr)
                ref = verify.reference_batch(self.cfg.run_dir, n=self.cfg.verify_n,
                                             qonnx_model=self.cfg.qonnx_file)
                ref.save(path)
            self.ref = ref
        verify.check_step(name, model, self.ref)


def _start(cfg: ResBinBuildConfig, names: list[str], resume: bool, progress: bool) -> dict:
    """Read the build state: the steps already done (resume), else a clean folder (+ steps
    copied from a sibling build of the same model). Writes and returns the new state."""
    from hw_build.build_steps import GRAPH_STEPS, step_name

    out = cfg.out
    (out / "steps").mkdir(parents=True, exist_ok=True)
    ident = _identity(cfg)
    state = read_json(out / STATE_FILE) if resume else None
    if state is not None and state.get("identity") != ident:
        if progress:
            print(f"hw_build: {out} was built with another configuration; starting over",
                  file=sys.stderr)
        state = None
    completed = _done_prefix(out, names, state.get("completed", [])) if state else []
    if not completed:  # start over: nothing of an earlier build may be mistaken for this one's
        for f in (out / "steps").glob("*.onnx"):
            f.unlink()
        for f in [*_ARTIFACTS, *(p.name for p in out.glob("sim-n*.json"))]:
            (out / f).unlink(missing_ok=True)
        completed = _seed_from_sibling(cfg, ident, [step_name(s) for s in GRAPH_STEPS], progress)
    state = {"identity": ident, "completed": completed, "seconds": {}, "status": "running",
             "steps": names}
    write_json(out / STATE_FILE, state)
    write_json(out / CONFIG_FILE, cfg.to_dict())
    return state


def _tool_stop(step: str, model, out: Path, state: dict, tool_info: dict) -> None:
    from hw_build.build_steps import TOOL_STEPS

    missing = [t for t in TOOL_STEPS[step] if not tool_info[t]["found"]]
    if missing:
        state["status"] = f"stopped before {step}: missing {', '.join(missing)}"
        write_json(out / STATE_FILE, state)
        also = f"(also missing: {', '.join(missing[1:])}) " if missing[1:] else ""
        raise MissingToolError(missing[0], step, also + _produced(out, model) + "; rerun the "
                               "same command where Vivado and Vitis HLS are installed to continue")


def _run_one(fn, name: str, model, cfg, state: dict):
    """Run one step with FINN's output in the build log; a failure becomes StepError (one
    line naming the log) unless it is one of this project's own errors."""
    log_path = cfg.out / LOG_FILE
    with _quiet(log_path) as logf:
        try:
            return fn(model, cfg)
        except (BuildError, MissingToolError):
            raise
        except Exception as e:
            import traceback

            traceback.print_exc(file=logf)
            state["status"] = f"failed in {name}"
            write_json(cfg.out / STATE_FILE, state)
            if _project_error(e):
                raise
            first = (str(e).strip().splitlines() or [""])[0]
            raise StepError(f"{name} failed: {type(e).__name__}: {first} "
                            f"(traceback in {log_path})") from e


def run_steps(cfg: ResBinBuildConfig, *, resume: bool = True, progress: bool = True):
    """Run `cfg.steps` in order, resuming after the last completed one; the fit check runs
    right before code generation (cfg.check_fit). Returns the final model."""
    from finn.builder.build_dataflow import resolve_build_steps
    from qonnx.core.modelwrapper import ModelWrapper

    from hw_build import estimate as est
    from hw_build.build_steps import CODE_STEPS, TOOL_STEPS, XILINX_STEPS, step_name

    fns = resolve_build_steps(cfg, partial=False)
    names = [step_name(s) if isinstance(s, str) else s.__name__ for s in cfg.steps]
    state = _start(cfg, names, resume, progress)
    completed, out = state["completed"], cfg.out
    model = ModelWrapper(str(out / "steps" / f"{completed[-1]}.onnx") if completed
                         else cfg.qonnx_file)
    if progress and completed:
        print(f"hw_build: resuming {out.name} after {completed[-1]} "
              f"({len(completed)}/{len(names)} steps done)", file=sys.stderr)
    checks, tool_info, fit_checked = _Checks(cfg, progress), None, False
    for i, (name, fn) in enumerate(zip(names, fns), 1):
        if name in completed:
            continue
        if name in CODE_STEPS + XILINX_STEPS and cfg.check_fit and not fit_checked:
            est.fit_check(read_json(out / "report.json"), cfg.target_board)
            fit_checked = True
        if name in TOOL_STEPS:
            tool_info = tool_info or tools()
            _tool_stop(name, model, out, state, tool_info)
        if progress:
            print(f"[hw_build {i}/{len(names)}] {name}", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        model = _run_one(fn, name, model, cfg, state)
        with _quiet(out / LOG_FILE):
            checks.after(name, model)
        state["seconds"][name] = round(time.perf_counter() - t0, 2)
        model.save(str(out / "steps" / f"{name}.onnx"))
        completed.append(name)
        write_json(out / STATE_FILE, state)
    state["status"] = f"done ({cfg.until})"
    write_json(out / STATE_FILE, state)
    return model


def build(run_dir: str | Path, *, board: str | Board = "Pynq-Z2", clock_mhz: float | None = None,
          target_fps: float | None = None, folding: str | Path | None = None,
          search: str = "resource", budget_fraction: float | None = None,
          until: str = "estimate", out_dir: str | Path | None = None, resume: bool = True,
          check_fit: bool = True, progress: bool = True, verify_n: int = 100,
          standalone_thresholds: bool = True, model_file: str | Path | None = None) -> dict:
    """Build `run_dir`'s QONNX model for `board` up to `until`; returns the report dict.

    target_fps=None and folding=None: the fastest folding that fits the board's budget
    (`budget_fraction`, default hw_build.boards.FIT_BUDGET); target_fps: the cheapest folding
    that meets it (search="stock": FINN's SetFolding); folding: a FINN folding JSON.
    Raises BuildError (bad input), DoesNotFitError (check_fit and the estimate exceeds the
    budget: checked right after the estimate steps, before any code generation),
    MissingToolError (right before step_hw_ipgen without Vivado/Vitis HLS),
    hw_build.verify.DivergenceError (a HW-graph step changed the integer outputs of the first
    `verify_n` test images against the QONNX model; 0 skips these checks).
    standalone_thresholds (FINN's option): every requantization is its own Thresholding_rtl
    layer instead of comparators inside the MVAU; measured on the thesis model (784-128-88-88-10,
    Q8 shortcut, Pynq-Z2): 781k instead of 223k fps estimated within 90 % of the board.
    """
    from hw_build import estimate as est
    from hw_build.boards import FIT_BUDGET

    cfg = make_config(run_dir, board=board, clock_mhz=clock_mhz, target_fps=target_fps,
                      folding=folding, search=search,
                      budget_fraction=FIT_BUDGET if budget_fraction is None else budget_fraction,
                      until=until, out_dir=out_dir, check_fit=check_fit, verify_n=verify_n,
                      standalone_thresholds=standalone_thresholds, model_file=model_file,
                      run_info=_run_info(Path(run_dir)))
    run_steps(cfg, resume=resume, progress=progress)
    report = read_json(cfg.out / "report.json")
    if report is None:
        raise BuildError(f"{cfg.out}/report.json missing after the estimate step")
    report["out_dir"] = str(cfg.out)
    if progress:
        print(est.summary_markdown(report), file=sys.stderr)
    if check_fit:
        est.fit_check(report, cfg.target_board)
    return report


def _run_info(run_dir: Path) -> dict:
    cfg = read_json(run_dir / "config.json") or {}
    return {"dataset": cfg.get("dataset"), "model": cfg.get("model")}
