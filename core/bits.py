"""Bit widths."""
from __future__ import annotations

import math

__all__ = ["bits_for"]


def bits_for(n: int) -> int:
    """Bits of an unsigned integer holding 0..n: ceil(log2(n + 1)), at least 1."""
    return max(1, math.ceil(math.log2(int(n) + 1)))
