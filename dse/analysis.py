"""Statistics of a sweep's results table: the thesis's consolidated table, OLS regression, Pareto fronts.

Rows are grouped by their hidden widths (one "series" of the thesis per group). The consolidated
table and the regression use the binary variants with the default build options unless a group
has none (then all its rows); option axes enter the regression as extra dummy regressors.
"""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from dse import thesis_tables as T
from dse.results import COMPONENTS, OPTION_COLUMNS
from train.options import OPTION_SCOPE
from train.shortcuts import DISPLAY_ORDER, LETTERS

ACC = "test_acc"
# The thesis's row order (tables 9/12/15/18): D, N, P, F, Q, D1, N1, ..., D4, N4.
THESIS_ROWS = T.COMPONENTS


def n_layers(widths: str) -> int:
    return len(str(widths).split(","))


def groups(df: pd.DataFrame) -> list[str]:
    """Widths groups in order of their number of layers, then first appearance."""
    ws = list(dict.fromkeys(df["widths"].astype(str)))
    return sorted(ws, key=lambda w: (n_layers(w), ws.index(w)))


def default_rows(df: pd.DataFrame) -> pd.DataFrame:
    """Rows built with the default options (empty options suffix); all rows if there are none."""
    d = df[df["options"].fillna("") == ""]
    return d if len(d) else df


def _ok(df: pd.DataFrame) -> pd.DataFrame:
    return df[(df["status"] == "ok") & df[ACC].notna()]


def component_means(df: pd.DataFrame, widths: str) -> dict:
    """One column of the thesis's consolidated table for a widths group.

    Keys: float, binary, best, best_name, n_variants and one per component present in the group
    (mean test accuracy of the binary variants containing it).
    """
    g = _ok(df[df["widths"].astype(str) == str(widths)])
    fl = g[g["kind"] == "F"]
    b = default_rows(g[g["kind"] == "B"])
    plain = b[b["spec"] == f"B-{widths}"]
    col = {"float": fl[ACC].mean() if len(fl) else np.nan,
           "binary": plain[ACC].mean() if len(plain) else np.nan,
           "n_variants": int(len(b))}
    if len(b):
        best = b.loc[b[ACC].idxmax()]
        col["best"], col["best_name"] = float(best[ACC]), best["spec"] + (best["options"] or "")
    else:
        col["best"], col["best_name"] = np.nan, ""
    L = n_layers(widths)
    for c in THESIS_ROWS:
        if c[1:] and int(c[1:]) > L:
            continue
        sel = b[b[c] == 1]
        col[c] = float(sel[ACC].mean()) if len(sel) else np.nan
    return col


def consolidated_table(df: pd.DataFrame, dataset: str) -> pd.DataFrame:
    """The thesis's table 9 layout, our columns beside the thesis's where its widths match.

    Columns: for each widths group `ours <w>` and, when the thesis ran the same widths on the same
    data set, `thesis <w>` and `diff <w>` (ours - thesis). Rows: float, binary, best, components.
    """
    rows = ["F original", "B equivalente", "Mejor variante", *THESIS_ROWS]
    out = {}
    for w in groups(df):
        col = component_means(df, w)
        ours = [col["float"], col["binary"], col["best"], *[col.get(c, np.nan) for c in THESIS_ROWS]]
        out[f"ours {w}"] = ours
        th = T.thesis_column(dataset, tuple(int(x) for x in w.split(",")))
        if th is not None:
            theirs = [th["float"], th["binary"], th["best"], *[th["means"].get(c, np.nan) for c in THESIS_ROWS]]
            out[f"thesis {w}"] = theirs
            out[f"diff {w}"] = list(np.array(ours, float) - np.array(theirs, float))
    table = pd.DataFrame(out, index=rows)
    return table.dropna(how="all")


def best_names(df: pd.DataFrame, dataset: str) -> dict:
    """{widths: (our best variant, thesis's best variant or None)}."""
    out = {}
    for w in groups(df):
        th = T.thesis_column(dataset, tuple(int(x) for x in w.split(",")))
        out[w] = (component_means(df, w)["best_name"], th["best_name"] if th else None)
    return out


