"""The thesis's published numbers that the DSE report is compared with.

Source: ../shared/seed/thesis-binary-residual-mlp.es.txt (Spanish original), chapter 5.6.
Component rows follow the configuration bits [N, P, F, Q, D1, N1, ..., D]: `N` = batch-norm on
the shortcut, `P`/`F`/`Q` = shortcut kind, `Di`/`Ni` = dropout before / batch-norm after hidden
layer i, `D` = dropout before the output layer. Each value is the mean test accuracy of the
variants that contain the component. The thesis reports no regression coefficients (section 4.11
says per-component means were "compared with a multivariable linear regression" but prints only
the means), so none are encoded here.
"""
from __future__ import annotations

COMPONENTS = ("D", "N", "P", "F", "Q", "D1", "N1", "D2", "N2", "D3", "N3", "D4", "N4")


def _col(widths, n_variants, f_orig, b_equiv, best, best_name, **means):
    return {"widths": tuple(widths), "variants_tested": n_variants, "float": f_orig,
            "binary": b_equiv, "best": best, "best_name": best_name, "means": dict(means)}


# Tabla 8 (widths, variants), Tabla 9 (means), Tabla 10 (best variant names).
# Tabla 8 prints "F-128,128,88" for 3 layers but lists units 128 88 88 and Tabla 10 uses F-128,88,88.
MNIST = {
    1: _col((128,), 56, 0.9749, 0.9024, 0.9401, "B-128N,PN,D",
            D=0.9061, N=0.9080, P=0.9174, F=0.9022, Q=0.9069, D1=0.9110, N1=0.9238),
    2: _col((128, 88), 224, 0.9771, 0.9162, 0.9630, "B-D128N,D88N,PN",
            D=0.9429, N=0.9437, P=0.9464, F=0.9420, Q=0.9419, D1=0.9433, N1=0.9479,
            D2=0.9428, N2=0.9520),
    3: _col((128, 88, 88), 896, 0.9772, 0.8510, 0.9652, "B-D128N,D88N,D88N,PN,D",
            D=0.9221, N=0.9241, P=0.9256, F=0.9214, Q=0.9218, D1=0.9223, N1=0.9309,
            D2=0.9238, N2=0.9448, D3=0.9225, N3=0.9514),
}

# Tabla 11 (widths, variants; 3 layers: random sample of 63), Tabla 12 (means), Tabla 13 (best).
IMDB = {
    1: _col((250,), 56, 0.8577, 0.8303, 0.8515, "B-D250N,Q,D",
            D=0.8359, N=0.8348, P=0.8336, F=0.8377, Q=0.8396, D1=0.8386, N1=0.8361),
    2: _col((32, 32), 224, 0.8549, 0.8565, 0.8713, "B-32,32,Q",
            D=0.8417, N=0.8355, P=0.8378, F=0.8421, Q=0.8437, D1=0.8421, N1=0.8345,
            D2=0.8404, N2=0.8390),
    3: _col((32, 16, 8), 63, 0.8637, 0.8533, 0.8748, "B-32N,D16N,D8,Q,D",
            D=0.8411, N=0.8330, P=0.8383, F=0.8511, Q=0.8425, D1=0.8431, N1=0.8363,
            D2=0.8421, N2=0.8425, D3=0.8410, N3=0.8380),
}

# Tabla 14 (widths, variants; 1 layer printed as 65, 3 layers a sample of 62), Tabla 15, Tabla 16.
REUTERS = {
    1: _col((256,), 65, 0.7734, 0.7565, 0.7907, "B-256N,QN",
            D=0.7672, N=0.7668, P=0.7577, F=0.7674, Q=0.7669, D1=0.7635, N1=0.7792),
    2: _col((128, 64), 224, 0.7850, 0.6963, 0.8037, "B-D128,D64N,QN,D",
            D=0.7601, N=0.7578, P=0.7505, F=0.7592, Q=0.7673, D1=0.7579, N1=0.7704,
            D2=0.7576, N2=0.7789),
    3: _col((128, 64, 32), 62, 0.7752, 0.5505, 0.8072, "B-D128,D64N,D32N,Q,D",
            D=0.7280, N=0.7236, P=0.7167, F=0.7216, Q=0.7524, D1=0.7163, N1=0.7557,
            D2=0.7018, N2=0.7724, D3=0.7001, N3=0.7767),
}

# Tabla 17 (widths as in its descriptions F-256, F-256,256, F-256,256,256; 3 layers a sample
# of 52), Tabla 18 (means), Tabla 19 (best).
CIFAR10 = {
    1: _col((256,), 65, 0.4224, 0.2612, 0.4061, "B-D256N,P,D",
            D=0.2803, N=0.2907, P=0.2824, F=0.2861, Q=0.3025, D1=0.2857, N1=0.3708),
    2: _col((256, 256), 224, 0.4567, 0.1000, 0.4679, "B-D256N,D256N,P",
            D=0.2831, N=0.2850, P=0.2762, F=0.3040, Q=0.3025, D1=0.2875, N1=0.3677,
            D2=0.3008, N2=0.3096),
    3: _col((256, 256, 256), 52, 0.4350, 0.1000, 0.4661, "B-D256N,D256,D256N,PN,D",
            D=0.2835, N=0.2836, P=0.2340, F=0.2530, Q=0.3025, D1=0.2362, N1=0.3407,
            D2=0.2478, N2=0.3016, D3=0.2712, N3=0.3418),
}

TABLES = {"mnist": MNIST, "imdb": IMDB, "reuters": REUTERS, "cifar10": CIFAR10}
TABLE_NUMBER = {"mnist": 9, "imdb": 12, "reuters": 15, "cifar10": 18}

# Tabla 20: mean relative size (binary / float model) per shortcut kind and number of layers,
# averaged over the four data sets ("B" = binary without shortcut).
RELATIVE_SIZE = {
    1: {"B": 0.04, "P": 0.15, "Q": 0.29, "F": 1.03},
    2: {"B": 0.03, "P": 0.12, "Q": 0.23, "F": 0.79},
    3: {"B": 0.03, "P": 0.09, "Q": 0.16, "F": 0.52},
}

# The thesis's recommendations (section 6.2), in English.
RECOMMENDATIONS = (
    "Batch-norm layers always improve accuracy; the one right after the last binary layer "
    "contributes most.",
    "Dropout alone brings no notable improvement; use it only together with batch-norm.",
    "Residual shortcuts improve accuracy at a moderate size cost that can be computed before "
    "training (the 8-bit quantized shortcut is the economical one; float shortcuts can exceed "
    "the float model's size).",
    "Pooling shortcuts (P) are the best choice for real-valued input such as images; quantized "
    "shortcuts (Q) for one-hot text input (section 6.1).",
)


def thesis_column(dataset: str, widths) -> dict | None:
    """The thesis's consolidated column for `dataset` at exactly these hidden widths, else None."""
    table = TABLES.get(dataset.lower())
    if not table:
        return None
    col = table.get(len(tuple(widths)))
    if col is None or col["widths"] != tuple(int(w) for w in widths):
        return None
    return col
