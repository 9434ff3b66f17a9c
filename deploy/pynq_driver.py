"""The `pynq` backend: the FINN accelerator on a PYNQ board (Zynq, IODMA), like FINN's driver.

Mirrors FINN's template driver (driver_base.py, platform "zynq-iodma"): load the overlay
(bitfile + hwh of the same name side by side), set fclk0 to the build's clock (PYNQ keeps
whatever clock the last bitstream or the boot image set, a known FINN pitfall), allocate
cacheable packed input/output buffers for `batch_size` images, pack the input as FINN's IODMA
expects (deploy/packing.py documents the byte layout), start the output then the input DMA
through their AXI-lite registers (0x10/0x14 buffer address, 0x1C repetitions, 0x00 ap_start;
done = bit 1, idle = bit 2), wait, unpack. `pynq` is imported only here, lazily.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from deploy.accelerator import Accelerator, AcceleratorInputError, positive_int
from deploy.golden import GoldenError, dtype, read_golden
from deploy.packing import pack, unpack
from core.labels import labels_from_outputs


class BoardError(RuntimeError):
    """The pynq backend cannot start: no pynq, no bitfile/hwh, or a bitfile of another build."""


def check_bitfile(bitfile) -> tuple[Path, Path]:
    """(bitfile, hwh) paths, or BoardError naming what is missing."""
    if bitfile is None:
        raise BoardError("no bitfile: this package was built without Vivado (sim backend only); "
                         "use --backend sim or add <name>.bit + <name>.hwh from a bitstream build")
    bit = Path(bitfile)
    if not bit.is_file():
        raise BoardError(f"{bit}: bitfile not found")
    hwh = bit.with_suffix(".hwh")
    if not hwh.is_file():
        raise BoardError(f"{hwh}: hardware handoff file not found (PYNQ needs <name>.hwh next "
                         f"to <name>.bit)")
    return bit, hwh


def _import_pynq():
    try:
        import pynq  # noqa: F401
        from pynq import Overlay, allocate
        from pynq.ps import Clocks
    except ImportError as e:
        raise BoardError(f"the pynq backend needs the `pynq` package of a PYNQ board image "
                         f"({e}); on a PC use --backend sim") from None
    return Overlay, allocate, Clocks


class PynqAccelerator(Accelerator):
    """execute(x_uint8) on the FPGA; throughput_test() as FINN's driver reports it."""

    backend = "pynq"

    def __init__(self, bitfile, golden_path, batch_size: int = 1000, build_id: str | None = None,
                 fclk_mhz: float | None = None, download: bool = True):
        """build_id: the id the package manifest recorded for this bitfile; a golden model of
        another build is refused. fclk_mhz: override the clock stored in golden.npz."""
        self.bitfile, self.hwh = check_bitfile(bitfile)
        self.golden = read_golden(golden_path)
        g = self.golden
        if build_id is not None and build_id != g.build_id:
            raise GoldenError(f"{g.path}: golden model of build {g.build_id}, but the bitfile "
                              f"{self.bitfile.name} is from build {build_id}")
        io = g.meta.get("io")
        if not io:
            raise GoldenError(f"{g.path}: meta lacks the IODMA packing info 'io'")
        if int(io.get("num_inputs", 1)) != 1 or int(io.get("num_outputs", 1)) != 1:
            raise GoldenError(f"{g.path}: {io.get('num_inputs')} inputs/{io.get('num_outputs')} "
                              f"outputs; this driver handles one of each")
        self.io = io
        self.build_id = g.build_id
        self.n_inputs = g.n_inputs
        self.input_dtype = dtype(g.input["dtype"])
        self.image_shape = tuple(g.meta["image_shape"]) if g.meta.get("image_shape") else None
        self.output = g.output
        self.idt, self.odt = io["idt"][0], io["odt"][0]
        self.ishape_folded = tuple(io["ishape_folded"][0])
        self.oshape_folded = tuple(io["oshape_folded"][0])
        self.ishape_packed = tuple(io["ishape_packed"][0])
        self.oshape_packed = tuple(io["oshape_packed"][0])
        self.oshape_normal = tuple(io["oshape_normal"][0])
        if int(np.prod(self.ishape_folded)) != self.n_inputs:
            raise GoldenError(f"{g.path}: folded input shape {self.ishape_folded} does not hold "
                              f"{self.n_inputs} inputs")
        clk = fclk_mhz if fclk_mhz is not None else g.meta.get("fclk_mhz")
        if clk is None:
            raise GoldenError(f"{g.path}: meta lacks the build clock 'fclk_mhz'")
        self.fclk_mhz = float(clk)
        Overlay, self._allocate, self._Clocks = _import_pynq()
        self.overlay = Overlay(str(self.bitfile), download=download)
        self._Clocks.fclk0_mhz = self.fclk_mhz   # set explicitly: PYNQ does not from the hwh
        try:
            self.idma = getattr(self.overlay, io.get("input_dma_name", ["idma0"])[0])
            self.odma = getattr(self.overlay, io.get("output_dma_name", ["odma0"])[0])
        except AttributeError as e:
            raise BoardError(f"{self.hwh}: no IODMA named as in golden.npz ({e})") from None
        self._bufs_for = None
        self.batch_size = int(batch_size)

    @property
    def batch_size(self) -> int:
        return self._batch_size

    @batch_size.setter
    def batch_size(self, n: int):
        n = positive_int(n, "batch_size")
        self._batch_size = n
        if self._bufs_for == n:
            return
        self.ibuf = self._allocate(shape=(n,) + self.ishape_packed[1:], dtype=np.uint8,
                                   cacheable=True)
        self.obuf = self._allocate(shape=(n,) + self.oshape_packed[1:], dtype=np.uint8,
                                   cacheable=True)
        self._bufs_for = n

    # --- packing (FINN IODMA layout) ---------------------------------------------------------
    def pack_input(self, x: np.ndarray) -> np.ndarray:
        """(N, n_inputs) uint8 (checked: shape, dtype, range, batch) -> FINN's packed input."""
        x = self.check_input(x)
        folded = x.reshape((x.shape[0],) + self.ishape_folded[1:])
        return pack(folded, self.idt)

    def unpack_output(self, buf: np.ndarray) -> np.ndarray:
        want = tuple(self.oshape_packed[1:])
        if not isinstance(buf, np.ndarray) or buf.dtype != np.uint8 or buf.ndim != len(want) + 1 \
                or tuple(buf.shape[1:]) != want:
            got = f"{buf.dtype} {buf.shape}" if isinstance(buf, np.ndarray) else type(buf).__name__
            raise AcceleratorInputError(f"output buffer {got}, expected uint8 (N, {', '.join(map(str, want))})")
        vals = unpack(buf, self.odt, self.oshape_folded[-1])
        return vals.reshape((buf.shape[0],) + self.oshape_normal[1:])

    # --- DMA ---------------------------------------------------------------------------------
    def execute_on_buffers(self, n: int | None = None):
        """Run n images (default: batch_size) from the input buffer into the output buffer."""
        n = self.batch_size if n is None else positive_int(n, "images")
        if n > self.batch_size:
            raise AcceleratorInputError(f"batch of {n} images exceeds the allocated buffers "
                                        f"({self.batch_size} images)")
        if self.odma.read(0x00) & 0x4 == 0:
            raise BoardError("output DMA is not idle (a previous run did not finish)")
        for dma, buf in ((self.odma, self.obuf), (self.idma, self.ibuf)):
            addr = buf.device_address
            dma.write(0x10, addr & 0xFFFFFFFF)
            dma.write(0x14, (addr >> 32) & 0xFFFFFFFF)
            dma.write(0x1C, n)
            dma.write(0x00, 1)
        while self.odma.read(0x00) & 0x2 == 0:
            pass

    def _outputs(self, x: np.ndarray) -> np.ndarray:
        n = x.shape[0]
        self.ibuf[:n] = self.pack_input(x)
        self.ibuf.flush()
        self.execute_on_buffers(n)
        self.obuf.invalidate()
        return self.unpack_output(np.array(self.obuf[:n]))

    def _run(self, x):
        if self.output["kind"] != "labels":
            return labels_from_outputs(self._outputs(x))
        y = self._outputs(x).reshape(x.shape[0], -1)
        return (y[:, 0] if y.shape[1] == 1 else y).astype(np.int64)

    def _run_int(self, x):
        if self.output["kind"] == "labels":
            raise BoardError("the bitstream outputs labels only (LabelSelect on chip); integer "
                             "logits come from the sim backend")
        return self._outputs(x).reshape(x.shape[0], -1).astype(np.int64)

    def throughput_test(self) -> dict:
        """FINN driver's throughput test on the allocated buffers (contents as they are)."""
        n = self.batch_size
        t0 = time.perf_counter()
        self.execute_on_buffers(n)
        dt = time.perf_counter() - t0
        res = {"runtime[ms]": dt * 1000, "throughput[images/s]": n / dt,
               "DRAM_in_bandwidth[MB/s]": n * int(np.prod(self.ishape_packed[1:])) * 1e-6 / dt,
               "DRAM_out_bandwidth[MB/s]": n * int(np.prod(self.oshape_packed[1:])) * 1e-6 / dt,
               "fclk[mhz]": float(self._Clocks.fclk0_mhz), "batch_size": n}
        x = np.zeros((n, self.n_inputs), np.uint8)
        t0 = time.perf_counter()
        packed = self.pack_input(x)
        res["pack_input[ms]"] = (time.perf_counter() - t0) * 1000
        t0 = time.perf_counter()
        self.ibuf[:n] = packed
        self.ibuf.flush()
        res["copy_input_data_to_device[ms]"] = (time.perf_counter() - t0) * 1000
        t0 = time.perf_counter()
        self.obuf.invalidate()
        out = np.array(self.obuf[:n])
        res["copy_output_data_from_device[ms]"] = (time.perf_counter() - t0) * 1000
        t0 = time.perf_counter()
        self.unpack_output(out)
        res["unpack_output[ms]"] = (time.perf_counter() - t0) * 1000
        return res
