"""Markdown report with PNG plots for one or more finished sweeps of a data set.

    from dse.report import write_report
    write_report(["runs/sweeps/mnist/128_thesis", "runs/sweeps/mnist/128_88_thesis_s56"], out_dir)

Sections: configuration and timing; the thesis's consolidated table (our column beside the
thesis's); the OLS regression per widths group; relative size per shortcut (thesis table 20);
accuracy vs thesis size, LUT and frame rate with the Pareto fronts and the chosen design; the
thesis's recommendations checked against the data; failed variants.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd

from dse import analysis as A
from dse import thesis_tables as T
from dse.pareto import ParetoError, choose, describe, deviations, load_sweeps
from hw_build.boards import FIT_BUDGET
from train.shortcuts import DISPLAY_ORDER


class ReportError(ValueError):
    """A report that cannot be written (no results, mixed data sets)."""


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def md_table(df: pd.DataFrame, fmt: str = "{:.4f}", index: bool = True, formats: dict | None = None) -> str:
    """A pipe table (pandas' to_markdown needs `tabulate`, which the project does not install)."""
    formats = formats or {}

    def cell(v, col):
        if isinstance(v, (float, np.floating, int, np.integer)) and not isinstance(v, bool):
            return "" if v != v else formats.get(col, fmt).format(v)
        return "" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v)

    cols = ([df.index.name or ""] if index else []) + [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for idx, r in df.iterrows():
        vals = ([str(idx)] if index else []) + [cell(v, c) for c, v in zip(df.columns, r.tolist())]
        lines.append("| " + " | ".join(vals) + " |")
    return "\n".join(lines)


def _configs(sweeps) -> list[dict]:
    out = []
    for d in sweeps:
        p = Path(d) / "sweep.json"
        out.append({"dir": str(d), **(json.loads(p.read_text()) if p.exists() else {})})
    return out


# ------------------------------------------------------------------------------------ plots

def plot_components(table: pd.DataFrame, path: Path) -> Path:
    """Grouped bars: per component, our mean accuracy per widths group (and the thesis's)."""
    plt = _plt()
    comp = table.loc[[r for r in A.THESIS_ROWS if r in table.index]]
    series = [c for c in comp.columns if not c.startswith("diff")]
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(comp) + 2), 4))
    width = 0.8 / max(1, len(series))
    x = np.arange(len(comp))
    for i, c in enumerate(series):
        ax.bar(x + i * width, comp[c].to_numpy(float), width, label=c,
               hatch="//" if c.startswith("thesis") else None, alpha=0.85)
    ax.set_xticks(x + width * (len(series) - 1) / 2, comp.index)
    vals = comp[series].to_numpy(float)
    if np.isfinite(vals).any():
        lo, hi = np.nanmin(vals), np.nanmax(vals)
        ax.set_ylim(max(0.0, lo - 0.02), min(1.0, hi + 0.01))
    ax.set_ylabel("mean test accuracy of variants containing it")
    ax.set_title("Mean accuracy per component (thesis table layout)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_regression(regs: dict, path: Path) -> Path:
    """Coefficients with their confidence intervals, one panel per widths group."""
    plt = _plt()
    ok = {w: r for w, r in regs.items() if "table" in r}
    fig, axes = plt.subplots(1, max(1, len(ok)), figsize=(5 * max(1, len(ok)), 4), squeeze=False)
    for ax, (w, r) in zip(axes[0], ok.items()):
        t = r["table"].drop(index="const", errors="ignore")
        y = np.arange(len(t))
        ax.errorbar(t["coef"], y, xerr=[t["coef"] - t["ci_low"], t["ci_high"] - t["coef"]], fmt="o", capsize=3)
        ax.axvline(0, color="grey", lw=0.8)
        ax.set_yticks(y, t.index)
        ax.invert_yaxis()
        ax.set_xlabel("effect on test accuracy")
        ax.set_title(f"{w}: R² = {r['r2']:.3f}, n = {r['n']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_front(df: pd.DataFrame, x: str, path: Path, *, xlabel: str, lower_is_better: bool,
               chosen: dict | None = None, logx: bool = False, title: str = "") -> Path:
    """Accuracy against `x`, coloured by shortcut kind, the Pareto front drawn, `chosen` circled."""
    plt = _plt()
    d = df[df[x].notna() & df[A.ACC].notna()].copy()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    kinds = np.select([d["kind"] == "F", *(d[k] == 1 for k in DISPLAY_ORDER)], ["float", *DISPLAY_ORDER], "none")
    for k in ("none", *DISPLAY_ORDER, "float"):
        s = d[kinds == k]
        if len(s):
            ax.scatter(s[x], s[A.ACC], s=14, label=f"shortcut {k}" if k != "float" else "float baseline", alpha=0.7)
    front = d[A.pareto_mask(d[x], d[A.ACC], x_lower_is_better=lower_is_better)].sort_values(x)
    if len(front):
        ax.step(front[x], front[A.ACC], where="post" if lower_is_better else "pre", color="black", lw=1,
                label="Pareto front")
    if chosen is not None and chosen.get(x) is not None:
        ax.scatter([chosen[x]], [chosen[A.ACC]], s=160, facecolors="none", edgecolors="red", lw=2,
                   label=f"chosen: {chosen['spec']}{chosen.get('options') or ''}")
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test accuracy")
    ax.set_title(title)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------------- report

def write_report(sweeps, out_dir=None, *, board: str | None = None, target_fps: float | None = None,
                 shortcut_bits=None) -> Path:
    """Write `report.md` and its PNGs into `out_dir` (default: the first sweep's folder).

    The board section's choice keeps 8-bit shortcut weights (the specification) unless
    `shortcut_bits` asks for others (`dse.pareto.choose`); its tables name every deviation."""
    sweeps = [Path(s) for s in sweeps]
    for s in sweeps:
        if not (s / "results.csv").exists():
            raise ReportError(f"{s}: no results.csv (not a sweep folder, or the sweep has not run)")
    out = Path(out_dir) if out_dir is not None else sweeps[0]
    out.mkdir(parents=True, exist_ok=True)
    df = load_sweeps(sweeps)
    datasets = sorted(set(df["dataset"].dropna()))
    if len(datasets) != 1:
        raise ReportError(f"the sweeps mix data sets {datasets}; report one data set at a time")
    dataset = datasets[0]
    ok = df[df["status"] == "ok"]
    if not len(ok):
        raise ReportError(f"no finished variant in {', '.join(map(str, sweeps))}")
    cfgs = _configs(sweeps)
    md = [f"# Design-space exploration: {dataset}", ""]
    md += _config_section(cfgs, df)

    # consolidated table
    table = A.consolidated_table(ok, dataset)
    names = A.best_names(ok, dataset)
    tn = T.TABLE_NUMBER.get(dataset)
    md += ["## Consolidated accuracy (thesis table layout)", "",
           f"Mean test accuracy of the binary variants that contain each component, with the float "
           f"baseline, the plain binary model and the best variant on top"
           + (f", beside the thesis's table {tn} where it ran the same widths" if tn else "") + ". "
           "D = dropout before the output, N = batch-norm on the shortcut, P/F/Q = shortcut kind, "
           "Di/Ni = dropout before / batch-norm after hidden layer i.", "",
           md_table(table), ""]
    md += [f"- best variant, {w}: ours `{o}`" + (f", thesis `{t}`" if t else "") for w, (o, t) in names.items()]
    plot_components(table, out / "components.png")
    md += ["", "![mean accuracy per component](components.png)", ""]
    md += _differences(table)

    # regression
    regs = {w: A.regression(ok, w) for w in A.groups(ok)}
    md += ["## Regression of accuracy on the components", "",
           "Ordinary least squares (statsmodels) of test accuracy on the 0/1 component flags of the "
           "binary variants (and dummies for option axes that vary), per widths group; 95 % "
           "confidence intervals. The thesis reports only the per-component means, not its "
           "regression coefficients, so there is nothing of its to compare here.", ""]
    for w, r in regs.items():
        if "error" in r:
            md += [f"### {w}", "", f"Not fitted: {r['error']}.", ""]
            continue
        md += [f"### {w}: n = {r['n']}, R² = {r['r2']:.3f} (adjusted {r['r2_adj']:.3f})"
               + (" — rank deficient, coefficients not unique" if r["rank_deficient"] else ""), "",
               md_table(r["table"].rename(columns={"ci_low": "95% low", "ci_high": "95% high"}), "{:.4g}"), ""]
    plot_regression(regs, out / "regression.png")
    md += ["![regression coefficients](regression.png)", ""]

    # sizes
    rel = A.relative_sizes(ok)
    th = pd.DataFrame({f"thesis ({k} layers)": v for k, v in T.RELATIVE_SIZE.items()}).T
    md += ["## Size", "", "Mean size relative to the float model of the same widths, per shortcut kind "
           "(thesis accounting, KiB as in its tables), against the thesis's table 20 (mean over its "
           "four data sets).", "", md_table(pd.concat([rel, th[[c for c in rel.columns if c in th]]]), "{:.3f}"), ""]
    plot_front(ok, "thesis_size_kib", out / "acc_vs_size.png", xlabel="thesis size (KiB)", lower_is_better=True,
               logx=True, title="Accuracy vs size")
    front = ok[A.pareto_mask(ok["thesis_size_kib"], ok[A.ACC])].sort_values("thesis_size_kib")
    md += ["![accuracy vs size](acc_vs_size.png)", "", "Pareto front (accuracy vs thesis size):", "",
           md_table(front.set_index("spec")[["options", "thesis_size_kib", "relative_size", A.ACC]], "{:.4f}"), ""]

    # board
    md += _board_section(ok, sweeps, out, board, target_fps, shortcut_bits)

    # recommendations
    recs = A.recommendations(ok, dataset)
    md += ["## The thesis's recommendations against this data", ""]
    for r in recs:
        md += [f"- **{r['widths']}** — thesis: {r['thesis']} **Our data: {r['verdict']}.** {r['evidence']}"]
    md += [""]
    failed = df[df["status"] == "failed"]
    if len(failed):
        md += ["## Failed variants", "", md_table(failed.set_index("spec")[["options", "error"]], index=True), ""]
    path = out / "report.md"
    path.write_text("\n".join(md) + "\n")
    return path


def _config_section(cfgs: list[dict], df: pd.DataFrame) -> list[str]:
    lines = ["| sweep | widths | sample | recipe | epochs | train limit | seed | rows ok / failed | wall s | variants/hour |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for c in cfgs:
        ident = c.get("identity", {})
        inv = (c.get("invocations") or [{}])[-1]
        runs = c.get("runs") or []
        wall = sum(r.get("wall_seconds") or 0 for r in runs)
        n_run = sum((r.get("ok") or 0) + (r.get("failed") or 0) for r in runs)
        sub = df[df["sweep"] == c["dir"]]
        lines.append(f"| {Path(c['dir']).name} | {','.join(map(str, inv.get('widths', [])))} | "
                     f"{inv.get('sample') or 'all'} | {ident.get('recipe')} | {ident.get('epochs') or 'recipe'} | "
                     f"{ident.get('limit_train') or 'all'} | {ident.get('seed')} | "
                     f"{(sub['status'] == 'ok').sum()} / {(sub['status'] == 'failed').sum()} | {wall:.0f} | "
                     f"{3600 * n_run / wall:.1f} |" if wall else
                     f"| {Path(c['dir']).name} | {','.join(map(str, inv.get('widths', [])))} | "
                     f"{inv.get('sample') or 'all'} | {ident.get('recipe')} | {ident.get('epochs') or 'recipe'} | "
                     f"{ident.get('limit_train') or 'all'} | {ident.get('seed')} | "
                     f"{(sub['status'] == 'ok').sum()} / {(sub['status'] == 'failed').sum()} | | |")
    grid = {k: v for c in cfgs for k, v in ((c.get("invocations") or [{}])[-1].get("options_grid") or {}).items()}
    out = ["## Sweeps", "", *lines, ""]
    if grid:
        out += ["Option axes crossed with the variants: "
                + ", ".join(f"{k} = {', '.join(map(str, v if isinstance(v, list) else [v]))}" for k, v in grid.items()), ""]
    return out


def _differences(table: pd.DataFrame) -> list[str]:
    """Sentences on where our means differ from the thesis's by more than 0.01."""
    out = []
    for c in [c for c in table.columns if c.startswith("diff ")]:
        w = c[5:]
        d = table[c].dropna()
        if not len(d):
            continue
        big = d[d.abs() > 0.01]
        rank_ours = table.loc[[r for r in A.THESIS_ROWS if r in table.index], f"ours {w}"].dropna()
        rank_th = table.loc[[r for r in A.THESIS_ROWS if r in table.index], f"thesis {w}"].dropna()
        line = (f"- {w}: mean |difference| {d.abs().mean():.4f}; "
                + (f"larger than 0.01 for {', '.join(f'{k} ({v:+.4f})' for k, v in big.items())}"
                   if len(big) else "no row differs by more than 0.01"))
        if len(rank_ours) and len(rank_th):
            line += (f"; best component ours {rank_ours.idxmax()} ({rank_ours.max():.4f}), thesis "
                     f"{rank_th.idxmax()} ({rank_th.max():.4f})")
        out.append(line + ".")
    return (["Where we differ from the thesis:", "", *out, ""] if out else [])


def _over_names(r, cap: dict | None) -> str:
    """The resources of a design over the fit budget (`hw_build.boards.over_budget`)."""
    from hw_build.boards import over_budget

    if not cap:
        return ""
    res = {key: r[col] for col, key in (("lut", "LUT"), ("bram18", "BRAM_18K"), ("dsp", "DSP"))
           if r[col] == r[col]}
    names = [{"BRAM_18K": "BRAM"}.get(n, n) for n in over_budget(res, cap)
             if n in res]
    return (" " + "+".join(names)) if names else ""


def _axes_pivots(hw: pd.DataFrame, cap: dict | None = None) -> list[str]:
    """Per variant family (first width written W): LUT and fit by first width x input bits x
    shortcut bits, where the sweep varied at least two of these axes (a board search's screen)."""
    df = hw.copy()
    df["first_width"] = [int(str(w).split(",")[0]) for w in df["widths"]]
    df["family"] = [s.split("-", 1)[0] + "-" + re.sub(r"^(D?)\d+", r"\1W", s.split("-", 1)[1]) for s in df["spec"]]
    axes = ["first_width", "input_bits", "shortcut_weight_bits"]
    if sum(df[a].nunique() > 1 for a in axes) < 2:
        return []
    out = ["LUT by first width, input bits and shortcut weight bits (FINN estimate; `ok` fits the board "
           "at the target, `--` does not, followed by the resources over the fit budget, "
           f"{100 * FIT_BUDGET:.0f} % of the board):", ""]
    for fam, g in df.groupby("family", sort=True):
        if g["shortcut_weight_bits"].isna().all() or len(g) < 4:
            continue
        cols = sorted(g["shortcut_weight_bits"].dropna().unique())
        rows = sorted({(int(r.first_width), int(r.input_bits)) for r in g.itertuples()})
        lines = [f"| {fam}: width, input bits | " + " | ".join(f"shortcut {int(c)} bits" for c in cols) + " |",
                 "|---|" + "---:|" * len(cols)]
        for w, ib in rows:
            cells = []
            for c in cols:
                m = g[(g["first_width"] == w) & (g["input_bits"] == ib) & (g["shortcut_weight_bits"] == c)]
                r = m.iloc[-1] if len(m) else None
                cells.append("" if r is None else f"{r['lut']:,.0f} ok" if r["fits"] == 1
                             else f"{r['lut']:,.0f} --{_over_names(r, cap)}")
            lines.append(f"| {w}, {ib} | " + " | ".join(cells) + " |")
        out += lines + [""]
    return out


def _board_section(ok: pd.DataFrame, sweeps, out: Path, board, target_fps, shortcut_bits=None) -> list[str]:
    hw = ok[ok["est_fps"].notna() & ok["lut"].notna()].copy()
    hw["deviation"] = [", ".join(deviations(r)) for r in hw.to_dict("records")]
    if not len(hw):
        return ["## On the board", "", "No FINN estimates in these sweeps (run the sweep with a board, or "
                "`python -m dse pareto`, which estimates the candidates it needs).", ""]
    boards = sorted(set(hw["board"].dropna()))
    board = board or boards[0]
    hw = hw[hw["board"] == board]
    tfps = target_fps
    if tfps is None:
        ts = hw["target_fps"].dropna().unique()
        tfps = float(ts[0]) if len(ts) == 1 else None
    chosen, why = None, ""
    try:
        chosen = choose(sweeps, board, tfps, estimate_missing=False, df=ok, shortcut_bits=shortcut_bits)
        why = f"Chosen: {describe(chosen)}."
    except ParetoError as e:
        why = f"No design chosen: {e}."
    cap, capacity = "", None
    try:
        from hw_build.boards import get_board

        b = get_board(board)
        cap = f" ({b.part}: {b.lut:,} LUT, {b.bram18} BRAM18, {b.dsp} DSP)"
        capacity = b.capacity()
    except Exception:
        pass
    fits = hw[hw["fits"] == 1]
    plot_front(fits if len(fits) else hw, "lut", out / "acc_vs_lut.png", xlabel="LUT (FINN estimate)",
               lower_is_better=True, chosen=chosen, title=f"Accuracy vs LUT on {board} (fitting designs)")
    plot_front(fits if len(fits) else hw, "est_fps", out / "acc_vs_fps.png", xlabel="frames/s (FINN estimate)",
               lower_is_better=False, chosen=chosen, logx=True, title=f"Accuracy vs frame rate on {board}")
    # fronts among the designs that fit (a faster or more accurate one that does not fit hides none)
    front = fits[A.pareto_mask(fits["est_fps"], fits[A.ACC], x_lower_is_better=False)]
    lut_front = fits[A.pareto_mask(fits["lut"], fits[A.ACC], x_lower_is_better=True)]
    t_txt = f" at a target of {tfps:,.0f} fps" if tfps else " at the fastest folding that fits"
    cols = ["options", A.ACC, "est_fps", "lut", "bram18", "dsp", "fits"]
    if (hw["deviation"] != "").any():  # name every departure from the specification (8-bit shortcuts)
        cols.append("deviation")
    fmt = dict(fmt="{:,.0f}", formats={A.ACC: "{:.4f}"})
    lines = ["## On the board", "",
             f"FINN estimates (no synthesis) on {board}{cap}{t_txt}: {len(hw)} FPGA-able variants, "
             f"{int((hw['fits'] == 1).sum())} fit.", "", why, "",
             "![accuracy vs LUT](acc_vs_lut.png)", "", "![accuracy vs frame rate](acc_vs_fps.png)", "",
             "Pareto front (accuracy vs frame rate, fitting designs):", "",
             md_table(front.sort_values("est_fps").set_index("spec")[cols], **fmt), "",
             "Pareto front (accuracy vs LUT, fitting designs):", "",
             md_table(lut_front.sort_values("lut").set_index("spec")[cols], **fmt), ""]
    lines += _axes_pivots(hw, capacity)
    if len(hw) <= 100:
        lines += ["Every estimated variant, most accurate first:", "",
                  md_table(hw.sort_values([A.ACC, "lut"], ascending=[False, True]).set_index("spec")[cols], **fmt), ""]
    return lines
