"""FINN estimates of trained runs at several frame-rate targets, with the simulated accuracy of
each run's HW graph on the test set (`make bench-hw`, `python -m hw_build bench`)."""
from __future__ import annotations

from pathlib import Path

from core.files import read_json, write_json
from hw_build.boards import Board, budget_label, get_board
from hw_build.build import BuildError, build

__all__ = ["bench", "bench_markdown"]

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
                except SimulationError as e:  # the counts it wrote; the table shows them
                    sims[run] = e.result or {"error": str(e)}
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
        write_json(out.with_suffix(".json"), rows)
    return rows


def _options_label(run: Path) -> str:
    """The run's non-default build options as its folder suffix, e.g. `__in2_sc4` ('' for defaults)."""
    from train.options import ModelOptions, options_suffix

    cfg = read_json(run / "config.json") or {}
    return options_suffix(ModelOptions.from_dict(cfg["options"])) if isinstance(cfg.get("options"), dict) else ""


def bench_markdown(rows: list[dict], board: Board, clock_mhz: float) -> str:
    cap = board.capacity()
    lines = [f"# Hardware estimates on {board.name} ({board.part}) at {clock_mhz:g} MHz", "",
             "FINN (finn-plus) estimates after the resource-aware folding search: for a target the "
             "cheapest folding that meets it, for `auto` the fastest folding that fits. "
             f"Fits: {budget_label(board)}; capacity {cap['LUT']:,} LUT, {cap['BRAM_18K']} BRAM18, "
             f"{cap['DSP']} DSP. "
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
