"""cppsim.json / cppsim.md of hw_build.cppsim: the per-layer table of a simulated accelerator."""
from __future__ import annotations

import json
from pathlib import Path

__all__ = ["write_report", "layer_table", "summary_line"]


def _fmt_identical(r: dict) -> str:
    if r.get("identical_to_python") is None:
        return "(is Python)"
    return f"{r['identical_to_python']}/{r['images']}"


def _cycles(r: dict) -> str:
    if r.get("cycles_per_frame") is None:
        return ""
    est = r.get("finn_est_cycles")
    return f"{r['cycles_per_frame']:,.1f} / {est:,}" if est is not None else \
        f"{r['cycles_per_frame']:,.1f} / n/a"


def layer_table(res: dict) -> list[str]:
    """Markdown rows: layer, op, level used, compile s, images/s, identical to FINN's Python
    execution of the same layer on the same inputs, simulated vs FINN-estimated cycles/frame."""
    lines = ["| layer | op | level | compile (s) | images/s | identical to Python | "
             "cycles/frame sim / FINN est. |", "|---|---|---|---:|---:|---:|---:|"]
    for r in res["layers"]:
        lvl = r["level"] + (f" ({r['why']})" if r.get("why") else "")
        lines.append(f"| {r['layer']} | {r['op']} | {lvl} | {r['compile_s']:.1f} | "
                     f"{r['images_per_s']:,.0f} | {_fmt_identical(r)} | {_cycles(r)} |")
    return lines


def summary_line(res: dict) -> str:
    parts = [f"identical to golden.npz: {res['identical']}"]
    if "labels_identical" in res:
        parts.append(f"labels: {res['labels_identical']}")
    if "qonnx_identical" in res:
        parts.append(f"QONNX reference: {res['qonnx_identical']}")
    lv = ", ".join(f"{v} {k}" for k, v in res["levels"].items())
    parts.append(f"layers: {lv}")
    parts.append(f"{res['seconds']} s wall in all; compile times summed over layers "
                 f"{res['compile_s']} s (HLS layers compile in parallel, 0 when cached), "
                 f"simulation {res['sim_seconds']} s")
    return "; ".join(parts)


def write_report(res: dict, json_path: Path, md_path: Path) -> None:
    Path(json_path).write_text(json.dumps(res, indent=2) + "\n")
    lines = [f"# Simulation of the generated code: {Path(res['build_dir']).name}", "",
             f"{res['n_images']} test images through `{res['graph']}` with FINN's DWCs and "
             f"FIFOs inserted, layer by layer: HLS layers in FINN's C++ simulation (g++), RTL "
             f"layers in Verilator; a layer in Python execution says why. Toolchain: "
             f"{res['toolchain']}.", "", summary_line(res) + ".", ""] + layer_table(res)
    Path(md_path).write_text("\n".join(lines) + "\n")
