#!/usr/bin/env bash
# Run a ResBin command in the toolchain image with the host's Vivado/Vitis mounted, e.g.
#   docker/run.sh make bitstream DATASET=mnist BOARD=Pynq-Z2
# Environment (host side):
#   XILINX_ROOT     where Xilinx tools are installed        (default /tools/Xilinx)
#   XILINX_VERSION  Vivado/Vitis release, 2022.2 or newer   (default 2022.2)
#   BOARD           passed to make as BOARD                  (default Pynq-Z2)
#   RESBIN_IMAGE    image tag                                (default resbin:latest; build: make docker-build)
#   DRY_RUN=1       print the docker command instead of running it
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
XILINX_ROOT=${XILINX_ROOT:-/tools/Xilinx}
XILINX_VERSION=${XILINX_VERSION:-2022.2}
BOARD=${BOARD:-Pynq-Z2}
IMAGE=${RESBIN_IMAGE:-resbin:latest}
VIVADO="$XILINX_ROOT/Vivado/$XILINX_VERSION"
HLS="$XILINX_ROOT/Vitis_HLS/$XILINX_VERSION"
if [ -z "${DRY_RUN:-}" ] && [ ! -d "$VIVADO" ]; then
    echo "docker/run.sh: no Vivado at $VIVADO (set XILINX_ROOT / XILINX_VERSION); the image runs without it up to HLS code generation" >&2
fi
[ $# -gt 0 ] || set -- make help
tty=(); [ -t 0 ] && tty=(-it)
cmd=(docker run --rm "${tty[@]}" --init
     -u "$(id -u):$(id -g)" -e HOME=/workspace/.home
     -v "$REPO:/workspace" -w /workspace
     -v "$XILINX_ROOT:$XILINX_ROOT:ro"
     -e XILINX_VIVADO="$VIVADO" -e XILINX_HLS="$HLS"
     -e FINN_DEPS=/workspace/.finn_deps -e FINN_BUILD_DIR=/workspace/build/finn
     -e VENV=/opt/resbin/venv -e BOARD="$BOARD"
     "$IMAGE" "$@")
if [ -n "${DRY_RUN:-}" ]; then printf '%q ' "${cmd[@]}"; echo; else exec "${cmd[@]}"; fi
