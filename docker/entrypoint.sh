#!/usr/bin/env bash
# Inside the ResBin image: load the mounted Xilinx tools, fetch FINN's own dependencies once
# (finn-hlslib, board files) with FINN's dependency manager, then run the command.
set -euo pipefail
for s in "${XILINX_VIVADO:-}/settings64.sh" "${XILINX_HLS:-}/settings64.sh"; do
    # shellcheck disable=SC1090
    [ -f "$s" ] && source "$s"
done
export FINN_DEPS=${FINN_DEPS:-/workspace/.finn_deps}
if [ -n "${XILINX_VIVADO:-}" ] && [ ! -f "$FINN_DEPS/finn-hlslib/bnn-library.h" ]; then
    echo "resbin: fetching FINN dependencies into $FINN_DEPS (finn deps update)"
    finn deps update --dependency-path "$FINN_DEPS" --batch || echo "resbin: 'finn deps update' failed; cppsim/ipgen need finn-hlslib" >&2
fi
exec "$@"
