"""The thesis's size model (train/size.py) against every size in the thesis's tables 10, 13, 16, 19."""
from __future__ import annotations

import math
import sys
import types

import pytest

from train.size import (SizeRow, float_baseline_size_kib, main_size, pooled_features, relative_size,
                        thesis_size_bits, thesis_size_breakdown, thesis_size_kib)
from train.spec import ModelSpec, SpecError

MNIST, IMDB, REUTERS, CIFAR = (784, 10), (10000, 1), (15000, 46), (3072, 10)

# (inputs/outputs, name, size KiB, relative size) exactly as printed in the thesis
# (tables 10 MNIST, 13 IMDB, 16 Reuters, 19 CIFAR-10); rows in TABLE_ERRATA are checked separately.
TABLE = [
    (MNIST, "F-128", 397.00, 1.00), (MNIST, "B-D128N,P", 62.79, 0.16), (MNIST, "B-D128N,Q", 117.29, 0.30),
    (MNIST, "B-D128N,F", 411.29, 1.04), (MNIST, "B-128N,PN,D", 63.79, 0.16), (MNIST, "B-128", 17.79, 0.04),
    (MNIST, "F-128,88", 440.32, 1.00), (MNIST, "B-D128N,D88N,P", 49.88, 0.11),
    (MNIST, "B-D128N,D88N,Q", 87.35, 0.20), (MNIST, "B-D128,D88N,F", 290.16, 0.66),
    (MNIST, "B-D128N,D88N,PN", 50.57, 0.11), (MNIST, "B-128,88", 17.95, 0.04),
    (MNIST, "F-128,88,88", 470.91, 1.00), (MNIST, "B-D128N,D88N,D88N,P", 51.86, 0.11),
    (MNIST, "B-D128N,D88N,D88N,Q", 89.33, 0.19), (MNIST, "B-D128N,D88N,D88N,F", 292.14, 0.62),
    (MNIST, "B-D128N,D88N,D88N,PN,D", 52.55, 0.11), (MNIST, "B-128,88,88", 19.23, 0.04),
    (IMDB, "F-250", 9767.00, 1.00), (IMDB, "B-D250N,P", 1395.03, 0.14), (IMDB, "B-D250N,Q", 2751.47, 0.28),
    (IMDB, "B-D250N,F", 10075.69, 1.03), (IMDB, "B-D250N,Q,D", 2751.27, 0.28), (IMDB, "B-250", 307.13, 0.03),
    (IMDB, "F-32,32", 1250.38, 1.00), (IMDB, "B-D32N,D32N,P", 179.07, 0.14), (IMDB, "B-D32N,D32N,Q", 352.69, 0.28),
    (IMDB, "B-D32N,D32N,F", 1290.19, 1.03), (IMDB, "B-32,32,Q", 352.19, 0.28), (IMDB, "B-32,32", 39.57, 0.03),
    (IMDB, "F-32,16,8", 1252.75, 1.00), (IMDB, "B-D32N,D16N,D8N,P", 74.58, 0.06),
    (IMDB, "B-D32N,D16N,D8N,Q", 117.99, 0.09), (IMDB, "B-D32N,D16N,D8N,F", 352.36, 0.28),
    (IMDB, "B-32N,D16N,D8,Q,D", 117.93, 0.05), (IMDB, "B-32,16,8", 39.39, 0.02),
    (REUTERS, "F-256", 15047.00, 1.00), (REUTERS, "B-D256N,P", 2184.93, 0.15),
    (REUTERS, "B-D256N,Q", 4268.93, 0.28), (REUTERS, "B-D256N,F", 15518.93, 1.03),
    (REUTERS, "B-256N,QN", 4270.93, 0.28), (REUTERS, "B-256", 515.93, 0.03),
    (REUTERS, "F-128,64", 7544.43, 1.00), (REUTERS, "B-D128N,D64N,P", 666.05, 0.09),
    (REUTERS, "B-D128N,D64N,Q", 1187.05, 0.16), (REUTERS, "B-D128N,D64N,F", 3998.55, 0.53),
    (REUTERS, "B-D128,D64N,QN,D", 1186.35, 0.16), (REUTERS, "B-128,64", 247.80, 0.03),
    (REUTERS, "F-128,64,32", 7546.00, 1.00), (REUTERS, "B-D128N,D64N,D32N,P", 452.55, 0.06),
    (REUTERS, "B-D128N,D64N,D32N,Q", 713.05, 0.09), (REUTERS, "B-D128N,D64N,D32N,F", 2119.30, 0.28),
    (REUTERS, "B-D128,D64N,D32N,Q,D", 713.05, 0.09), (REUTERS, "B-128,64,32", 242.43, 0.03),
    (CIFAR, "F-256", 3083.04, 1.00), (CIFAR, "B-D256N,P", 451.04, 0.15), (CIFAR, "B-D256N,Q", 878.04, 0.28),
    (CIFAR, "B-D256N,F", 3184.04, 1.03), (CIFAR, "B-D256N,P,D", 451.04, 0.15), (CIFAR, "B-256", 107.04, 0.03),
    (CIFAR, "F-256,256", 3340.04, 1.00), (CIFAR, "B-D256N,D256N,P", 462.04, 0.14),
    (CIFAR, "B-D256N,D256N,Q", 889.04, 0.27), (CIFAR, "B-D256N,D256N,F", 3195.04, 0.96),
    (CIFAR, "B-256,256", 116.04, 0.03), (CIFAR, "F-256,256,256", 3597.04, 1.00),
    (CIFAR, "B-D256N,D256N,D256N,P", 473.04, 0.13), (CIFAR, "B-D256N,D256N,D256N,Q", 900.04, 0.25),
    (CIFAR, "B-D256N,D256N,D256N,F", 3204.04, 0.89), (CIFAR, "B-D256N,D256,D256N,PN,D", 475.04, 0.13),
    (CIFAR, "B-256,256,256", 125.04, 0.03),
]

