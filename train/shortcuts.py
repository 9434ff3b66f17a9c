"""The shortcut kinds of the thesis's notation, each declared ONCE, here (no torch).

A kind says what it is (letter in the notation, name), whether the accelerator can take it,
whether its dense layer is quantized in a binary model, whether it pools the input first, and
its thesis-size row. The notation's bit order (`train.spec`), the model (`train.models`), the
size tables (`train.size`) and the design-space tables (`dse`) all read this table. A new kind
is one entry here plus its layer in `train.models` (and, if FINN builds it with a new HW op,
that op in `hw_build/golden_nodes.py`, `deploy/sim.py` and `hw_build.folding.PE_OPS`).
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ShortcutKind", "SHORTCUTS", "LETTERS", "DISPLAY_ORDER", "get_shortcut"]


@dataclass(frozen=True)
class ShortcutKind:
    letter: str       # in the notation, e.g. B-D128N,QN,D
    name: str
    fpga: bool        # FINN builds it (its dense layer is quantized)
    quantized: bool   # a binary model quantizes its dense layer (shortcut_weight_bits)
    pooled: bool      # max-pooling over the input first (pool_window, pool_mode)

    def thesis_row(self, n_feat: int, width: int, *, float_bits: int, shortcut_bits: int,
                   pool_window: int) -> tuple[str, int, int]:
        """(label, weights, bits per weight) of the thesis's size model (eqs. 17-19); `n_feat`:
        the inputs of its dense layer (train.size.pooled_features for a pooled kind)."""
        n_in = n_feat
        if self.pooled:  # the thesis sizes the pooled kind's dense layer as float
            return (f"shortcut {self.letter} (pool {pool_window}, float {n_feat}x{width})",
                    n_feat * width, float_bits)
        if self.quantized:
            return f"shortcut {self.letter} ({shortcut_bits}-bit {n_in}x{width})", n_in * width, shortcut_bits
        return f"shortcut {self.letter} (float {n_in}x{width})", n_in * width, float_bits


# In the thesis's bit order [N, P, F, Q, ...] (train.spec encodes it from this order).
SHORTCUTS: dict[str, ShortcutKind] = {k.letter: k for k in (
    ShortcutKind("P", "max-pooling + 8-bit dense", fpga=True, quantized=True, pooled=True),
    ShortcutKind("F", "float dense", fpga=False, quantized=False, pooled=False),
    ShortcutKind("Q", "8-bit quantized dense", fpga=True, quantized=True, pooled=False),
)}
LETTERS = tuple(SHORTCUTS)
DISPLAY_ORDER = ("P", "Q", "F")  # the reports' order: the FPGA kinds first, as the thesis ranks them


def get_shortcut(letter: str) -> ShortcutKind:
    return SHORTCUTS[letter]