def regression(df: pd.DataFrame, widths: str, *, alpha: float = 0.05) -> dict:
    """OLS of test accuracy on the component flags (and varying option axes) of one widths group.

    Returns {"table": DataFrame(coef, ci_low, ci_high, p) indexed by regressor, "r2", "r2_adj",
    "n", "k", "rank_deficient", "model"} or {"error": why} when the rows cannot identify it.
    """
    import statsmodels.api as sm

    g = _ok(df[(df["widths"].astype(str) == str(widths)) & (df["kind"] == "B")])
    X = g[[c for c in COMPONENTS if g[c].nunique() > 1]].astype(float)
    for c in OPTION_COLUMNS:
        if c in g:
            X = pd.concat([X, option_dummies(g, c)], axis=1)
    n, k = len(g), X.shape[1]
    if k == 0:
        return {"error": f"no component varies among the {n} binary variants of {widths}"}
    if n <= k + 1:
        return {"error": f"{n} variants cannot identify {k} coefficients plus the intercept"}
    Xc = sm.add_constant(X, has_constant="add")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a noiseless table gives zero-width intervals (divide warnings)
        fit = sm.OLS(g[ACC].astype(float).to_numpy(), Xc).fit()
        ci = fit.conf_int(alpha)
        table = pd.DataFrame({"coef": fit.params, "ci_low": ci[0], "ci_high": ci[1], "p": fit.pvalues})
    return {"table": table, "r2": float(fit.rsquared), "r2_adj": float(fit.rsquared_adj), "n": n, "k": k,
            "rank_deficient": bool(np.linalg.matrix_rank(Xc.to_numpy()) < Xc.shape[1]), "model": fit}


def option_dummies(g: pd.DataFrame, col: str) -> pd.DataFrame:
    """0/1 columns `<col>_<level>` for the levels of an option axis, measured against its default
    level (else its most common), and only on the rows the option can change (OPTION_SCOPE): elsewhere 0, so the
    reset default of a variant without, say, a shortcut does not pose as a level."""
    scope = OPTION_SCOPE.get(col)
    rel = g[g[list(scope)].sum(axis=1) > 0] if scope else g
    vals = rel[col].dropna().astype(str)
    if vals.nunique() <= 1:
        return pd.DataFrame(index=g.index)
    defaults = rel[rel["options"].fillna("") == ""][col].dropna().astype(str) if "options" in rel else vals[:0]
    ref = (defaults if len(defaults) else vals).value_counts().index[0]  # the default level if present
    out = {}
    for level in sorted(set(vals) - {ref}, key=lambda v: (len(v), v)):
        d = pd.Series(0.0, index=g.index)
        d.loc[rel.index] = (rel[col].astype(str) == level).astype(float)
        out[f"{col}_{level}"] = d
    return pd.DataFrame(out, index=g.index)


def relative_sizes(df: pd.DataFrame) -> pd.DataFrame:
    """Mean relative size (binary / float) per shortcut kind and widths group (thesis table 20)."""
    b = df[(df["kind"] == "B") & df["relative_size"].notna()].copy()
    b = default_rows(b)
    b["shortcut"] = np.select([b[k] == 1 for k in DISPLAY_ORDER], list(DISPLAY_ORDER), "B")
    t = b.pivot_table(index="widths", columns="shortcut", values="relative_size", aggfunc="mean")
    return t.reindex(columns=[c for c in ("B", *DISPLAY_ORDER) if c in t.columns])


def pareto_mask(x, y, *, x_lower_is_better: bool = True) -> np.ndarray:
    """Points not dominated in (x, y), y higher is better (numpy/pandas have no Pareto helper)."""
    x = np.asarray(x, float)
    y = np.asarray(y, float)
    xs = x if x_lower_is_better else -x
    mask = np.zeros(len(x), bool)
    valid = ~(np.isnan(xs) | np.isnan(y))
    idx = np.where(valid)[0]
    order = idx[np.lexsort((-y[idx], xs[idx]))]  # best x first, ties: best y first
    best_y = -np.inf
    for i in order:
        if y[i] > best_y:
            mask[i] = True
            best_y = y[i]
    return mask


NOTABLE = 0.002  # an effect counts as notable above 0.2 points of accuracy: about one seed's noise


