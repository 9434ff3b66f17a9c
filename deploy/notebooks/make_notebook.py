"""HOST ONLY: (re)generate resbin_pynq_z2.ipynb with nbformat.

    python deploy/notebooks/make_notebook.py
"""
from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

CELLS = [
    ("md", """# ResBin on PYNQ-Z2: accuracy and frame rate

This notebook runs the binary residual MLP accelerator of this package on its test set.
With a bitfile in `bitfile/` it uses the FPGA (`pynq` backend); without one it uses the `sim`
backend, a numpy executor of `golden.npz` that computes exactly what the hardware computes.
Set the environment variable `RESBIN_BACKEND` (or `BACKEND` below) to choose."""),
    ("code", """%matplotlib inline
import os, sys, json, time
from pathlib import Path
PACKAGE = Path(os.environ.get("RESBIN_PACKAGE", "..")).resolve()   # the package root
sys.path.insert(0, str(PACKAGE))
import numpy as np
import matplotlib.pyplot as plt
from deploy.bundle import open_package
from deploy.validate import run_validation, format_table

pkg = open_package(PACKAGE)
DATASET = pkg.data_name   # the test set's file name (manifest "dataset" keeps the original string)
BACKEND = os.environ.get("RESBIN_BACKEND") or ("pynq" if pkg.bitfile is not None else "sim")
LIMIT = int(os.environ["RESBIN_LIMIT"]) if os.environ.get("RESBIN_LIMIT") else None
print(f"model {pkg.manifest['model']}  build {pkg.build_id}  board {pkg.manifest.get('board')}  "
      f"target {pkg.manifest.get('target')}  fits {pkg.manifest.get('fits')}")
print(f"backend {BACKEND}" + ("" if pkg.bitfile else "  (sim backend only: no bitfile in this package)"))"""),
    ("code", """accel = pkg.accelerator(BACKEND, batch_size=1000)
x, y = pkg.test_set(DATASET, LIMIT)
print(f"{len(x)} test images of {x.shape[1]} inputs")"""),
    ("md", "## A few test digits and the accelerator's predictions"),
    ("code", """shape = pkg.manifest.get("image_shape") or [x.shape[1]]
n_show = 8
pred = accel.execute(x[:n_show])
fig, axes = plt.subplots(1, n_show, figsize=(2 * n_show, 2.4))
for ax, img, p, t in zip(axes, x[:n_show], pred, y[:n_show]):
    if len(shape) >= 2:
        ax.imshow(img.reshape(shape[0], shape[1], -1).squeeze(), cmap="gray")
    ax.set_title(f"pred {p} / true {t}", color="green" if p == t else "red")
    ax.axis("off")
plt.show()"""),
    ("md", "## Validation: accuracy, confusion matrix, throughput, latency"),
    ("code", """res = run_validation(PACKAGE, DATASET, BACKEND, batch=1000, limit=LIMIT, accel=accel)
print(format_table(res))
out = PACKAGE / "results" / f"validate-{DATASET}-{BACKEND}-notebook.json"
out.parent.mkdir(exist_ok=True)
out.write_text(json.dumps(res, indent=1))"""),
    ("code", """cm = np.array(res["confusion_matrix"])
fig, ax = plt.subplots(figsize=(5, 4.5))
im = ax.imshow(np.log1p(cm), cmap="Blues")
for i in range(cm.shape[0]):
    for j in range(cm.shape[1]):
        if cm[i, j]:
            ax.text(j, i, cm[i, j], ha="center", va="center", fontsize=7)
ax.set_xlabel("predicted"); ax.set_ylabel("true")
ax.set_title(f"accuracy {res['accuracy']:.4f} ({BACKEND})")
plt.show()"""),
    ("md", """## Throughput against batch size
On the FPGA this is FINN's throughput test (DMA run only, at the build's clock: the driver sets
fclk0 explicitly) plus the end-to-end rate with packing; on `sim` the end-to-end rate."""),
    ("code", """batches = [b for b in (1, 10, 100, 1000) if b <= len(x)]
rows = []
for b in batches:
    accel.batch_size = b
    t0 = time.perf_counter(); accel.execute(x[:b]); dt = time.perf_counter() - t0
    row = {"batch": b, "end_to_end[images/s]": b / dt}
    if hasattr(accel, "throughput_test"):
        row.update(accel.throughput_test())
    rows.append(row)
    print({k: (round(v, 2) if isinstance(v, float) else v) for k, v in row.items()})
fig, ax = plt.subplots(figsize=(5, 3.5))
ax.plot(batches, [r["end_to_end[images/s]"] for r in rows], "o-", label="end to end")
if rows and "throughput[images/s]" in rows[0]:
    ax.plot(batches, [r["throughput[images/s]"] for r in rows], "s-", label="FPGA (DMA only)")
ax.set_xscale("log"); ax.set_yscale("log"); ax.set_xlabel("batch size"); ax.set_ylabel("images/s")
ax.legend(); ax.set_title(f"{BACKEND} backend"); plt.show()"""),
]


def build() -> nbformat.NotebookNode:
    nb = new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    nb.cells = [new_markdown_cell(src) if kind == "md" else new_code_cell(src)
                for kind, src in CELLS]
    for i, c in enumerate(nb.cells):  # stable ids: regenerating gives the same file
        c["id"] = f"cell-{i:02d}"
    return nb


if __name__ == "__main__":
    path = Path(__file__).with_name("resbin_pynq_z2.ipynb")
    nbformat.write(build(), path)
    print(path)
