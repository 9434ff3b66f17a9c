"""Simulation before synthesis: the compiled HW graph (FINN Python execution of the HW layers,
before specialization) on the whole test set, asserted equal to the QONNX model on every image;
optionally (cppsim_images > 0) the generated code of every layer on the first images
(hw_build.cppsim: HLS layers in C++, RTL layers in Verilator; `make cppsim` runs it on all).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from core.labels import labels_from_outputs

__all__ = ["SimulationError", "SimulationInputError", "simulate", "find_build_dir", "SIM_FILE",
           "sim_file", "CPPSIM_NOT_RUN"]

SIM_FILE = "sim.json"  # the whole test set; a partial simulation is sim-n<N>.json beside it
CPPSIM_NOT_RUN = ("not run here: `make cppsim` (python -m hw_build cppsim) runs the generated "
                  "HLS/RTL code of every layer on the test set")


class SimulationError(RuntimeError):
    """The HW graph is missing, or its outputs differ from the QONNX model's (one line);
    `result` holds the counts when the simulation ran (the dict that was written)."""
    result: dict | None = None


class SimulationInputError(SimulationError):
    """A bad image count (n < 1 or more than the test set): bad input, exit code 2."""


def sim_file(n_images: int, n_test: int) -> str:
    """sim.json for the whole test set, sim-n<N>.json for the first N images: a partial result
    never replaces the full one."""
    return SIM_FILE if n_images >= n_test else f"sim-n{n_images}.json"


def check_n(n, n_test: int) -> None:
    if n is not None and (isinstance(n, bool) or int(n) != n or not 1 <= int(n) <= n_test):
        raise SimulationInputError(f"--n {n}: expected 1..{n_test} (the test set's images), or none for all")


def find_build_dir(path: str | Path) -> tuple[Path, Path]:
    """(build dir holding hw_graph.onnx, run dir) from either of them. A run dir with several
    builds picks the most recently written hw_graph.onnx."""
    from hw_build.steps import HW_GRAPH_FILE

    p = Path(path)
    if (p / HW_GRAPH_FILE).exists():
        return p, p.parent.parent
    graphs = sorted((p / "hw").glob(f"*/{HW_GRAPH_FILE}"), key=lambda f: f.stat().st_mtime)
    if graphs:
        return graphs[-1].parent, p
    raise SimulationError(f"{p}: no {HW_GRAPH_FILE} here or under {p / 'hw'}/* "
                          "(run `python -m hw_build estimate --run <run>` first)")


def simulate(path: str | Path, limit: int | None = None, n: int | None = None,
             progress: bool = True, cppsim_images: int = 0) -> dict:
    """Execute the HW graph of a build (or the newest build of a run) on the test set.

    Returns {accuracy, identical ("N/N": integer outputs equal to the QONNX model's), labels
    equal to QONNX, n_images, seconds, images_per_s, cppsim}; writes sim.json in the build dir
    (sim-n<N>.json for the first N < all images). cppsim_images > 0 also runs hw_build.cppsim on
    that many images (cppsim: {cppsim_images, cppsim_identical}; needs a specialized build).
    Raises SimulationError if any image differs, SimulationInputError for an `n` outside
    1..test images."""
    from hw_build.steps import HW_GRAPH_FILE
    from hw_build.verify import QONNX_FILE, execute, int_output_tensor, integer_outputs, load_test_set

    limit = n if limit is None else limit
    build_dir, run_dir = find_build_dir(path)
    qonnx = run_dir / QONNX_FILE
    if not qonnx.exists():
        raise SimulationError(f"{qonnx}: no QONNX model (run `python -m export {run_dir}`)")
    x, y = load_test_set(run_dir)
    n_test = len(x)
    check_n(limit, n_test)
    if limit is not None:
        x, y = x[:int(limit)], y[:int(limit)]
    t0 = time.perf_counter()
    from qonnx.core.modelwrapper import ModelWrapper

    hw = ModelWrapper(str(build_dir / HW_GRAPH_FILE))
    int_name, _ = int_output_tensor(hw)
    out_name = hw.graph.output[0].name
    res = execute(hw, x, [int_name, out_name] if int_name != out_name else [out_name], progress)
    hw_int = res[int_name].astype(np.int64)
    t_hw = time.perf_counter() - t0
    q_int = integer_outputs(qonnx, x, progress)
    q_labels = labels_from_outputs(q_int)
    if hw_int.shape[1] == 1:
        labels = labels_from_outputs(hw_int)
    else:  # the accelerator's own LabelSelect
        labels = res[out_name].reshape(len(x), -1)[:, 0].astype(np.int64)
    same = np.all(hw_int == q_int, axis=1)
    out = {"n_images": int(len(x)), "accuracy": float((labels == y).mean()),
           "identical": f"{int(same.sum())}/{len(x)}",
           "labels_equal_qonnx": f"{int((labels == q_labels).sum())}/{len(x)}",
           "hw_seconds": round(t_hw, 2), "images_per_s": round(len(x) / max(t_hw, 1e-9), 1),
           "seconds": round(time.perf_counter() - t0, 2), "hw_graph": str(build_dir / HW_GRAPH_FILE)}
    out["cppsim"] = CPPSIM_NOT_RUN
    if cppsim_images:
        from hw_build.cppsim import run_cppsim

        c = run_cppsim(build_dir, n=min(int(cppsim_images), len(x)), progress=progress,
                       check=False)
        out["cppsim"] = {"cppsim_images": c["n_images"],
                         "cppsim_identical": int(c["identical"].split("/")[0])}
    (build_dir / sim_file(len(x), n_test)).write_text(json.dumps(out, indent=2) + "\n")
    if not same.all():
        i = int(np.argmax(~same))
        raise _with_result(out, f"{build_dir / HW_GRAPH_FILE}: integer outputs differ from the QONNX "
                                f"model on {int((~same).sum())} of {len(x)} test images (first: "
                                f"image {i}, {hw_int[i].tolist()} vs {q_int[i].tolist()})")
    if isinstance(out["cppsim"], dict) and out["cppsim"]["cppsim_identical"] != out["cppsim"]["cppsim_images"]:
        raise _with_result(out, f"the generated code of {build_dir} (hw_build.cppsim) differs from golden.npz/QONNX "
                                f"on {out['cppsim']['cppsim_images'] - out['cppsim']['cppsim_identical']} "
                                f"of {out['cppsim']['cppsim_images']} images")
    return out


def _with_result(out: dict, msg: str) -> SimulationError:
    e = SimulationError(msg)
    e.result = out
    return e
