"""Target boards: FPGA part, resource capacity, default clock and FINN's names for them."""
from __future__ import annotations

from dataclasses import asdict, dataclass

__all__ = ["Board", "BoardError", "BOARDS", "get_board", "RESOURCES", "FIT_BUDGET", "over_budget",
           "fits", "budget_label"]

# The resources the fit check compares (FINN's estimate keys).
RESOURCES = ("LUT", "BRAM_18K", "DSP", "URAM")
# THE fit budget: a design fits a board when FINN's estimate of every resource is within this
# share of the board (headroom for what the estimate leaves out: FIFOs, width converters, DMA,
# the shell, routing). The folding search fills up to it; the fit check, the reports, deploy and
# the design-space tools all decide "fits" with `fits()` below.
FIT_BUDGET = 0.9


class BoardError(ValueError):
    """Unknown board name."""


@dataclass(frozen=True)
class Board:
    name: str              # our name (CLI --board)
    finn_board: str        # FINN's board name (finn.util.basic.pynq_part_map key, Zynq shell)
    part: str              # FPGA part (same as FINN's pynq_part_map entry)
    lut: int
    ff: int
    bram18: int            # RAMB18 halves: 2 x the RAMB36 count
    dsp: int
    uram: int
    clock_mhz: float = 100.0
    shell_flow_type: str = "vivado_zynq"

    def capacity(self) -> dict[str, int]:
        """Capacity keyed like FINN's resource estimates."""
        return {"LUT": self.lut, "BRAM_18K": self.bram18, "DSP": self.dsp, "URAM": self.uram}

    def to_dict(self) -> dict:
        return asdict(self)


# Capacities from the AMD/Xilinx product tables: xc7z020 from DS190 (Zynq-7000 SoC overview,
# table 3: 53,200 LUT, 106,400 FF, 140 RAMB36, 220 DSP48E1); xczu3eg and xczu7ev from DS891
# (Zynq UltraScale+ MPSoC overview: ZU3EG 70,560 LUT, 141,120 FF, 216 RAMB36, 360 DSP, no URAM;
# ZU7EV 230,400 LUT, 460,800 FF, 312 RAMB36, 96 URAM, 1,728 DSP); xck26 from DS987 (Kria K26
# SOM: 117,120 LUT, 234,240 FF, 144 RAMB36, 64 URAM, 1,248 DSP). finn.util.platforms carries
# similar (rounded) numbers for its multi-FPGA partitioner. Parts: finn.util.basic.pynq_part_map.
BOARDS: dict[str, Board] = {
    b.name: b
    for b in (
        Board("Pynq-Z2", "Pynq-Z2", "xc7z020clg400-1", 53_200, 106_400, 280, 220, 0),
        Board("Pynq-Z1", "Pynq-Z1", "xc7z020clg400-1", 53_200, 106_400, 280, 220, 0),
        Board("Ultra96-V2", "Ultra96-V2", "xczu3eg-sbva484-1-i", 70_560, 141_120, 432, 360, 0),
        Board("ZCU104", "ZCU104", "xczu7ev-ffvc1156-2-e", 230_400, 460_800, 624, 1_728, 96),
        Board("KV260", "KV260_SOM", "xck26-sfvc784-2LV-c", 117_120, 234_240, 288, 1_248, 64),
    )
}


def get_board(name: str) -> Board:
    """Board by name (case-insensitive; FINN's names such as `KV260_SOM` are accepted too)."""
    key = name.strip().lower()
    for b in BOARDS.values():
        if key in (b.name.lower(), b.finn_board.lower()):
            return b
    raise BoardError(f"unknown board {name!r}: expected one of {', '.join(BOARDS)}")


def over_budget(resources: dict, board: Board | dict, fraction: float = FIT_BUDGET) -> list[str]:
    """The resources of an estimate above `fraction` of the board (or of a capacity dict such
    as a report's `capacity`); empty: it fits."""
    cap = board.capacity() if isinstance(board, Board) else board
    return [r for r in RESOURCES if float(resources.get(r) or 0) > fraction * cap.get(r, 0) + 1e-9]


def fits(resources: dict, board: Board | dict, fraction: float = FIT_BUDGET) -> bool:
    """THE fit rule: every estimated resource within `fraction` (FIT_BUDGET) of the board."""
    return not over_budget(resources, board, fraction)


def budget_label(board: Board, fraction: float = FIT_BUDGET) -> str:
    """How reports name the budget, e.g. 'within 90 % of Pynq-Z2 (47,880 LUT, 252 BRAM18, 198 DSP)'."""
    cap = board.capacity()
    return (f"within {100 * fraction:.0f} % of {board.name} ({fraction * cap['LUT']:,.0f} LUT, "
            f"{fraction * cap['BRAM_18K']:,.0f} BRAM18, {fraction * cap['DSP']:,.0f} DSP)")
