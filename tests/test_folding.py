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


def test_search_fits_budget_and_beats_stock(specialized):
    from hw_build.boards import get_board
    from hw_build.estimate import model_resources
    from hw_build.folding import (_max_cycles, check_folding, resource_aware_folding,
                                  stock_folding)

    board = get_board("Pynq-Z2")
    model = _load(specialized)
    # FINN's stock search over a sweep of targets: its fastest folding within each budget
    stock = []
    for fps in [1e4 * 2 ** (k / 2) for k in range(0, 27)]:  # 10k .. 81.9M fps
        m = stock_folding(model, fps, 100.0)
        stock.append((_max_cycles(m), model_resources(m, board.part)))
    checked = 0
    for fraction in (0.02, 0.05, 0.2):
        fitting = [c for c, tot in stock if _fits(tot, board, fraction)]
        m, info = resource_aware_folding(model, board, budget_fraction=fraction)
        check_folding(m)
        total = model_resources(m, board.part)
        assert info["fits_budget"] and _fits(total, board, fraction), (fraction, total)
        assert info["max_cycles"] == _max_cycles(m)
        if fitting:
            checked += 1
            assert _max_cycles(m) <= min(fitting), (fraction, _max_cycles(m), min(fitting))
    assert checked >= 2
    # a looser budget is never slower
    m1, _ = resource_aware_folding(model, board, budget_fraction=0.05)
    m2, _ = resource_aware_folding(model, board, budget_fraction=0.5)
    assert _max_cycles(m2) <= _max_cycles(m1)


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
        if _max_cycles(ms) <= target:  # same frame rate: not more of the scarcest resource
            cap = board.capacity()
            assert max(ours[r] / cap[r] for r in cap if cap[r]) <= \
                max(theirs[r] / cap[r] for r in cap if cap[r]) + 1e-9


def test_search_respects_a_board_without_brams_or_dsps(specialized):
    from hw_build.boards import get_board
    from hw_build.estimate import model_resources
    from hw_build.folding import resource_aware_folding

    lut_only = replace(get_board("Pynq-Z2"), name="LUT-only", bram18=0, dsp=0, lut=20_000)
    m, info = resource_aware_folding(_load(specialized), lut_only, budget_fraction=1.0)
    total = model_resources(m, lut_only.part)
    assert info["fits_budget"]
    assert total["BRAM_18K"] == 0 and total["DSP"] == 0 and total["LUT"] <= 20_000


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