# Rows where the printed table disagrees with itself, and the reading this model takes.
# "name": the table's name is missing an N: the printed size is exactly that of `fixed`, and it is
#         not that of the printed name under any accounting that fits the other 50 rows.
NAME_TYPOS = {
    (MNIST, "B-D128,D88N,F"): "B-D128N,D88N,FN",
    (MNIST, "B-D128N,D88N,D88N,F"): "B-D128N,D88N,D88N,FN",
    (REUTERS, "B-D128N,D64N,F"): "B-D128,D64N,F",          # an N too many: 1.00 KiB = BN of 128
    (REUTERS, "B-D128,D64N,D32N,Q,D"): "B-D128N,D64N,D32N,Q,D",
    (CIFAR, "B-D256N,F"): "B-D256N,FN",
    (CIFAR, "B-D256N,D256N,F"): "B-D256N,D256N,FN",
    (CIFAR, "B-D256N,D256,D256N,PN,D"): "B-D256N,D256N,D256N,PN,D",
}
# Float baselines printed truncated to whole KiB (397.54 -> 397.00 etc.); the rel. column of
# B-D128N,F (1.04) was computed against the truncated 397.00.
TRUNCATED = {(MNIST, "F-128"), (IMDB, "F-250"), (REUTERS, "F-256"), (REUTERS, "F-128,64,32")}
# Printed values no count of stored bits can give (our value, then the table's):
UNEXPLAINED = {
    (IMDB, "B-D250N,P"): 1395.02,         # table 1395.03: 0.007 KiB = 7 bytes off, not a whole float
    (IMDB, "B-D250N,Q,D"): 2751.47,       # table 2751.27, but B-D250N,Q (same stored layers) = 2751.47
    (IMDB, "F-32,32"): 1254.38,           # table 1250.38: exactly 4.00 KiB less (a digit typo)
    (REUTERS, "B-D128,D64N,QN,D"): 1186.55,  # table 1186.35
}
REL_TYPOS = {(IMDB, "B-32N,D16N,D8,Q,D"): 0.09, (IMDB, "B-32,16,8"): 0.03}  # table 0.05 and 0.02
REL_VS_TRUNCATED = {(MNIST, "B-D128N,F"): 397.00}

EXACT = [r for r in TABLE if (r[0], r[1]) not in {**NAME_TYPOS, **UNEXPLAINED}.keys() | TRUNCATED]


