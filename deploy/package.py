"""HOST ONLY: assemble the board package (folder + zip) from a hardware build folder.

    python -m deploy.package --build runs/mnist/<slug>/hw/<board>-<target> --dataset mnist
                             --out dist [--name NAME] [--data-dir DIR] [--no-zip]

Copies golden.npz, the bitfile + hwh when the build has them, deploy/ (the board runtime: numpy +
pynq only; this host module is left out), the notebook, the test set as npy (written through
`train.data`, imported lazily: the only non-board import of deploy/), a manifest with the build
id and sha256 of every file, and a README with the scp/unzip/run steps for a PYNQ-Z2.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import zipfile
from pathlib import Path

import numpy as np

from deploy.bundle import MANIFEST, PackageError, sha256
from deploy.golden import GoldenError, find_build, read_golden

DEPLOY_DIR = Path(__file__).resolve().parent
HOST_ONLY = {"package.py"}
NOTEBOOK = "resbin_pynq_z2.ipynb"
_ZIP_DATE = (2024, 1, 1, 0, 0, 0)  # fixed timestamps: the same inputs give the same zip


def find_bitfile(build: Path) -> tuple[Path, Path] | None:
    """(bit, hwh) with the same stem anywhere under the build folder, else None."""
    for bit in sorted(build.rglob("*.bit")):
        hwh = bit.with_suffix(".hwh")
        if hwh.is_file():
            return bit, hwh
    return None


def _model_name(build: Path, golden_meta: dict) -> tuple[str, str]:
    """(model name, filesystem slug): from golden meta, else the run's config.json, else dirs."""
    name = golden_meta.get("model")
    for cfg in (build.parent.parent / "config.json", build / "config.json"):
        if not name and cfg.is_file():
            try:
                name = json.loads(cfg.read_text()).get("model")
            except json.JSONDecodeError:
                pass
    run_slug = build.parent.parent.name if build.parent.name == "hw" else build.name
    return name or run_slug, run_slug


def _write_test_set(dataset: str, data_dir, n_inputs: int, out: Path) -> dict:
    from train.data import DataError, load_dataset  # host-only (not part of the board runtime)

    try:
        ds = load_dataset(dataset, data_dir, download=False)
    except DataError as e:
        raise PackageError(f"test set {dataset!r}: {e}") from None
    x, y = np.ascontiguousarray(ds.x_test, dtype=np.uint8), ds.y_test.astype(np.int64)
    if x.shape[1] != n_inputs:
        raise PackageError(f"{dataset} test images have {x.shape[1]} inputs, the accelerator "
                           f"takes {n_inputs}")
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / f"{dataset}_test_x.npy", x)
    np.save(out / f"{dataset}_test_y.npy", y)
    return {"n_test": int(len(x)), "n_classes": int(ds.n_classes),
            "image_shape": list(ds.image_shape) if ds.image_shape else None}


README = """# ResBin accelerator package: {name} on {dataset}

Build `{build_id}` for {board} at {fclk} MHz (FINN {finn}).
{bit_line}

## Contents
- `deploy/` the board runtime (numpy + pynq only, Python >= 3.10)
- `golden.npz` the integer model of the accelerator (the `sim` backend executes it bit-exactly)
- `bitfile/` {bit_files}
- `data/{dataset}_test_x.npy`, `data/{dataset}_test_y.npy` the {n_test} test images and labels
- `notebooks/{notebook}` accuracy, throughput and plots
- `manifest.json` build id and sha256 of every file (checked before running)

## On a PYNQ-Z2 (PYNQ image v2.7 / v3.x, user `xilinx`, password `xilinx`)
```
scp {zip_name} xilinx@<board-ip>:/home/xilinx/jupyter_notebooks/
ssh xilinx@<board-ip>
cd /home/xilinx/jupyter_notebooks && unzip -o {zip_name} && cd {name_dir}
sudo -E python3 -m deploy.validate --dataset {dataset} --backend {backend}
```
(On PYNQ v3 images run `sudo -i` then `source /etc/profile.d/pynq_venv.sh` first, or use the
Jupyter terminal.) The notebook: open http://<board-ip>:9090 (v3; :9090 or port 80 on v2.x),
go to `jupyter_notebooks/{name_dir}/notebooks/{notebook}` and run all cells.

## On any PC (no board)
```
unzip {zip_name} && cd {name_dir}
python3 -m deploy.validate --dataset {dataset} --backend sim
```
Results are written to `results/validate-<dataset>-<backend>.json`.
"""


