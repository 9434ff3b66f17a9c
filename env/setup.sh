#!/usr/bin/env bash
# Create or update the project's virtual environment from the lock file. Idempotent: the
# Makefile calls it only when env/requirements.lock or env/finn-plus.txt changed.
#   VENV      where to create it (default .venv)
#   PYTHON    interpreter to create it with (default python3, >= 3.10)
#   PIP_ARGS  extra pip arguments, e.g. "--extra-index-url https://download.pytorch.org/whl/cpu"
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip ${PIP_ARGS:-}
"$VENV/bin/python" -m pip install -q -r env/requirements.lock ${PIP_ARGS:-}
# finn-plus pins brevitas==0.13.0, which crashes on torch 2.13: its real requirements are in the
# lock file, so it goes in without its declared ones (see ../shared/docs/finn-notes.md).
"$VENV/bin/python" -m pip install -q --no-deps -r env/finn-plus.txt ${PIP_ARGS:-}
"$VENV/bin/python" -m pip check >/dev/null 2>&1 || "$VENV/bin/python" - <<'PY'
import subprocess, sys
out = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True).stdout
bad = [l for l in out.splitlines() if not l.startswith("finn-plus")]
if bad:
    sys.exit("pip check found conflicts:\n" + "\n".join(bad))
PY
# the Makefile's stamp: named by the hash of what was installed, so a changed lock reinstalls
touch "$VENV/.resbin-lock-$(cat env/requirements.lock env/finn-plus.txt | sha256sum | cut -c1-16)"
echo "environment ready: $VENV"
