"""hw_build.folding: the resource-aware search against FINN's stock target-fps search."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from hw_build_helpers import estimate_build, tiny_run

pytestmark = pytest.mark.finn


@pytest.fixture(scope="session")
def specialized(tmp_path_factory, mnist_dir):
    """The tiny run's graph right after step_specialize_layers (before any folding)."""
    run = tiny_run(tmp_path_factory.mktemp("hwrun"), mnist_dir)
    rep = estimate_build(run)
    return Path(rep["out_dir"]) / "steps" / "step_specialize_layers.onnx"


def _load(path):
    from qonnx.core.modelwrapper import ModelWrapper

    return ModelWrapper(str(path))


def _fits(total, board, fraction):
    cap = board.capacity()
    return all(total[r] <= cap[r] * fraction + 1e-9 for r in cap)


def _peak(total, board):
    """The smallest budget fraction of `board` that holds `total`."""
    cap = board.capacity()
    return max(total[r] / cap[r] for r in cap if cap[r])


def test_search_fits_budget_and_beats_stock(specialized):
    from hw_build.boards import get_board
    from hw_build.estimate import model_resources
    from hw_build.folding import (_max_cycles, check_folding, resource_aware_folding,
                                  stock_folding)

    board = get_board("Pynq-Z2")
    model = _load(specialized)
    # FINN's stock search over a sweep of targets; each result defines a budget it just fits
    stock = {}
    for fps in [1e4 * 2 ** k for k in range(0, 12)]:  # 10k .. 20M fps
        m = stock_folding(model, fps, 100.0)
        total = model_resources(m, board.part)
        stock.setdefault(_max_cycles(m), total)
    points = sorted((_peak(t, board), c) for c, t in stock.items() if _peak(t, board) <= 1.0)
    assert len(points) >= 3, points
    for fraction, stock_cycles in points[:: max(1, len(points) // 3)]:
        m, info = resource_aware_folding(model, board, budget_fraction=fraction)
        check_folding(m)
        total = model_resources(m, board.part)
        assert info["fits_budget"] and _fits(total, board, fraction), (fraction, total)
        assert info["max_cycles"] == _max_cycles(m)
        # at least as fast as FINN's stock search within the same budget
        assert _max_cycles(m) <= stock_cycles, (fraction, _max_cycles(m), stock_cycles)
    # a looser budget is never slower
    lo, hi = points[0][0], 0.9
    m1, _ = resource_aware_folding(model, board, budget_fraction=lo)
    m2, _ = resource_aware_folding(model, board, budget_fraction=hi)
    assert _max_cycles(m2) <= _max_cycles(m1)
    # a budget below the slowest folding's needs: the least-resource folding, flagged
    m3, info3 = resource_aware_folding(model, board, budget_fraction=0.001)
    assert not info3["fits_budget"]


def test_search_with_target_meets_it_cheaper_than_stock(specialized):
    from hw_build.boards import get_board
    from hw_build.estimate import model_resources
    from hw_build.folding import _max_cycles, resource_aware_folding, stock_folding

    board = get_board("Pynq-Z2")
    model = _load(specialized)
    for fps in (1e5, 1e6):
        target = int(100e6 / fps)
        m, info = resource_aware_folding(model, board, target_fps=fps)
        assert _max_cycles(m) <= target and info["target_cycles"] == target
        ours = model_resources(m, board.part)
        ms = stock_folding(model, fps, 100.0)
        theirs = model_resources(ms, board.part)
        if _max_cycles(ms) <= target:
            # same frame rate: not more resources (each counted as its share of the board,
            # the cost the search minimizes layer by layer)
            cap = board.capacity()
            cost = lambda t: sum(t[r] / cap[r] for r in cap if cap[r])  # noqa: E731
            assert cost(ours) <= cost(theirs) + 1e-9, (fps, ours, theirs)


def test_search_respects_a_board_without_brams(specialized):
    from hw_build.boards import get_board
    from hw_build.estimate import model_resources
    from hw_build.folding import _max_cycles, resource_aware_folding

    z2 = get_board("Pynq-Z2")
    no_bram = replace(z2, name="no-BRAM", bram18=0)
    m, info = resource_aware_folding(_load(specialized), no_bram, budget_fraction=1.0)
    total = model_resources(m, no_bram.part)
    assert info["fits_budget"] and total["BRAM_18K"] == 0
    assert total["LUT"] <= z2.lut and total["DSP"] <= z2.dsp
    # with BRAMs available it is at least as fast
    m2, _ = resource_aware_folding(_load(specialized), z2, budget_fraction=1.0)
    assert _max_cycles(m2) <= _max_cycles(m)


def test_folding_file_round_trip_and_checks(specialized, tmp_path):
    from hw_build.boards import get_board
    from hw_build.folding import (FoldingError, apply_folding_file, check_folding,
                                  extract_folding, resource_aware_folding, save_folding)

    model = _load(specialized)
    m, _ = resource_aware_folding(model, get_board("Pynq-Z2"), budget_fraction=0.1)
    f = save_folding(m, tmp_path / "f.json")
    m2 = apply_folding_file(_load(specialized), f)
    assert extract_folding(m2) == json.loads(f.read_text())
    # a PE that does not divide the layer's channels is refused, naming layer and numbers
    cfg = json.loads(f.read_text())
    name = next(k for k in cfg if k.startswith("MVAU"))
    cfg[name]["PE"] = 7
    f.write_text(json.dumps(cfg))
    with pytest.raises(FoldingError, match=f"{name}.PE=7"):
        apply_folding_file(_load(specialized), f)
    f.write_text("{not json")
    with pytest.raises(FoldingError, match="expected a FINN folding JSON"):
        apply_folding_file(_load(specialized), f)
    with pytest.raises(FoldingError, match="not found"):
        apply_folding_file(_load(specialized), tmp_path / "missing.json")
    check_folding(m2)
