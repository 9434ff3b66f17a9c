"""The ONE place that prepares FINN (finn-plus 1.6.1) for this process.

`ensure_finn()` sets FINN's environment variables (setdefault: a user's own values win) and,
on a machine without Vivado, makes `import finn.builder.build_dataflow` work: finn-plus binds
`finn.xsi`'s simulator names lazily and its loader demands Vivado, and `build_dataflow_cfg`
reads XILINX_VIVADO when it writes its final metadata. Call it before importing any `finn`
module. `tools()` says which Xilinx/FINN tools this machine has.

`ensure_cppsim()` makes FINN's C++ simulation (PrepareCppSim / CompileCppSim / exec_mode
"cppsim") compile with g++ alone: finn-hlslib from `finn_hlslib_dir()` (FINN_HLSLIB, else
../shared/deps/finn-hlslib, else ~/.cache/resbin/finn-hlslib, cloned at the commit finn-plus
pins), and, without Vitis HLS, the hls4ml wheel's ap_types plus the few Vitis-only headers in
hw_build/hls_include instead of $XILINX_HLS/include, and no Vitis simulation libraries on the
link line. It also caches each node's binary under the hash of its sources and compile line.
"""
from __future__ import annotations

import importlib.util
import os
import re
import shutil
import sys
from pathlib import Path

__all__ = ["MissingToolError", "FinnCompatError", "CppsimCompileError", "ensure_finn",
           "finn_site_dir", "tools", "require_tool", "ENV_VARS", "ensure_cppsim", "cppsim_status",
           "finn_hlslib_dir", "fetch_finn_hlslib", "pinned_hlslib_commit", "hls4ml_ap_types",
           "native_vitis_hls", "HLS_INCLUDE"]

# Every environment variable this project sets for FINN (nowhere else sets any).
ENV_VARS = ("FINN_BUILD_DIR", "FINN_DEPS", "FINN_RTLLIB", "FINN_CUSTOM_HLS", "XILINX_HLS",
            "NUM_DEFAULT_WORKERS")

# finn.xsi names bound lazily by finn-plus 1.6.1 (`finn.xsi._LAZY_NAMES`); stubbed without Vivado.
XSI_LAZY_NAMES = frozenset({"SimEngine", "locate_glbl", "compile_sim_obj", "get_simkernel_so",
                            "load_sim_obj", "reset_rtlsim", "close_rtlsim", "rtlsim_multi_io"})

_DONE = False


class MissingToolError(RuntimeError):
    """A Xilinx/FINN tool needed by `step` is not installed (hw_build exits with code 3)."""

    def __init__(self, tool: str, step: str, detail: str = ""):
        self.tool, self.step = tool, step
        msg = f"{tool} is required for {step} but is not installed"
        super().__init__(f"{msg}: {detail}" if detail else msg)


class FinnCompatError(RuntimeError):
    """The installed finn-plus no longer has an internal that hw_build.finn_env patches."""


def finn_site_dir() -> Path:
    """Installed `finn` package directory (site-packages/finn), found without importing it."""
    spec = importlib.util.find_spec("finn")
    if spec is None or not spec.submodule_search_locations:
        raise MissingToolError("finn-plus (pip package)", "the FINN flow",
                               "install it with the project's env/requirements")
    return Path(list(spec.submodule_search_locations)[0])


def _cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "resbin"


def _find_hls_root() -> str | None:
    for exe in ("vitis_hls", "vivado_hls"):
        p = shutil.which(exe)
        if p:
            return str(Path(p).resolve().parent.parent)
    return None