def recommendations(df: pd.DataFrame, dataset: str, *, alpha: float = 0.05, notable: float = NOTABLE) -> list[dict]:
    """The thesis's recommendations checked against this sweep.

    An effect "helps" when its coefficient is significant (p < alpha) and above `notable`.

    One dict per (recommendation, widths group): thesis, verdict ("supports", "partly",
    "disagrees" or "no data"), evidence (a sentence with the numbers).
    """
    out = []
    image = dataset.lower() in ("mnist", "cifar10") or dataset.startswith("idx:")
    for w in groups(df):
        reg = regression(df, w, alpha=alpha)
        if "error" in reg:
            out.append({"widths": w, "thesis": "(all recommendations)", "verdict": "no data", "evidence": reg["error"]})
            continue
        if reg["rank_deficient"]:
            out.append({"widths": w, "thesis": "(all recommendations)", "verdict": "no data",
                        "evidence": f"the {reg['n']} variants confound some components (rank-deficient "
                                    "regression); sweep more variants"})
            continue
        t = reg["table"]
        L = n_layers(w)
        g = default_rows(_ok(df[(df["widths"].astype(str) == w) & (df["kind"] == "B")]))

        def coef(c):
            return t.loc[c] if c in t.index else None

        def fmt(c):
            r = coef(c)
            return (f"{c} {r['coef']:+.4f} [{r['ci_low']:+.4f}, {r['ci_high']:+.4f}], p={r['p']:.3g}"
                    if r is not None else f"{c} not varied")

        # 1. batch-norm always helps; the last one most
        ns = [f"N{i}" for i in range(1, L + 1) if coef(f"N{i}") is not None]
        if ns:
            pos = [c for c in ns if coef(c)["coef"] > notable and coef(c)["p"] < alpha]
            top = max(ns, key=lambda c: coef(c)["coef"])
            last = f"N{L}"
            verdict = ("supports" if len(pos) == len(ns) and top == last else
                       "partly" if pos else "disagrees")
            out.append({"widths": w, "thesis": T.RECOMMENDATIONS[0], "verdict": verdict,
                        "evidence": f"{len(pos)} of {len(ns)} hidden batch-norms raise accuracy notably "
                                    f"(p<{alpha}, > {notable}); the largest effect is {top}"
                                    f"{' (the last binary layer)' if top == last else f', not the last ({last})'}; "
                                    + "; ".join(fmt(c) for c in ns)})
        # 2. dropout alone does not help; only with batch-norm
        ds = [c for c in [*(f"D{i}" for i in range(1, L + 1)), "D"] if coef(c) is not None]
        if ds:
            has_bn = g[[f"N{i}" for i in range(1, L + 1)]].sum(axis=1) > 0
            has_do = g[[f"D{i}" for i in range(1, L + 1)] + ["D"]].sum(axis=1) > 0
            plain = g[~has_bn & ~has_do & (g[list(LETTERS)].sum(axis=1) == 0)][ACC].mean()
            only_do = g[has_do & ~has_bn & (g[list(LETTERS)].sum(axis=1) == 0)][ACC].mean()
            bn_do, bn_nodo = g[has_bn & has_do][ACC].mean(), g[has_bn & ~has_do][ACC].mean()
            helps = [c for c in ds if coef(c)["coef"] > notable and coef(c)["p"] < alpha]
            verdict = "supports" if not helps else "disagrees" if len(helps) == len(ds) else "partly"
            out.append({"widths": w, "thesis": T.RECOMMENDATIONS[1], "verdict": verdict,
                        "evidence": f"{len(helps)} of {len(ds)} dropout flags raise accuracy notably; "
                                    f"dropout without batch-norm or shortcut {_f(only_do)} vs the plain binary "
                                    f"{_f(plain)}; with batch-norm: with dropout {_f(bn_do)}, without "
                                    f"{_f(bn_nodo)}; " + "; ".join(fmt(c) for c in ds)})
        # 3. shortcuts help at a moderate, computable size cost
        ss = [c for c in LETTERS if coef(c) is not None]
        if ss:
            pos = [c for c in ss if coef(c)["coef"] > notable and coef(c)["p"] < alpha]
            rel = g.assign(sc=np.select([g[k] == 1 for k in DISPLAY_ORDER], list(DISPLAY_ORDER), "none")) \
                   .groupby("sc")["relative_size"].mean()
            verdict = "supports" if len(pos) == len(ss) else "partly" if pos else "disagrees"
            out.append({"widths": w, "thesis": T.RECOMMENDATIONS[2], "verdict": verdict,
                        "evidence": f"{len(pos)} of {len(ss)} shortcut kinds raise accuracy notably; "
                                    "mean relative size " + ", ".join(f"{k} {v:.2f}" for k, v in rel.items())
                                    + "; " + "; ".join(fmt(c) for c in ss)})
        # 4. P for images, Q for one-hot text
        if coef("P") is not None and coef("Q") is not None:
            p, q = coef("P")["coef"], coef("Q")["coef"]
            want = "P" if image else "Q"
            got = "P" if p > q else "Q"
            overlap = not (coef("P")["ci_low"] > coef("Q")["ci_high"] or coef("Q")["ci_low"] > coef("P")["ci_high"])
            verdict = ("supports" if got == want and not overlap else "partly" if got == want else "disagrees")
            out.append({"widths": w, "thesis": T.RECOMMENDATIONS[3], "verdict": verdict,
                        "evidence": f"on {'image' if image else 'text'} data {got} has the larger effect "
                                    f"(P {p:+.4f}, Q {q:+.4f}); confidence intervals "
                                    f"{'overlap' if overlap else 'do not overlap'}"})
    return out


def _f(v) -> str:
    return "n/a" if v is None or v != v else f"{v:.4f}"
