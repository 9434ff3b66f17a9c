"""The model options are declared once (train/options.py); every other place derives from it."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from train.options import (CAPACITY, MAKE_VARS, OPTION_NAMES, OPTION_SCOPE, SWEEP_AXES, ModelError,
                           ModelOptions, check_options, option_fields, options_suffix)

REPO = Path(__file__).resolve().parent.parent


def test_makefile_option_vars_are_the_declared_ones():
    text = (REPO / "Makefile").read_text()
    line = re.search(r"^OPTION_VARS\s*:=\s*(.+)$", text, re.M).group(1).split()
    assert line == list(MAKE_VARS.values())
    assert list(MAKE_VARS) == list(SWEEP_AXES)


def test_clis_and_dse_take_every_declared_flag():
    import argparse

    from dse.__main__ import AXIS_ARGS
    from train.cli_types import add_option_args, options_from_args

    p = argparse.ArgumentParser()
    add_option_args(p)
    flags = [f.metadata["flag"] for f in option_fields()]
    args = p.parse_args(["--input-bits", "2", "--shortcut-bits", "4", "--pool-mode", "vertical"])
    assert options_from_args(args) == ModelOptions(input_bits=2, shortcut_weight_bits=4, pool_mode="vertical")
    with pytest.raises(SystemExit):
        p.parse_args(["--input-bits", "9"])
    assert [a[1] for a in AXIS_ARGS] == [f for f, f_ in zip(flags, option_fields()) if f_.name in SWEEP_AXES]


def test_suffix_scope_capacity_and_checks_come_from_the_fields():
    assert options_suffix(ModelOptions()) == ""
    assert options_suffix(ModelOptions(input_bits=2, shortcut_weight_bits=4)) == "__in2_sc4"
    assert options_suffix(ModelOptions(dropout=0.1, pool_mode="vertical")) == "__pmvertical_do0.1"
    assert OPTION_SCOPE == {"shortcut_weight_bits": ("P", "Q"), "pool_window": ("P",), "pool_mode": ("P",)}
    assert CAPACITY["input_bits"] == 1 and CAPACITY["pool_window"] == -1 and "pool_mode" not in CAPACITY
    assert set(OPTION_NAMES) == set(ModelOptions().to_dict())
    for bad, msg in ((dict(input_bits=9), "input_bits=9 is outside 1..8"),
                     (dict(pool_window=0), "pool_window=0 must be an integer >= 1"),
                     (dict(pool_mode="diag"), "pool_mode='diag'; expected one of flat, vertical"),
                     (dict(dropout=1.0), r"dropout=1.0 must be in \[0, 1\)")):
        with pytest.raises(ModelError, match=msg):
            check_options(ModelOptions(**bad))


def test_makefile_default_accelerator_is_the_declared_one():
    from train.options import ACCELERATOR_DEFAULTS, make_var

    text = (REPO / "Makefile").read_text()
    for name, value in ACCELERATOR_DEFAULTS.items():
        assert re.search(rf"^{make_var(name)}\s*\?=\s*{value}\s*$", text, re.M), name