def _set_env() -> None:
    site = finn_site_dir()
    os.environ.setdefault("FINN_BUILD_DIR", str(_cache_root() / "finn-build"))
    # FINN's own default (`finn deps update` clones finn-hlslib there)
    os.environ.setdefault("FINN_DEPS", str(site / "finn_deps"))
    os.environ.setdefault("FINN_RTLLIB", str(site / "finn-rtllib"))
    os.environ.setdefault("FINN_CUSTOM_HLS", str(site / "custom_hls"))
    hls = _find_hls_root()
    if hls:
        os.environ.setdefault("XILINX_HLS", hls)
    try:
        ncpu = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        ncpu = os.cpu_count() or 1
    os.environ.setdefault("NUM_DEFAULT_WORKERS", str(max(1, ncpu)))
    Path(os.environ["FINN_BUILD_DIR"]).mkdir(parents=True, exist_ok=True)


def _xsi_stub(name: str):
    def _raise(*_a, **_k):
        raise MissingToolError("Vivado (XSI simulator)", f"RTL simulation (finn.xsi.{name})",
                               "set XILINX_VIVADO to a Vivado installation")
    if name == "SimEngine":  # a class in finn-plus, used in type hints and instantiated for rtlsim
        return type("SimEngine", (), {"__init__": _raise, "__doc__": "Stub: Vivado not installed."})
    _raise.__name__ = name
    return _raise


def _no_vivado_root() -> str:
    # build_dataflow_cfg records Path(get_vivado_root()).name as "tool_version" at its very end
    return os.environ.get("XILINX_VIVADO") or "no-vivado"


def _check_internals() -> None:
    """Fail loudly if finn-plus changed the internals this module patches."""
    import finn.util.basic as basic
    import finn.xsi as xsi

    lazy = vars(xsi).get("_LAZY_NAMES")  # not getattr: finn.xsi.__getattr__ itself reads it
    if lazy is None or not callable(vars(xsi).get("__getattr__")):
        raise FinnCompatError("finn.xsi no longer has _LAZY_NAMES/__getattr__: "
                              "update hw_build/finn_env.py for this finn-plus version")
    if frozenset(lazy) != XSI_LAZY_NAMES:
        raise FinnCompatError(f"finn.xsi._LAZY_NAMES changed to {sorted(lazy)}: "
                              "update hw_build/finn_env.py for this finn-plus version")
    if not callable(getattr(basic, "get_vivado_root", None)):
        raise FinnCompatError("finn.util.basic.get_vivado_root is gone: "
                              "update hw_build/finn_env.py for this finn-plus version")


def ensure_finn() -> None:
    """Set FINN's environment and patch finn-plus for a machine without Vivado (idempotent)."""
    global _DONE
    if _DONE:
        return
    _set_env()
    _check_internals()
    if not os.environ.get("XILINX_VIVADO"):
        import finn.util.basic as basic
        import finn.xsi as xsi

        for name in sorted(XSI_LAZY_NAMES):
            if name not in vars(xsi):  # really bound (XSI built) -> keep it
                setattr(xsi, name, _xsi_stub(name))
        basic.get_vivado_root = _no_vivado_root
        bd = sys.modules.get("finn.builder.build_dataflow")
        if bd is not None:  # imported before us: patch its copied name too
            if not hasattr(bd, "get_vivado_root"):
                raise FinnCompatError("finn.builder.build_dataflow no longer imports "
                                      "get_vivado_root: update hw_build/finn_env.py")
            bd.get_vivado_root = _no_vivado_root
    _DONE = True


def _version_from_path(path: str | None) -> str | None:
    m = re.search(r"\b(20\d{2}\.\d)\b", path or "")
    return m.group(1) if m else None


def _tool(path: str | Path | None, version: str | None = None) -> dict:
    found = path is not None and Path(path).exists()
    return {"found": bool(found), "path": str(path) if found else None,
            "version": version if found else None}