def build_package(build, dataset: str = "mnist", out="dist", name: str | None = None,
                  data_dir=None, make_zip: bool = True) -> Path:
    """Assemble <out>/<name>/ (+ <out>/<name>.zip); returns the folder."""
    if not Path(build).is_dir():
        raise PackageError(f"{build}: hardware build folder not found")
    build = find_build(build)
    golden_src = build / "golden.npz"
    g = read_golden(golden_src)
    model, slug = _model_name(build, g.meta)
    name = name or f"resbin-{dataset}-{slug}"
    final = Path(out) / name
    root = Path(out) / f".{name}.partial"   # renamed when complete: a failure leaves nothing
    if root.exists():
        shutil.rmtree(root)
    try:
        _assemble(root, build, g, golden_src, model, dataset, data_dir, name)
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    if final.exists():
        shutil.rmtree(final)
    root.rename(final)
    if make_zip:
        tmp_zip = Path(out) / f".{name}.zip.partial"
        _zip(final, tmp_zip)
        tmp_zip.replace(Path(out) / f"{name}.zip")
    return final


def _assemble(root: Path, build: Path, g, golden_src: Path, model: str, dataset: str, data_dir,
              name: str) -> dict:
    (root / "deploy").mkdir(parents=True)
    for f in sorted(DEPLOY_DIR.glob("*.py")):
        if f.name not in HOST_ONLY:
            shutil.copy2(f, root / "deploy" / f.name)
    nb = DEPLOY_DIR / "notebooks" / NOTEBOOK
    (root / "notebooks").mkdir()
    shutil.copy2(nb, root / "notebooks" / NOTEBOOK)
    shutil.copy2(golden_src, root / "golden.npz")
    info = _write_test_set(dataset, data_dir, g.n_inputs, root / "data")
    bits = find_bitfile(build)
    files = ["golden.npz", f"data/{dataset}_test_x.npy", f"data/{dataset}_test_y.npy"]
    manifest = {"format": 1, "build_id": g.build_id, "dataset": dataset, "model": model,
                "board": g.meta.get("board"), "fclk_mhz": g.meta.get("fclk_mhz"),
                "golden": "golden.npz", "bitfile": None, "hwh": None, **info,
                "backend": "sim", "finn_version": g.meta.get("finn_version")}
    if bits:
        (root / "bitfile").mkdir()
        for p in bits:
            shutil.copy2(p, root / "bitfile" / p.name)
        manifest["bitfile"] = f"bitfile/{bits[0].name}"
        manifest["hwh"] = f"bitfile/{bits[1].name}"
        manifest["backend"] = "pynq"
        files += [manifest["bitfile"], manifest["hwh"]]
    manifest["sha256"] = {f: sha256(root / f) for f in files}
    (root / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    bit_line = ("Bitfile included: run with `--backend pynq` on the board." if bits else
                "**sim backend only: no bitfile** (the build ran without Vivado). Everything "
                "below works with `--backend sim`; rebuild with Vivado for the board.")
    (root / "README.md").write_text(README.format(
        name=model, dataset=dataset, build_id=g.build_id, board=g.meta.get("board", "?"),
        fclk=g.meta.get("fclk_mhz", "?"), finn=g.meta.get("finn_version", "?"),
        bit_line=bit_line, bit_files=(f"`{bits[0].name}` + `{bits[1].name}`" if bits else
                                      "(empty: no bitfile in this build)"),
        n_test=info["n_test"], notebook=NOTEBOOK, zip_name=f"{name}.zip", name_dir=name,
        backend=manifest["backend"]))
    return manifest


def _zip(root: Path, dest: Path) -> None:
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as z:
        for p in sorted(root.rglob("*")):
            if p.is_file() and "__pycache__" not in p.parts:
                info = zipfile.ZipInfo(str(Path(root.name) / p.relative_to(root)), _ZIP_DATE)
                info.compress_type = zipfile.ZIP_DEFLATED
                info.external_attr = 0o644 << 16
                z.writestr(info, p.read_bytes())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m deploy.package",
                                 description="Assemble the board package (host only).")
    ap.add_argument("--build", required=True, help="hardware build folder (holds golden.npz), or a run folder: its newest build")
    ap.add_argument("--dataset", default="mnist")
    ap.add_argument("--out", default="dist", help="output folder (default: dist)")
    ap.add_argument("--name", default=None, help="package name (default resbin-<ds>-<slug>)")
    ap.add_argument("--data-dir", default=None, help="data set folder (default: train.data's)")
    ap.add_argument("--no-zip", action="store_true")
    a = ap.parse_args(argv)
    try:
        root = build_package(a.build, a.dataset, a.out, a.name, a.data_dir, not a.no_zip)
    except (PackageError, GoldenError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    m = json.loads((root / MANIFEST).read_text())
    print(f"package: {root}" + ("" if a.no_zip else f"  (+ {root}.zip)"))
    print(f"  build {m['build_id']}, {m['model']}, {m['n_test']} test images, "
          + ("bitfile included (pynq backend)" if m["bitfile"] else
             "sim backend only: no bitfile"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
