"""The ONE place with workarounds that let Verilator build finn-rtllib (finn-plus 1.6.1) sources.

`apply(file_name, text)` rewrites the copy of one HDL file that hw_build.rtlsim verilates (the
installed finn-rtllib is never edited). Each fix is an exact text substitution that must match,
so a changed finn-rtllib fails loudly instead of silently simulating something else; each has a
note in docs/upstream/verilator-<name>.md.
"""
from __future__ import annotations

__all__ = ["FIXES", "RtlFixError", "apply"]


class RtlFixError(RuntimeError):
    """A finn-rtllib file no longer contains the text a workaround rewrites."""


# file name -> [(why, old text, new text)]
FIXES: dict[str, list[tuple[str, str, str]]] = {}


def apply(name: str, text: str) -> str:
    """`text` of finn-rtllib file `name` with its Verilator workarounds applied."""
    for why, old, new in FIXES.get(name, []):
        if text.count(old) != 1:
            raise RtlFixError(f"{name}: the text that the workaround for '{why}' rewrites is not "
                              "there exactly once (finn-rtllib changed): update hw_build/rtl_fixes.py")
        text = text.replace(old, new)
    return text