def tools() -> dict:
    """Which tools are present: vivado, vitis_hls/vivado_hls, finn-hlslib, HLS headers, g++,
    verilator, a PYNQ board. Each entry: {found, path, version}."""
    viv_root = os.environ.get("XILINX_VIVADO")
    viv = shutil.which("vivado") or (str(Path(viv_root) / "bin" / "vivado") if viv_root else None)
    hls_root = os.environ.get("XILINX_HLS") or _find_hls_root()
    hls_exe = None
    for exe in ("vitis_hls", "vivado_hls"):
        cand = shutil.which(exe) or (str(Path(hls_root) / "bin" / exe) if hls_root else None)
        if cand and Path(cand).exists():
            hls_exe = cand
            break
    hlslib, _ = finn_hlslib_dir()
    native = Path(hls_root) / "include" / "ap_int.h" if hls_root else None
    ap_types = hls4ml_ap_types()
    headers, hver = (native, None) if native and native.exists() else (ap_types, "hls4ml")
    if hver:
        try:
            from importlib import metadata
            hver = f"hls4ml {metadata.version('hls4ml')} ap_types + hw_build/hls_include"
        except Exception:  # noqa: BLE001 - only a label
            pass
    pynq_mod = importlib.util.find_spec("pynq") is not None
    # PYNQ 2.x exposes /dev/xlnk; PYNQ 3.x on Zynq talks to zocl via a DRM render node
    dev = next((d for d in ("/dev/xlnk", "/dev/dri/renderD128") if Path(d).exists()), None)
    return {
        "vivado": _tool(viv, _version_from_path(viv_root or viv)),
        "vitis_hls": _tool(hls_exe, _version_from_path(hls_root)),
        "finn-hlslib": _tool(hlslib),
        "hls_headers": _tool(headers, hver),
        "g++": _tool(shutil.which("g++")),
        "verilator": _tool(shutil.which("verilator")),
        "pynq_board": {"found": bool(pynq_mod and dev), "path": dev if pynq_mod else None,
                       "version": None},
    }


def require_tool(name: str, step: str) -> dict:
    """Return tools()[name], or raise MissingToolError naming the step that needs it."""
    t = tools()[name]
    if not t["found"]:
        raise MissingToolError(name, step)
    return t


# ------------------------------------------------------------------ C++ simulation (cppsim)

HLS_INCLUDE = Path(__file__).with_name("hls_include")  # our stand-ins for Vitis-only headers
_REPO = Path(__file__).resolve().parent.parent
_HLSLIB_URL = "https://github.com/Xilinx/finn-hlslib.git"
# the Vitis HLS parts of finn-plus 1.6.1's cppsim compile line (hlsbackend.compile_singlenode_code)
_VITIS_LINK = ("-Wl,-rpath,\"{h}/lnx64/lib/csim\"", "-L{h}/lnx64/lib/csim -lhlsmc++-GCC46",
               "-Wl,-rpath,\"{h}/lnx64/tools/fpo_v7_1\"", "-L{h}/lnx64/tools/fpo_v7_1 -lgmp -lmpfr",
               "-lIp_floating_point_v7_1_bitacc_cmodel")
COMPILE_KEY_FILE = ".resbin-compile-key"  # beside node_model: hash of what built it
COMPILE_INFO_FILE = ".resbin-compile.json"  # {"seconds": s, "cached": bool}
_CPPSIM_DONE = False


class CppsimCompileError(RuntimeError):
    """g++ could not build a node's cppsim binary (the message has the first error line)."""


def pinned_hlslib_commit() -> str:
    """The finn-hlslib commit finn-plus pins (finn/interface/external_dependencies.yaml)."""
    import yaml

    f = finn_site_dir() / "interface" / "external_dependencies.yaml"
    try:
        return str(yaml.safe_load(f.read_text())["git_deps"]["finn-hlslib"]["commit"])
    except (OSError, KeyError, TypeError) as e:
        raise FinnCompatError(f"{f}: no git_deps/finn-hlslib/commit ({e}): update "
                              "hw_build/finn_env.py for this finn-plus version") from None


def _hlslib_cache() -> Path:
    return _cache_root() / "finn-hlslib"


