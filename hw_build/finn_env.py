"""The ONE place that prepares FINN (finn-plus 1.6.1) for this process.

`ensure_finn()` sets FINN's environment variables (setdefault: a user's own values win) and,
on a machine without Vivado, makes `import finn.builder.build_dataflow` work: finn-plus binds
`finn.xsi`'s simulator names lazily and its loader demands Vivado, and `build_dataflow_cfg`
reads XILINX_VIVADO when it writes its final metadata. Call it before importing any `finn`
module. `tools()` says which Xilinx/FINN tools this machine has.
"""
from __future__ import annotations

import importlib.util
import os
import re
import shutil
import sys
from pathlib import Path

__all__ = ["MissingToolError", "FinnCompatError", "ensure_finn", "finn_site_dir", "tools",
           "require_tool", "ENV_VARS"]

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
    deps = os.environ.get("FINN_DEPS") or str(finn_site_dir() / "finn_deps")
    hlslib = Path(deps) / "finn-hlslib"
    headers = Path(hls_root) / "include" / "ap_int.h" if hls_root else None
    pynq_mod = importlib.util.find_spec("pynq") is not None
    # PYNQ 2.x exposes /dev/xlnk; PYNQ 3.x on Zynq talks to zocl via a DRM render node
    dev = next((d for d in ("/dev/xlnk", "/dev/dri/renderD128") if Path(d).exists()), None)
    return {
        "vivado": _tool(viv, _version_from_path(viv_root or viv)),
        "vitis_hls": _tool(hls_exe, _version_from_path(hls_root)),
        "finn-hlslib": _tool(hlslib if (hlslib / "bnn-library.h").exists() else None),
        "hls_headers": _tool(headers),
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
