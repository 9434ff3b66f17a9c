"""Where ResBin's designs sit against BNN-PYNQ's and FINN's MNIST accelerators on the same chip:
accuracy, FINN-estimated frame rate and LUT/BRAM/DSP of each built design, the bit-exact check of
its HW model on the test set, the goals of the default design, and one plot (accuracy vs LUT,
marker size = frame rate) with the references.

    python -m bench.design --design default=runs/mnist/<run>/hw/Pynq-Z2-fps1e6 [...] \\
        --out docs/results/mnist-design.md
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from core.files import read_json

# Published figures (the issue tracker's summary of BNN-PYNQ's and FINN's own tables): LUT after
# synthesis on the xc7z020; None where no figure was given (never made up).
REFERENCES = (
    {"name": "BNN-PYNQ LFC-W1A1", "acc": 0.9835, "lut": 28_360, "fps": 195_000,
     "note": "post-synthesis LUT; at most ~195k fps at 100 MHz (II 512 cycles)"},
    {"name": "BNN-PYNQ LFC-W1A2", "acc": 0.9855, "lut": 48_981, "fps": None,
     "note": "post-synthesis LUT; frame rate not given"},
    {"name": "FINN TFC-W1A1", "acc": 0.9296, "lut": None, "fps": 958_000,
     "note": "958k fps measured on a PYNQ-Z1; LUT not given (not in the LUT plot)"},
)
LFC = REFERENCES[0]
GOAL_FPS = 1_000_000


def build_folder(path: Path, board: str = "Pynq-Z2") -> Path:
    """A build folder as given, or a run folder's default build (the fastest folding that fits)."""
    if (path / "report.json").exists() or not (path / "config.json").exists():
        return path
    from hw_build.boards import get_board
    from hw_build.config import out_dir_for, target_name

    brd = get_board(board)
    return out_dir_for(path, brd, brd.clock_mhz, target_name())


def design_row(name: str, build: Path) -> dict:
    """One design's figures from its build folder and run folder (all measured, none typed in)."""
    rep = read_json(build / "report.json")
    if rep is None:
        raise SystemExit(f"bench.design: {build}/report.json missing (build it with hw_build first)")
    run = Path(rep.get("run_dir") or build.parent.parent)
    met, cfg = read_json(run / "metrics.json") or {}, read_json(run / "config.json") or {}
    sim = read_json(build / "sim.json") or {}
    cpp = read_json(build / "cppsim.json") or {}
    res = rep["resources"]
    return {"name": name, "model": rep.get("model"), "options": cfg.get("options", {}),
            "recipe": (cfg.get("recipe") or {}).get("name"), "epochs": cfg.get("epochs"),
            "test_acc": met.get("test_acc"), "sim_acc": sim.get("accuracy"),
            "identical": sim.get("identical"), "cppsim_identical": cpp.get("identical"),
            "fps": rep["estimated_fps"], "lut": res["LUT"], "bram18": res["BRAM_18K"], "dsp": res["DSP"],
            "fits": rep["fits"], "fit_rule": rep.get("fit_rule"), "build": str(build)}


def goals(r: dict) -> dict:
    """The issue's goals for a design: the default (8-bit shortcut, 128,88,88, fits, >= 1M fps,
    >= 98.0 %) and dominating LFC-W1A1 (>= 98.4 %, <= 28,000 LUT, >= 1M fps, fits)."""
    acc = r["sim_acc"] if r["sim_acc"] is not None else r["test_acc"]
    sc8 = r["options"].get("shortcut_weight_bits", 8) == 8
    fast = r["fps"] >= GOAL_FPS
    return {"default": bool(sc8 and r["fits"] and fast and acc is not None and acc >= 0.98
                            and str(r["model"]).startswith("B-D128N,D88N,D88N")),
            "beats_lfc": bool(sc8 and r["fits"] and fast and acc is not None and acc >= 0.984
                              and r["lut"] <= 28_000)}