def finn_hlslib_dir() -> tuple[Path | None, str]:
    """(finn-hlslib directory or None, where it came from): $FINN_HLSLIB, else
    ../shared/deps/finn-hlslib beside the repository (the offline copy), else the clone in
    ~/.cache/resbin/finn-hlslib. A directory counts only if it holds bnn-library.h."""
    env = os.environ.get("FINN_HLSLIB")
    if env:  # named explicitly: no fallback
        ok = (Path(env) / "bnn-library.h").is_file()
        return (Path(env).resolve(), "FINN_HLSLIB") if ok else \
            (None, f"FINN_HLSLIB={env} holds no bnn-library.h (not a finn-hlslib directory)")
    for d, src in ((_REPO.parent / "shared" / "deps" / "finn-hlslib", "../shared/deps offline copy"),
                   (_hlslib_cache(), "~/.cache/resbin clone")):
        if (d / "bnn-library.h").is_file():
            return d.resolve(), src
    return None, (f"no finn-hlslib: set FINN_HLSLIB, or run `make setup` online to clone it "
                  f"into {_hlslib_cache()}")


def fetch_finn_hlslib(dest: Path | None = None) -> Path:
    """Clone finn-hlslib at the pinned commit into `dest` (default ~/.cache/resbin/finn-hlslib);
    needs the network. Raises MissingToolError if git or the network fails."""
    import subprocess

    dest = Path(dest) if dest else _hlslib_cache()
    commit = pinned_hlslib_commit()
    if (dest / "bnn-library.h").is_file():
        return dest
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    for cmd in (["git", "clone", "-q", _HLSLIB_URL, str(tmp)],
                ["git", "-C", str(tmp), "checkout", "-q", commit]):
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        except (OSError, subprocess.TimeoutExpired) as e:
            r = None
            err = str(e)
        if r is None or r.returncode != 0:
            err = err if r is None else (r.stderr.strip().splitlines() or ["?"])[-1]
            shutil.rmtree(tmp, ignore_errors=True)
            raise MissingToolError("finn-hlslib", "C++ simulation (cppsim)",
                                   f"`{' '.join(cmd[:3])}` failed ({err}); offline, set "
                                   "FINN_HLSLIB to a finn-hlslib directory")
    tmp.rename(dest)
    return dest


def hls4ml_ap_types() -> Path | None:
    """The hls4ml wheel's copy of the ap_int / ap_fixed / hls_stream headers, if installed."""
    spec = importlib.util.find_spec("hls4ml")
    if spec is None or not spec.submodule_search_locations:
        return None
    d = Path(list(spec.submodule_search_locations)[0]) / "templates" / "vivado" / "ap_types"
    return d if (d / "ap_int.h").is_file() and (d / "hls_stream.h").is_file() else None


def native_vitis_hls() -> Path | None:
    """$XILINX_HLS (or the vitis_hls on PATH) when it is a real Vitis HLS install: its headers
    and simulation libraries are then used as finn-plus intends."""
    root = os.environ.get("XILINX_HLS") or _find_hls_root()
    if root and (Path(root) / "include" / "ap_int.h").is_file() and \
            (Path(root) / "lnx64" / "lib" / "csim").is_dir():
        return Path(root)
    return None


def cppsim_status() -> tuple[bool, str]:
    """(available, where everything comes from / what is missing) for FINN's cppsim here."""
    if shutil.which("g++") is None:
        return False, "g++ is not installed (apt-get install g++)"
    lib, src = finn_hlslib_dir()
    if lib is None:
        return False, src
    native = native_vitis_hls()
    if native:
        return True, f"Vitis HLS {native} (native cppsim), finn-hlslib {lib} ({src})"
    ap = hls4ml_ap_types()
    if ap is None:
        return False, "no HLS headers: neither Vitis HLS nor the pinned hls4ml wheel (make setup)"
    return True, f"g++ with hls4ml ap_types + hw_build/hls_include, finn-hlslib {lib} ({src})"


