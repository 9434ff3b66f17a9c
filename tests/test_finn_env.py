"""hw_build.finn_env: FINN's environment in one place, the builder importable without Vivado."""
from __future__ import annotations

import inspect
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from hw_build import finn_env

REPO = Path(__file__).resolve().parent.parent


def _py(code: str, **env_over) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items()
           if k not in finn_env.ENV_VARS and k not in ("XILINX_VIVADO", "FINN_SETTINGS")}
    env.update(env_over)
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)


def test_hw_build_import_is_cheap():
    r = _py("import sys, hw_build; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('finn', 'qonnx', 'torch')]; "
            "print(bad)")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_stock_builder_import_needs_vivado():
    """Reproduces why finn_env exists: without it, the builder import dies for lack of Vivado
    or of FINN settings. If this starts passing, finn-plus fixed it and the patch can go."""
    r = _py("import finn.builder.build_dataflow")
    assert r.returncode != 0
    assert re.search(r"XILINX_VIVADO|global settings", r.stderr), r.stderr[-2000:]


def test_builder_imports_and_finishes_without_vivado(tmp_path):
    code = f"""
import os, json
from pathlib import Path
from hw_build.finn_env import ensure_finn, MissingToolError
ensure_finn(); ensure_finn()
import finn.builder.build_dataflow as bd
import finn.builder.build_dataflow_steps
from finn.builder.build_dataflow_config import DataflowBuildConfig
import finn.xsi as xsi
cfg = DataflowBuildConfig(output_dir={str(tmp_path)!r}, synth_clk_period_ns=10.0,
                          generate_outputs=[])
assert bd.exit_buildflow(cfg, {{"a": 1.0}}) == 0
meta = json.loads((cfg.get_report_directory() / "metadata_builder.json").read_text())
assert meta["tool_version"] == "no-vivado", meta
try:
    xsi.compile_sim_obj("x", [], ".")
except MissingToolError as e:
    assert e.tool.startswith("Vivado") and "compile_sim_obj" in e.step, e
else:
    raise SystemExit("stub did not raise")
try:
    xsi.SimEngine()
except MissingToolError:
    pass
else:
    raise SystemExit("SimEngine stub did not raise")
print(os.environ["FINN_BUILD_DIR"]); print(os.environ["FINN_RTLLIB"])
"""
    r = _py(code, XDG_CACHE_HOME=str(tmp_path / "cache"))
    assert r.returncode == 0, r.stderr[-3000:]
    build_dir, rtllib = r.stdout.split()[-2:]
    assert build_dir == str(tmp_path / "cache" / "resbin" / "finn-build")
    assert Path(build_dir).is_dir()
    assert Path(rtllib).name == "finn-rtllib" and Path(rtllib).is_dir()


def test_user_values_win(tmp_path):
    r = _py("from hw_build.finn_env import ensure_finn; ensure_finn(); import os; "
            "print(os.environ['FINN_BUILD_DIR'], os.environ['NUM_DEFAULT_WORKERS'])",
            FINN_BUILD_DIR=str(tmp_path / "mine"), NUM_DEFAULT_WORKERS="7")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [str(tmp_path / "mine"), "7"]


def test_finn_settings_follow_env():
    finn_env.ensure_finn()
    from finn.util.settings import get_settings

    s = get_settings()
    assert str(s.finn_build_dir) == os.environ["FINN_BUILD_DIR"]
    assert Path(s.finn_rtllib) == Path(os.environ["FINN_RTLLIB"])
    assert Path(s.finn_custom_hls) == Path(os.environ["FINN_CUSTOM_HLS"])
    assert (Path(s.finn_custom_hls)).is_dir()


def test_env_vars_set_only_in_finn_env():
    """No other project module assigns FINN's environment variables."""
    names = "|".join(finn_env.ENV_VARS + ("XILINX_VIVADO",))
    pat = re.compile(rf"""(environ\[\s*["']({names})["']\s*\]\s*=(?!=)|"""
                     rf"""setdefault\(\s*["']({names})["']|putenv\(\s*["']({names})["'])""")
    offenders = []
    for pkg in ("train", "export", "hw_build", "deploy", "dse"):
        for f in (REPO / pkg).rglob("*.py"):
            if f.name == "finn_env.py":
                continue
            if pat.search(f.read_text(encoding="utf-8")):
                offenders.append(str(f.relative_to(REPO)))
    assert offenders == []


def test_patched_internals_still_exist():
    """Fails loudly when a finn-plus upgrade moves what finn_env patches."""
    import finn.util.basic as basic
    import finn.xsi as xsi

    assert frozenset(xsi._LAZY_NAMES) == finn_env.XSI_LAZY_NAMES
    assert callable(xsi.__getattr__)
    assert callable(basic.get_vivado_root)
    finn_env.ensure_finn()
    import finn.builder.build_dataflow as bd
    import finn.builder.build_dataflow_steps as bds

    # the builder takes SimEngine from finn.xsi and get_vivado_root from finn.util.basic
    assert "from finn.xsi import SimEngine" in inspect.getsource(bds)
    assert "from finn.util.basic import get_vivado_root" in inspect.getsource(bd)
    assert "get_vivado_root()" in inspect.getsource(bd.exit_buildflow)
    if not os.environ.get("XILINX_VIVADO"):
        assert bd.get_vivado_root is finn_env._no_vivado_root
        assert bds.SimEngine is xsi.SimEngine


def test_check_internals_fails_loudly(monkeypatch):
    import finn.xsi as xsi

    monkeypatch.setattr(xsi, "_LAZY_NAMES", frozenset({"SimEngine", "new_thing"}))
    with pytest.raises(finn_env.FinnCompatError, match="_LAZY_NAMES changed"):
        finn_env._check_internals()
    monkeypatch.delattr(xsi, "_LAZY_NAMES")
    with pytest.raises(finn_env.FinnCompatError, match="update hw_build/finn_env.py"):
        finn_env._check_internals()


def test_tools_report():
    t = finn_env.tools()
    assert set(t) >= {"vivado", "vitis_hls", "finn-hlslib", "hls_headers", "pynq_board"}
    for entry in t.values():
        assert set(entry) == {"found", "path", "version"}
        assert entry["found"] == (entry["path"] is not None) or entry is t["pynq_board"]
    if not os.environ.get("XILINX_VIVADO") and not t["vivado"]["found"]:
        with pytest.raises(finn_env.MissingToolError, match="vivado is required for hw_ipgen"):
            finn_env.require_tool("vivado", "hw_ipgen")
    err = finn_env.MissingToolError("vitis_hls", "step_hw_ipgen")
    assert (err.tool, err.step) == ("vitis_hls", "step_hw_ipgen")
    assert isinstance(err, RuntimeError)