def plot(rows: list[dict], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def size(fps):  # area ~ frame rate, capped at 2M fps (the DMA bound of a 784-byte image is ~1M)
        return 30 + 250 * min(fps or 0, 2e6) / 2e6

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for ref in REFERENCES:
        if ref["lut"] is None:
            continue
        ax.scatter(ref["lut"], 100 * ref["acc"], s=size(ref["fps"]) if ref["fps"] else 40,
                   marker="s", facecolors="none" if ref["fps"] is None else "tab:gray",
                   edgecolors="tab:gray")
        ax.annotate(ref["name"], (ref["lut"], 100 * ref["acc"]), fontsize=8, xytext=(4, -10),
                    textcoords="offset points")
    for r in rows:
        acc = r["sim_acc"] if r["sim_acc"] is not None else r["test_acc"]
        ax.scatter(r["lut"], 100 * acc, s=size(r["fps"]), color="tab:blue" if r["fits"] else "tab:red",
                   alpha=0.8)
        ax.annotate(r["name"], (r["lut"], 100 * acc), fontsize=8, xytext=(4, 4), textcoords="offset points")
    ax.set_xlabel("LUT (ResBin: FINN estimate; references: after synthesis)")
    ax.set_ylabel("MNIST test accuracy (%)")
    ax.set_title("Pynq-Z2 (xc7z020): marker area ~ frames/s; hollow: frame rate not given")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def markdown(rows: list[dict], png: str, command: str) -> str:
    lines = ["# ResBin designs against BNN-PYNQ and FINN on the Pynq-Z2", "",
             f"Command: `{command}`. Accuracy: the bit-exact software model of the accelerator "
             "(FINN's execution of the HW graph) on the 10,000 MNIST test images; frame rate and "
             "resources: FINN's estimates at 100 MHz after the resource-aware folding search "
             "(references: post-synthesis LUT). Fit: " + (rows[0]["fit_rule"] or "n/a") + ".", "",
             "| design | model | input / shortcut bits | recipe, epochs | test acc. | est. fps | LUT | "
             "BRAM18 | DSP | fits | HW model = QONNX | C++/RTL = golden | default goal | beats LFC-W1A1 |",
             "|---|---|---|---|---:|---:|---:|---:|---:|---|---|---|---|---|"]
    for r in rows:
        g, o = goals(r), r["options"]
        acc = r["sim_acc"] if r["sim_acc"] is not None else r["test_acc"]
        lines.append(f"| {r['name']} | `{r['model']}` | {o.get('input_bits', 8)} / "
                     f"{o.get('shortcut_weight_bits', 8)} | {r['recipe']}, {r['epochs']} | "
                     f"{acc:.4f} | {r['fps']:,.0f} | {r['lut']:,.0f} | {r['bram18']:,.0f} | "
                     f"{r['dsp']:,.0f} | {'yes' if r['fits'] else 'no'} | {r['identical'] or 'n/a'} | "
                     f"{r['cppsim_identical'] or 'not run'} | {'met' if g['default'] else 'no'} | "
                     f"{'yes' if g['beats_lfc'] else 'no'} |")
    lines += ["", "References (not built here):", ""]
    for ref in REFERENCES:
        lut = f"{ref['lut']:,} LUT" if ref["lut"] else "LUT n/a"
        fps = f"{ref['fps']:,} fps" if ref["fps"] else "fps n/a"
        lines.append(f"- {ref['name']}: {100 * ref['acc']:.2f} %, {lut}, {fps} ({ref['note']})")
    lines += ["", f"![accuracy vs LUT]({png})", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.design", description=__doc__.splitlines()[0])
    ap.add_argument("--design", action="append", required=True, metavar="NAME=BUILD_OR_RUN_DIR",
                    help="a built design: its hw build folder, or a run folder (its default build on "
                         "--board), with sim.json from `hw_build sim`")
    ap.add_argument("--board", default="Pynq-Z2")
    ap.add_argument("--out", type=Path, required=True, help="markdown file (the plot goes beside it)")
    args = ap.parse_args(argv)
    rows = []
    for d in args.design:
        name, sep, build = d.partition("=")
        if not sep:
            ap.error(f"--design {d!r}: expected NAME=BUILD_DIR")
        rows.append(design_row(name, build_folder(Path(build), args.board)))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    png = plot(rows, args.out.with_suffix(".png"))
    command = "python -m bench.design " + " ".join(f"--design {d}" for d in args.design) + f" --out {args.out}"
    args.out.write_text(markdown(rows, png.name, command))
    print(f"wrote {args.out} and {png}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
