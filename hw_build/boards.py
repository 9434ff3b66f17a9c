"""Target boards: FPGA part, resource capacity, default clock and FINN's names for them."""
from __future__ import annotations

from dataclasses import asdict, dataclass

__all__ = ["Board", "BoardError", "BOARDS", "get_board", "RESOURCES"]

# The resources the fit check compares (FINN's estimate keys).
RESOURCES = ("LUT", "BRAM_18K", "DSP", "URAM")


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
