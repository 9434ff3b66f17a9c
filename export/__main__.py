"""python -m export <run folder> [--n-check N]: Brevitas -> QONNX, checked against PyTorch.

Exit codes: 0 written; 1 the export failed or differs from PyTorch; 2 bad input (no run, an
unfinished or corrupt run, a float model)."""
from __future__ import annotations

import argparse
import sys

from train.cli_types import positive_int


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m export", description=__doc__.split(":", 1)[1].strip())
    ap.add_argument("run_dir", help="a trained run folder (config.json + checkpoint.pt)")
    ap.add_argument("--n-check", type=positive_int, default=1000,
                    help="test images on which QONNX must equal PyTorch (default 1000)")
    args = ap.parse_args(argv)
    from export.qonnx_export import ExportError, ExportInputError, export_run

    try:
        out = export_run(args.run_dir, n_check=args.n_check, progress=True)
    except ExportInputError as e:  # missing, unfinished or corrupt run, float model: bad input
        print(f"error: {e}", file=sys.stderr)
        return 2
    except ExportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