def test_every_table_row_is_checked_exactly_once():
    """Each size of the thesis's tables is pinned by exactly one of the tests below: exactly, as a
    named typo, as a truncated float size, or as an unexplained row (no row left out, none twice)."""
    keys = [(io, n) for io, n, _, _ in TABLE]
    assert len(set(keys)) == len(keys)
    groups = [{(r[0], r[1]) for r in EXACT}, set(NAME_TYPOS), set(UNEXPLAINED), set(TRUNCATED)]
    assert sum(map(len, groups)) == len(keys) and set().union(*groups) == set(keys)


@pytest.mark.parametrize("name,expected", [("B-128", 17.79), ("F-128,88", 440.32), ("B-D128N,Q", 117.29)])
def test_brief_worked_examples(name, expected):
    assert f"{thesis_size_kib(name, 784, 10):.2f}" == f"{expected:.2f}"


@pytest.mark.parametrize("io,name,kib,rel", EXACT, ids=[f"{r[0][0]}-{r[1]}" for r in EXACT])
def test_table_sizes_exact(io, name, kib, rel):
    assert f"{thesis_size_kib(name, *io):.2f}" == f"{kib:.2f}"
    key = (io, name)
    if key in REL_VS_TRUNCATED:
        assert f"{thesis_size_kib(name, *io) / REL_VS_TRUNCATED[key]:.2f}" == f"{rel:.2f}"
        assert f"{relative_size(name, *io):.2f}" == "1.03"
    elif key in REL_TYPOS:
        assert f"{relative_size(name, *io):.2f}" == f"{REL_TYPOS[key]:.2f}" != f"{rel:.2f}"
    else:
        assert f"{relative_size(name, *io):.2f}" == f"{rel:.2f}"


@pytest.mark.parametrize("key,fixed", NAME_TYPOS.items(), ids=[k[1] for k in NAME_TYPOS])
def test_table_name_typos(key, fixed):
    io, name = key
    kib, rel = next((k, r) for i, n, k, r in TABLE if (i, n) == key)
    assert f"{thesis_size_kib(fixed, *io):.2f}" == f"{kib:.2f}"
    assert f"{thesis_size_kib(name, *io):.2f}" != f"{kib:.2f}"
    assert f"{relative_size(fixed, *io):.2f}" == f"{rel:.2f}"


@pytest.mark.parametrize("key", sorted(TRUNCATED), ids=[k[1] for k in sorted(TRUNCATED)])
def test_table_truncated_float_sizes(key):
    io, name = key
    kib = next(k for i, n, k, _ in TABLE if (i, n) == key)
    ours = thesis_size_kib(name, *io)
    assert math.floor(ours) == kib and ours != kib
    assert ours == float_baseline_size_kib(ModelSpec.parse(name).widths, *io)


@pytest.mark.parametrize("key,ours", UNEXPLAINED.items(), ids=[k[1] for k in UNEXPLAINED])
def test_table_unexplained_rows(key, ours):
    io, name = key
    kib = next(k for i, n, k, _ in TABLE if (i, n) == key)
    assert f"{thesis_size_kib(name, *io):.2f}" == f"{ours:.2f}"
    assert f"{ours:.2f}" != f"{kib:.2f}"  # still unexplained: the thesis prints another size


def test_float_mlp_is_eq12():
    # eq. 12: S = sum_t m (|V_{t-1}| + 1) |V_t|, m = 32
    for widths, (n_in, n_out) in [((128, 88), MNIST), ((32, 16, 8), IMDB), ((7,), (5, 3))]:
        layers = [n_in, *widths, n_out]
        bits = sum(32 * (a + 1) * b for a, b in zip(layers, layers[1:]))
        assert float_baseline_size_kib(widths, n_in, n_out) == bits / 8 / 1024


