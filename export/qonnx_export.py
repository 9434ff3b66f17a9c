"""Brevitas -> QONNX export of a trained run, checked against the PyTorch forward.

`export_run(run_dir)` writes `<run_dir>/model.qonnx.onnx` (graph input annotated as the raw
integer input, e.g. UINT8 pixels) and `export.json`, after executing the QONNX model on real test
images: its integer outputs (logits / output scale) and labels must equal PyTorch's.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from core.labels import labels_from_outputs

__all__ = ["ExportError", "ExportInputError", "export_model", "export_run", "check_export",
           "QONNX_FILE", "REPORT_FILE"]

QONNX_FILE = "model.qonnx.onnx"
REPORT_FILE = "export.json"


class ExportError(RuntimeError):
    """Export failed or the exported model disagrees with PyTorch (one-line message)."""


class ExportInputError(ExportError):
    """The run cannot be exported as given (missing, unfinished or corrupt run, a float model,
    unreadable test set): bad input, exit code 2 in the CLIs."""


def export_model(model, n_inputs: int, out_path: str | Path, input_max: int | None = None) -> Path:
    """Export a Brevitas model (forward on raw values 0..input_max) to a cleaned-up QONNX file
    whose input carries the raw integer datatype (UINT8 for 0..255)."""
    import torch
    from brevitas.export import export_qonnx

    from export.brevitas_fixes import unsigned_binary_quant_export
    from qonnx.core.datatype import DataType
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.util.cleanup import cleanup_model

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    input_max = int(input_max if input_max is not None else getattr(model, "input_max", 255))
    was_training = model.training
    model.eval()
    tmp = out_path.with_name(out_path.name + ".tmp.onnx")
    try:
        with torch.no_grad(), unsigned_binary_quant_export():
            export_qonnx(model, torch.zeros(1, n_inputs), str(tmp))
        mw = cleanup_model(ModelWrapper(str(tmp)))
        mw.set_tensor_datatype(mw.graph.input[0].name, DataType.get_smallest_possible(input_max))
        mw.save(str(tmp))
        tmp.replace(out_path)  # atomic: a failed export never leaves a half-written model
    finally:
        tmp.unlink(missing_ok=True)
        # the torch exporter may write the weights beside the file; cleanup_model re-inlines them
        tmp.with_name(tmp.name + ".data").unlink(missing_ok=True)
        model.train(was_training)
    return out_path


def check_export(model, qonnx_path: str | Path, x_uint8: np.ndarray, y=None) -> dict:
    """Execute the QONNX model on `x_uint8` and compare with the PyTorch forward.

    Integer outputs (logits / output scale) must be identical and so must the labels;
    returns the comparison (max |diff| of logits, counts). Raises ExportError otherwise."""
    import torch

    from export.qonnx_exec import execute, output_scale

    x = np.asarray(x_uint8)
    with torch.no_grad():
        ref = model.eval()(torch.tensor(x, dtype=torch.float32)).numpy().astype(np.float64)
    got = execute(qonnx_path, x)
    got = next(iter(got.values())).astype(np.float64).reshape(ref.shape)
    scale = output_scale(qonnx_path)
    gi, ri = got / scale, ref / scale
    if not (np.array_equal(gi, np.rint(gi)) and np.array_equal(ri, np.rint(ri))):
        raise ExportError(f"{qonnx_path}: logits are not integer multiples of the output scale "
                          f"{scale} (the output layer needs power-of-two quantizer scales)")
    same_int = np.all(gi == ri, axis=1)
    lab_q, lab_t = labels_from_outputs(got), labels_from_outputs(ref)
    rep = {"n_images": int(len(x)), "max_abs_diff_logits": float(np.abs(got - ref).max()),
           "identical_integer_outputs": int(same_int.sum()),
           "identical_labels": int((lab_q == lab_t).sum()), "output_scale": scale}
    if y is not None:
        rep["qonnx_accuracy"] = float((lab_q == np.asarray(y)[:len(x)]).mean())
    if rep["identical_integer_outputs"] != len(x) or rep["identical_labels"] != len(x):
        first = int(np.argmax(~same_int | (lab_q != lab_t)))
        raise ExportError(
            f"{qonnx_path}: QONNX differs from PyTorch on {len(x) - rep['identical_integer_outputs']}"
            f" of {len(x)} test images (labels on {len(x) - rep['identical_labels']}; first: image "
            f"{first}, max |diff| of logits {rep['max_abs_diff_logits']:.4g})")
    return rep


def export_run(run_dir: str | Path, n_check: int = 1000, progress: bool = False) -> Path:
    """Export a trained run folder to `<run_dir>/model.qonnx.onnx` and write `export.json`."""
    from train.models import ModelError
    from train.spec import SpecError
    from train.trainer import TrainError, load_run

    from export.qonnx_exec import ExecError, load_test_set

    run = Path(run_dir)
    if int(n_check) < 1:
        raise ExportInputError(f"--n-check must be >= 1, got {n_check}")
    try:
        model, spec, options, config = load_run(run)  # refuses an unfinished or corrupt run
    except TrainError as e:
        raise ExportInputError(str(e)) from None
    except (OSError, KeyError, ValueError) as e:
        raise ExportInputError(f"{run}: cannot load the trained run ({e})") from None
    if not spec.fpga_able:
        why = "a float model" if not spec.binary else "its F shortcut is a float layer"
        raise ExportInputError(f"{run}: {spec.name} cannot go to the FPGA ({why}); export needs a "
                               "binary model with no shortcut, P or Q")
    try:
        x_test, y_test = load_test_set(run)
    except (ExecError, OSError) as e:
        raise ExportInputError(f"{run}: cannot load the test images ({e})") from None
    except Exception as e:  # the data module's own DataError
        raise ExportInputError(f"{run}: cannot load the test images ({e})") from None
    t0 = time.perf_counter()
    out = run / QONNX_FILE
    try:
        export_model(model, config["n_inputs"], out, config.get("input_max", 255))
    except (ModelError, SpecError, RuntimeError) as e:
        raise ExportError(f"{run}: export failed ({str(e).splitlines()[0]})") from None
    n = min(int(n_check), len(x_test))
    try:
        rep = check_export(model, out, x_test[:n], y_test[:n])
    except ExportError:
        out.unlink(missing_ok=True)  # a model that disagrees with PyTorch is not left behind
        raise
    rep.update({"model": spec.name, "dataset": config["dataset"], "qonnx": QONNX_FILE,
                "input_datatype": _input_dtype(out), "seconds": round(time.perf_counter() - t0, 2)})
    (run / REPORT_FILE).write_text(json.dumps(rep, indent=2, sort_keys=True) + "\n")
    if progress:
        print(summary(rep))
    return out


def _input_dtype(path: Path) -> str:
    from qonnx.core.modelwrapper import ModelWrapper

    m = ModelWrapper(str(path))
    return m.get_tensor_datatype(m.graph.input[0].name).name


def summary(rep: dict) -> str:
    rows = [("model", rep["model"]), ("data set", rep["dataset"]),
            ("input", rep["input_datatype"]), ("test images checked", rep["n_images"]),
            ("identical integer outputs", f"{rep['identical_integer_outputs']}/{rep['n_images']}"),
            ("identical labels", f"{rep['identical_labels']}/{rep['n_images']}"),
            ("max |diff| of logits", f"{rep['max_abs_diff_logits']:.3g}"),
            ("QONNX accuracy", f"{rep.get('qonnx_accuracy', float('nan')):.4f}"),
            ("seconds", rep["seconds"])]
    w = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{w}}  {v}" for k, v in rows)
