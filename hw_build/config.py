"""The build configuration: FINN's `DataflowBuildConfig` plus what ResBin's steps read.

`make_config(run_dir, ...)` checks the user's options (BuildError, one line), names the build
folder and returns a `ResBinBuildConfig`. Its `steps` are names resolved by FINN's own
`resolve_build_steps` (a stock step name, or `module.function` for ours), so a new step is one
function plus one name in `hw_build.build_steps.DEFAULT_STEPS`, and a config can reorder them.
The config is saved as `build_config.json` beside the build's artifacts.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from hw_build.boards import FIT_BUDGET, Board, get_board
from hw_build.finn_env import ensure_finn

ensure_finn()

import finn.builder.build_dataflow_config as bc  # noqa: E402

__all__ = ["BuildError", "ResBinBuildConfig", "make_config", "target_name", "out_dir_for",
           "number_tag", "UNTIL", "SEARCHES"]

UNTIL = ("estimate", "codegen", "bitstream")
SEARCHES = ("resource", "stock")


class BuildError(ValueError):
    """Bad build arguments or run folder (a user error: exit code 2)."""


@dataclass
class ResBinBuildConfig(bc.DataflowBuildConfig):
    """FINN's build config (output_dir, fpga_part, board, synth_clk_period_ns, steps, ...) and
    the settings of ResBin's own steps."""
    run_dir: str = ""
    qonnx_file: str = ""
    target_board: Optional[Board] = None       # ours: capacity for the fit check and the search
    clock_mhz: float = 100.0
    frame_rate: Optional[float] = None         # FINN's target_fps is an int and drives SetFolding
    folding_file: Optional[str] = None
    folding_search: str = "resource"           # "resource" (ours) or "stock" (FINN's SetFolding)
    budget_fraction: float = FIT_BUDGET
    until: str = "estimate"
    verify_n: int = 100                        # test images checked after each numeric step
    check_fit: bool = True
    target: str = "auto"                       # the build folder's target part (target_name)
    run_info: dict = field(default_factory=dict)  # dataset and model of the run

    @property
    def out(self) -> Path:
        return Path(self.output_dir)


def number_tag(x: float) -> str:
    """1000000 -> '1e6', 125000 -> '125e3', 2.5 -> '2p5' (file-name safe)."""
    if float(x).is_integer() and x > 0:
        n, e = int(x), 0
        while n % 10 == 0:
            n, e = n // 10, e + 1
        return f"{n}e{e}" if e else str(n)
    return f"{x:g}".replace(".", "p").replace("+", "")


def target_name(target_fps: float | None = None, folding: str | Path | None = None,
                search: str = "resource", budget_fraction: float = FIT_BUDGET) -> str:
    """The build folder's target part: fps<N>[-stock], folding-<name>-<content hash>,
    auto[-b<fraction>]. Two folding files of one name in different folders never share a folder."""
    if folding is not None:
        from core.files import sha256

        return f"folding-{Path(folding).stem}-{sha256(folding)[:8]}"
    if target_fps is not None:
        return f"fps{number_tag(target_fps)}" + ("-stock" if search == "stock" else "")
    return "auto" if budget_fraction == FIT_BUDGET else f"auto-b{number_tag(budget_fraction)}"


def out_dir_for(run_dir: str | Path, board: Board, clock_mhz: float, target: str) -> Path:
    clk = "" if clock_mhz == board.clock_mhz else f"-{number_tag(clock_mhz)}MHz"
    return Path(run_dir) / "hw" / f"{board.name}-{target}{clk}"


def _check(until, search, target_fps, folding, clock_mhz, budget_fraction, verify_n) -> None:
    if until not in UNTIL:
        raise BuildError(f"until={until!r}: expected one of {', '.join(UNTIL)}")
    if search not in SEARCHES:
        raise BuildError(f"search={search!r}: expected 'resource' or 'stock'")
    if folding is not None and target_fps is not None:
        raise BuildError("give either a target frame rate or a folding file, not both")
    if search == "stock" and target_fps is None and folding is None:
        raise BuildError("FINN's stock folding search needs a target frame rate (--target-fps)")
    if target_fps is not None and not target_fps > 0:
        raise BuildError(f"target fps {target_fps}: expected a positive number")
    if not 1.0 <= clock_mhz <= 1000.0:
        raise BuildError(f"clock {clock_mhz} MHz: expected 1..1000 MHz")
    if not 0 < budget_fraction <= 1.5:
        raise BuildError(f"budget fraction {budget_fraction}: expected a number in (0, 1.5]")
    if verify_n < 0:
        raise BuildError(f"verify_n {verify_n}: expected 0 (no checks) or more test images")


def make_config(run_dir: str | Path, *, board: str | Board = "Pynq-Z2",
                clock_mhz: float | None = None, target_fps: float | None = None,
                folding: str | Path | None = None, search: str = "resource",
                budget_fraction: float = FIT_BUDGET, until: str = "estimate",
                out_dir: str | Path | None = None, check_fit: bool = True, verify_n: int = 100,
                standalone_thresholds: bool = True, model_file: str | Path | None = None,
                run_info: dict | None = None) -> ResBinBuildConfig:
    """Check the options and return the build's config (see `hw_build.build.build`)."""
    from hw_build.build_steps import default_steps

    brd = board if isinstance(board, Board) else get_board(board)
    clock_mhz = float(brd.clock_mhz if clock_mhz is None else clock_mhz)
    _check(until, search, target_fps, folding, clock_mhz, budget_fraction, verify_n)
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
    outputs = [bc.DataflowOutputType.ESTIMATE_REPORTS]
    if until == "bitstream":
        outputs += [bc.DataflowOutputType.STITCHED_IP, bc.DataflowOutputType.BITFILE,
                    bc.DataflowOutputType.PYNQ_DRIVER, bc.DataflowOutputType.DEPLOYMENT_PACKAGE]
    return ResBinBuildConfig(
        output_dir=str(out), synth_clk_period_ns=1000.0 / clock_mhz, board=brd.finn_board,
        fpga_part=brd.part, shell_flow_type=bc.ShellFlowType(brd.shell_flow_type),
        generate_outputs=outputs, save_intermediate_models=False, verbose=False,
        standalone_thresholds=standalone_thresholds, steps=default_steps(until),
        run_dir=str(run_dir), qonnx_file=str(qonnx), target_board=brd, clock_mhz=clock_mhz,
        frame_rate=target_fps, folding_file=str(folding) if folding else None,
        folding_search=search, budget_fraction=budget_fraction, until=until, verify_n=verify_n,
        check_fit=check_fit, target=target, run_info=dict(run_info or {}))