def test_breakdown_b_d128n_d88n_pn_d():
    rows = thesis_size_breakdown("B-D128N,D88N,PN,D", 784, 10)
    assert [(r.layer, r.weights, r.weight_bits, r.floats) for r in rows] == [
        ("dense1 (binary 784x128)", 784 * 128, 1, 128),
        ("bn1", 0, 0, 256),
        ("dense2 (binary 128x88)", 128 * 88, 1, 88),
        ("bn2", 0, 0, 176),
        ("shortcut P (pool 9, float 87x88)", 87 * 88, 32, 88),
        ("shortcut bn", 0, 0, 176),
        ("output (float 88x10)", 880, 32, 10),
    ]
    assert sum(r.bits for r in rows) == thesis_size_bits("B-D128N,D88N,PN,D", 784, 10) == 51784 * 8
    assert SizeRow("x", 10, 8, 1).bits == 112


def test_q_shortcut_bits_and_pool_window():
    q8 = thesis_size_bits("B-128,Q", 784, 10)
    assert thesis_size_bits("B-128,Q", 784, 10, shortcut_bits=4) == q8 - 4 * 784 * 128
    assert pooled_features(784) == 87 and pooled_features(784, 8) == 98 and pooled_features(10000) == 1111
    p8 = thesis_size_bits("B-128,P", 784, 10, pool_window=8)
    assert p8 - thesis_size_bits("B-128,P", 784, 10) == 32 * (98 - 87) * 128
    assert thesis_size_bits("B-128,P", 784, 10, pool_window=1) == thesis_size_bits("B-128,F", 784, 10)
    with pytest.raises(SpecError, match="pool window 9 is larger than the 5 inputs"):
        thesis_size_kib("B-4,P", 5, 2)
    with pytest.raises(SpecError, match="outputs must be an integer >= 1, got 0"):
        thesis_size_kib("B-4", 5, 0)
    with pytest.raises(SpecError, match="unknown layer token"):
        thesis_size_kib("B-4X", 5, 2)


def test_cli_size_inputs(capsys):
    assert main_size(["B-D128N,Q", "--inputs", "784", "--outputs", "10"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "B-D128N,Q  (784 inputs, 10 outputs, pool window 9)"
    assert "117.29 KiB" in out and "F-128" in out and "397.54 KiB" in out and "0.30" in out
    assert "deployed" not in out
    assert main_size(["B-128N,PN,D", "--inputs", "784", "--outputs", "10", "--layers"]) == 0
    out = capsys.readouterr().out
    assert "shortcut P (pool 9, float 87x128)" in out and "63.79 KiB" in out


def test_cli_size_deployed_and_dataset(capsys, monkeypatch):
    fake = types.ModuleType("train.data")
    fake.dataset_info = lambda name: {"mnist": (784, 10, 255, (28, 28, 1))}[name]
    fake.DataError = type("DataError", (Exception,), {})
    monkeypatch.setitem(sys.modules, "train.data", fake)
    calls = []

    def deployed(spec, n_in, n_out):
        calls.append((spec.name, n_in, n_out))
        return {"bits": 8192 * 3, "layers": [{"name": "mvau0", "bits": 8192 * 2}, ("mvau1", 8192)]}

    assert main_size(["B-D128N,Q", "--dataset", "mnist", "--layers"], deployed_fn=deployed) == 0
    out = capsys.readouterr().out
    assert calls == [("B-D128N,Q", 784, 10)]
    assert out.splitlines()[0] == "B-D128N,Q  (mnist: 784 inputs, 10 outputs, pool window 9)"
    assert "3.00 KiB (24576 bits)" in out and "mvau0" in out and "2.00 KiB" in out


@pytest.mark.parametrize("argv,err", [
    (["B-D128X", "--inputs", "784", "--outputs", "10"],
     "error: unknown layer token 'D128X' at position 2 in 'B-D128X'"),
    (["B-128", "--inputs", "784"], "error: give --dataset NAME or both --inputs and --outputs"),
    (["B-128", "--dataset", "mnist", "--inputs", "784"], "error: give either --dataset or --inputs/--outputs"),
    (["B-128,P", "--inputs", "4", "--outputs", "2"], "error: pool window 9 is larger than the 4 inputs"),
])
def test_cli_size_errors(capsys, argv, err):
    assert main_size(argv) == 2
    cap = capsys.readouterr()
    assert cap.err.startswith(err) and cap.err.count("\n") == 1 and cap.out == ""