def _rewrite_compile_line(parts: list[str], hls_path: str | None, hlslib: Path,
                          native: bool) -> list[str]:
    """finn-plus's compile-line parts -> ours: finn-hlslib from `hlslib`; without Vitis HLS the
    hls4ml ap_types + hls_include replace $XILINX_HLS/include, the Vitis libraries go, and so
    does `-fno-inline` (a Vitis csim habit: it makes the open-source ap_private arithmetic of
    wide streams 2x slower; measured on an MVAU with 6272-bit input words, same outputs).
    Raises FinnCompatError if the line no longer has the parts this rewrites."""
    from finn.util.settings import get_settings

    stock_lib = "-I" + str(get_settings().finn_deps / "finn-hlslib")
    vitis_inc = f"-I{hls_path}/include"
    vitis_link = [v.format(h=hls_path) for v in _VITIS_LINK]
    missing = [p for p in [stock_lib, vitis_inc, "-fno-builtin -fno-inline"] + vitis_link
               if p not in parts]
    if missing:
        raise FinnCompatError(f"finn-plus's cppsim compile line no longer has {missing}: "
                              "update hw_build/finn_env.py (_rewrite_compile_line)")
    out = []
    for p in parts:
        if p == stock_lib:
            out.append(f"-I{hlslib}")
        elif native:
            out.append(p)
        elif p == vitis_inc:
            ap = hls4ml_ap_types()
            if ap is None:
                raise MissingToolError("hls4ml (HLS headers)", "C++ simulation (cppsim)",
                                       "install the pinned hls4ml wheel (make setup)")
            out += [f"-I{HLS_INCLUDE}", f"-I{ap}", "-include hls_half.h"]
        elif p == "-fno-builtin -fno-inline":
            out.append("-fno-builtin")
        elif p not in vitis_link:
            out.append(p)
    return out


def _compile_key(cmd: str, sources: list[str]) -> str:
    import glob
    import hashlib

    h = hashlib.sha256(cmd.encode())
    files = sorted(f for s in sources for f in glob.glob(s))
    files += sorted(str(f) for f in HLS_INCLUDE.rglob("*.h"))
    for f in files:
        h.update(f.encode() + Path(f).read_bytes())
    return h.hexdigest()


def _run_bash(cmd: str, log: Path, what: str) -> float:
    """Run one compile command; raise CppsimCompileError with g++'s first error line."""
    import subprocess
    import time

    t0 = time.perf_counter()
    r = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True)
    log.write_text(cmd + "\n" + r.stdout + r.stderr)
    if r.returncode != 0:
        err = [ln for ln in r.stderr.splitlines() if "error" in ln] or [r.stderr[-300:]]
        raise CppsimCompileError(f"g++ failed for {what}: {err[0].strip()[:400]} (log: {log})")
    return time.perf_counter() - t0


def _shared_object(src: str, flags: list[str]) -> str:
    """finn-plus compiles its npy reader (cnpy.cpp) into every node's binary; compile it once
    per compile flags into ~/.cache/resbin/cppsim-obj and link that object instead."""
    import hashlib

    flags = [f for f in flags if not f.startswith(("-l", "-L", "-Wl"))]
    h = hashlib.sha256(" ".join(flags).encode() + Path(src).read_bytes())
    h.update(Path(src).with_suffix(".h").read_bytes())
    obj = _cache_root() / "cppsim-obj" / f"{Path(src).stem}-{h.hexdigest()[:16]}.o"
    if not obj.is_file():
        obj.parent.mkdir(parents=True, exist_ok=True)
        tmp = obj.with_suffix(f".{os.getpid()}.tmp")
        _run_bash(f"g++ -c {src} -o {tmp} " + " ".join(flags), obj.with_suffix(".log"), src)
        tmp.replace(obj)
    return str(obj)


