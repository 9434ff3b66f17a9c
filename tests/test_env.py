"""The toolchain: lock file, set-up script, Docker image recipe, doctor, CI entry point."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _lock() -> dict[str, str]:
    pins = {}
    for line in (REPO / "env/requirements.lock").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, ver = line.split("==")
            pins[name.lower().replace("_", "-")] = ver
    return pins


def test_lock_pins_the_toolchain_and_matches_the_installed_env():
    pins = _lock()
    assert pins["torch"] == "2.13.0" and pins["brevitas"] == "0.13.4" and pins["qonnx"] == "1.0.0"
    assert (REPO / "env/finn-plus.txt").read_text().strip() == "finn-plus==1.6.1"
    assert metadata.version("finn-plus") == "1.6.1"
    wrong = {}
    for name, ver in pins.items():
        have = metadata.version(name)
        if have.split("+")[0] != ver:
            wrong[name] = (ver, have)
    assert not wrong, f"installed versions differ from env/requirements.lock: {wrong}"


def test_every_top_level_requirement_is_locked():
    pins = _lock()
    for line in (REPO / "env/requirements.in").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name = re.split(r"[<>=\[ ]", line)[0].lower().replace("_", "-")
            assert name in pins, f"{name} from env/requirements.in is not in env/requirements.lock"


def test_makefile_stamp_is_the_one_setup_writes():
    out = subprocess.run(["make", "-pn", "setup"], cwd=REPO, capture_output=True, text=True).stdout
    stamp = re.search(r"^STAMP := (.*)$", out, re.M).group(1)
    digest = subprocess.run("cat env/requirements.lock env/finn-plus.txt | sha256sum | cut -c1-16",
                            shell=True, cwd=REPO, capture_output=True, text=True).stdout.strip()
    assert stamp.endswith(f".resbin-lock-{digest}")
    assert f".resbin-lock-$(cat env/requirements.lock env/finn-plus.txt | sha256sum | cut -c1-16)" \
        in (REPO / "env/setup.sh").read_text()


def test_docker_image_installs_the_same_lock_with_a_python_the_lock_supports():
    text = (REPO / "docker/Dockerfile").read_text()
    assert "COPY env/ /opt/resbin/env/" in text
    assert re.search(r"RUN VENV=\S+ PYTHON=python3\.(\d+) bash /opt/resbin/env/setup\.sh", text)
    minor = int(re.search(r"PYTHON=python3\.(\d+)", text).group(1))
    # numpy in the lock needs Python >= 3.11
    assert minor >= 11
    assert f"python3.{minor}-venv" in text


def test_docker_run_mounts_the_host_xilinx_tools():
    env = dict(os.environ, DRY_RUN="1", XILINX_ROOT="/opt/Xilinx", XILINX_VERSION="2023.2")
    out = subprocess.run(["bash", "docker/run.sh", "make", "bitstream", "DATASET=mnist"], cwd=REPO,
                         env=env, capture_output=True, text=True, check=True).stdout
    assert "-v /opt/Xilinx:/opt/Xilinx:ro" in out
    assert "XILINX_VIVADO=/opt/Xilinx/Vivado/2023.2" in out
    assert "XILINX_HLS=/opt/Xilinx/Vitis_HLS/2023.2" in out
    assert out.strip().endswith("make bitstream DATASET=mnist")


def test_import_hw_build_needs_no_vivado_and_no_finn():
    code = "import sys, hw_build; print('finn' in sys.modules)"
    env = {k: v for k, v in os.environ.items() if not k.startswith("XILINX")}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True,
                         text=True, check=True).stdout.strip()
    assert out == "False"


def test_doctor_reports_missing_xilinx_tools_and_what_they_disable():
    env = {k: v for k, v in os.environ.items() if not k.startswith("XILINX")}
    out = subprocess.run([sys.executable, "-m", "hw_build.doctor"], cwd=REPO, env=env,
                         capture_output=True, text=True).stdout
    assert "finn-plus    1.6.1" in out
    assert re.search(r"vivado\s+absent", out)
    assert "disables FIFO sizing, stitched IP, rtlsim, synthesis and the bitfile" in out


def test_ci_runs_the_readme_test_command():
    readme = (REPO / "README.md").read_text()
    assert "make test" in readme
    assert "make test" in (REPO / ".ci/run").read_text()