def _builder_class():
    """finn.util.basic.CppBuilder with our compile line, a cache and readable g++ errors."""
    import json

    from finn.util.basic import CppBuilder

    class ResbinCppBuilder(CppBuilder):
        def build(self, code_gen_dir: str) -> None:
            lib, src = finn_hlslib_dir()
            if lib is None:
                raise MissingToolError("finn-hlslib", "C++ simulation (cppsim)", src)
            native = native_vitis_hls() is not None
            parts = _rewrite_compile_line(list(self.include_paths),
                                          os.environ.get("XILINX_HLS"), lib, native)
            sources = [_shared_object(f, parts) if f.endswith("/npy2stream/cnpy.cpp") else f
                       for f in self.cpp_files]
            cmd = " ".join(["g++ -o " + str(self.executable_path)] + sources + parts)
            d = Path(code_gen_dir)
            self.code_gen_dir, self.compile_script = code_gen_dir, d / "compile.sh"
            key = _compile_key(cmd, list(self.cpp_files))
            exe, keyf = Path(self.executable_path), d / COMPILE_KEY_FILE
            info = {"seconds": 0.0, "cached": True}
            if not (exe.is_file() and keyf.is_file() and keyf.read_text() == key):
                self.compile_script.write_text("#!/bin/bash \n" + cmd + "\n")
                exe.unlink(missing_ok=True)
                secs = _run_bash(f"bash {self.compile_script}", d / "compile.log", str(d))
                keyf.write_text(key)
                info = {"seconds": round(secs, 2), "cached": False}
            (d / COMPILE_INFO_FILE).write_text(json.dumps(info))

    return ResbinCppBuilder


def _check_cppsim_internals() -> None:
    import inspect

    import finn.custom_op.fpgadataflow.hlsbackend as hb

    src = inspect.getsource(hb.HLSBackend.compile_singlenode_code)
    if "CppBuilder()" not in src or "builder.build(" not in src or \
            not callable(getattr(hb, "CppBuilder", None)):
        raise FinnCompatError("HLSBackend.compile_singlenode_code no longer builds with "
                              "hlsbackend.CppBuilder: update hw_build/finn_env.py (ensure_cppsim)")


def ensure_cppsim(fetch: bool = False) -> None:
    """Prepare FINN's cppsim for this machine (idempotent); raises MissingToolError when g++,
    finn-hlslib or the HLS headers are missing (fetch: first clone finn-hlslib at the pinned
    commit into ~/.cache/resbin when no copy is found and FINN_HLSLIB is unset). Call before
    CompileCppSim."""
    global _CPPSIM_DONE
    ensure_finn()
    if fetch and finn_hlslib_dir()[0] is None and not os.environ.get("FINN_HLSLIB"):
        fetch_finn_hlslib()
    ok, why = cppsim_status()
    if not ok:
        raise MissingToolError("cppsim toolchain", "C++ simulation (cppsim)", why)
    if _CPPSIM_DONE:
        return
    _check_cppsim_internals()
    import finn.custom_op.fpgadataflow.hlsbackend as hb

    hb.CppBuilder = _builder_class()
    _CPPSIM_DONE = True


def main(argv: list[str] | None = None) -> int:
    """python -m hw_build.finn_env hlslib [--fetch]: where finn-hlslib comes from (--fetch: clone
    it at finn-plus's pinned commit when no copy is found; exit 3 if that fails)."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m hw_build.finn_env", description=main.__doc__)
    ap.add_argument("what", choices=["hlslib"])
    ap.add_argument("--fetch", action="store_true")
    args = ap.parse_args(argv)
    lib, src = finn_hlslib_dir()
    if lib is None and args.fetch and not os.environ.get("FINN_HLSLIB"):
        try:
            lib, src = fetch_finn_hlslib(), f"cloned at {pinned_hlslib_commit()}"
        except MissingToolError as e:
            print(f"finn_env: {e}", file=sys.stderr)
            return 3
    print(f"finn-hlslib: {lib} ({src})" if lib else f"finn-hlslib: {src}")
    return 0 if lib else 3


if __name__ == "__main__":
    sys.exit(main())
