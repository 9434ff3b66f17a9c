"""HOST ONLY: assemble the board package (folder + zip) from a hardware build.

    python -m deploy.package --build <run folder> [--board B] [--clock-mhz M]
                             [--target-fps F | --folding FILE] [--allow-no-fit] [--force]
                             [--dataset D] [--out dist] [--name NAME] [--data-dir DIR] [--no-zip]

From a run folder it packages the build that the hardware options name, exactly as
`python -m hw_build` names it (<run>/hw/<board>-<target>), never another one; `--build` may also
be a build folder itself. A build whose estimate does not fit the board (report.json `fits`), or
whose fit is unknown, is refused unless `--allow-no-fit`. Copies golden.npz, the bitfile + hwh
when the build has them, deploy/ (the board runtime: numpy + pynq only; this host module is left
out), the notebook, the test set as npy (written through `train.data`, imported lazily: the only
non-board imports of deploy/ are here), a manifest (build id, board, target, fit, sha256 of every
file) and a README with the scp/unzip/run steps for a PYNQ-Z2. Files and the package folder use
the data set's filesystem-safe name (`train.runs.dataset_slug`); the manifest keeps the original.
A package's `results/` (written by deploy.validate) survives a re-package of the same build; one
of another build is refused unless `--force`.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import zipfile
from pathlib import Path

import numpy as np

from core.files import sha256
from deploy.bundle import MANIFEST, PackageError
from deploy.golden import GoldenError, read_golden

DEPLOY_DIR = Path(__file__).resolve().parent
CORE_DIR = DEPLOY_DIR.parent / "core"
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


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def select_build(path, board=None, clock_mhz=None, target_fps=None, folding=None,
                 search="resource", budget=0.9) -> Path:
    """The build folder: `path` itself if it holds golden.npz (checked against the options
    given), else the build of run folder `path` that the options name (hw_build's naming)."""
    path = Path(path)
    if not path.is_dir():
        raise PackageError(f"{path}: hardware build folder not found")
    if target_fps is not None and folding is not None:
        raise PackageError("give either --target-fps or --folding, not both")
    from hw_build.boards import BoardError, get_board   # host only, lazily
    from hw_build.build import out_dir_for, target_name
    try:
        brd = get_board(board or "Pynq-Z2")
    except BoardError as e:
        raise PackageError(str(e)) from None
    clock = float(clock_mhz or brd.clock_mhz)
    target = target_name(target_fps, folding, search, budget)
    if (path / "golden.npz").is_file():
        meta = read_golden(path / "golden.npz").meta
        given = {"board": (board, brd.name, meta.get("board")),
                 "target": (target_fps or folding, target, meta.get("target")),
                 "clock": (clock_mhz, clock, meta.get("fclk_mhz"))}
        for what, (asked, want, have) in given.items():
            if asked is not None and have is not None and want != have:
                raise PackageError(f"{path} is a build for {what} {have}, not {want} (pass the run "
                                   f"folder to package the build the options name)")
        return path
    build = out_dir_for(path, brd, clock, target)
    if not (build / "golden.npz").is_file():
        have = sorted(p.parent.name for p in (path / "hw").glob("*/golden.npz"))
        raise PackageError(f"{build}: no build for {brd.name} at {target} (this run has "
                           f"{', '.join(have) or 'no build'}); run `python -m hw_build sim --run "
                           f"{path}` with the same --board/--target-fps/--folding first")
    return build


def check_fit(build: Path, allow_no_fit: bool) -> bool | None:
    """report.json's `fits`; refuses False or unknown unless `allow_no_fit`."""
    rep = _read_json(build / "report.json") or {}
    fits = rep.get("fits")
    if fits is True or allow_no_fit:
        return fits
    if fits is None:
        raise PackageError(f"{build}/report.json: no fit estimate, so whether the design fits the "
                           f"board is unknown; pass --allow-no-fit to package it anyway")
    over = [f"{r} {rep['resources'][r]:,.0f} > {rep['capacity'][r]:,}" for r in rep.get("resources", {})
            if rep.get("capacity", {}).get(r) is not None and rep["resources"][r] > rep["capacity"][r]]
    raise PackageError(f"{build.name}: the design does not fit {rep.get('board', 'the board')} "
                       f"({', '.join(over) or 'see report.md'}); choose a build that fits "
                       f"(TARGET_FPS/FOLDING) or pass --allow-no-fit to package it anyway")


def _run_info(build: Path, golden_meta: dict) -> tuple[str, str, dict]:
    """(model name, run slug, run config) from golden meta, the run's config.json, or dirs."""
    cfg = {}
    for p in (build.parent.parent / "config.json", build / "config.json"):
        cfg = cfg or _read_json(p) or {}
    name = golden_meta.get("model") or cfg.get("model")
    run_slug = build.parent.parent.name if build.parent.name == "hw" else build.name
    return name or run_slug, run_slug, cfg


def _dataset(asked: str | None, cfg: dict, golden_meta: dict) -> str:
    from train.runs import dataset_slug   # host only: one name per data set however spelled

    trained = cfg.get("dataset") or golden_meta.get("dataset")
    if asked is not None and trained is not None and dataset_slug(asked) != dataset_slug(trained):
        raise PackageError(f"--dataset {asked}: the build's model was trained on {trained}")
    if asked is None and trained is None:
        raise PackageError("which data set's test set? pass --dataset")
    return asked or trained


def _write_test_set(dataset: str, data_name: str, data_dir, n_inputs: int, out: Path) -> dict:
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
    np.save(out / f"{data_name}_test_x.npy", x)
    np.save(out / f"{data_name}_test_y.npy", y)
    return {"n_test": int(len(x)), "n_classes": int(ds.n_classes),
            "image_shape": list(ds.image_shape) if ds.image_shape else None}


README = """# ResBin accelerator package: {name} on {dataset}

Build `{build_id}` for {board} at {fclk} MHz (FINN {finn}), target `{target}`: {fit_line}
{bit_line}

## Contents
- `deploy/` the board runtime (numpy + pynq only, Python >= 3.10)
- `golden.npz` the integer model of the accelerator (the `sim` backend executes it bit-exactly)
- `bitfile/` {bit_files}
- `data/{data_name}_test_x.npy`, `data/{data_name}_test_y.npy` the {n_test} test images and labels
- `notebooks/{notebook}` accuracy, throughput and plots
- `manifest.json` build id, board, target, fit and sha256 of every file (checked before running)

## On a PYNQ-Z2 (PYNQ image v2.7 / v3.x, user `xilinx`, password `xilinx`)
```
scp {zip_name} xilinx@<board-ip>:/home/xilinx/jupyter_notebooks/
ssh xilinx@<board-ip>
cd /home/xilinx/jupyter_notebooks && unzip -o {zip_name} && cd {name_dir}
sudo -E python3 -m deploy.validate --dataset {data_name} --backend {backend}
```
(On PYNQ v3 images run `sudo -i` then `source /etc/profile.d/pynq_venv.sh` first, or use the
Jupyter terminal.) The notebook: open http://<board-ip>:9090 (v3; :9090 or port 80 on v2.x),
go to `jupyter_notebooks/{name_dir}/notebooks/{notebook}` and run all cells.

## On any PC (no board)
```
unzip {zip_name} && cd {name_dir}
python3 -m deploy.validate --dataset {data_name} --backend sim
```
Results are written to `results/validate-{data_name}-<backend>.json`.
"""


def _package_name(name, data_name: str, run_slug: str, build: Path) -> str:
    from train.runs import safe_component   # host only

    if name is None:
        return f"resbin-{data_name}-{run_slug}-{build.name}"
    if safe_component(name) != name:
        raise PackageError(f"--name {name!r}: use letters, digits, '.', '_', '-' only, not starting "
                           f"with '.' (the package is a folder directly in --out)")
    return name


def _build_key(manifest: dict) -> str:
    # the build id names the integer model; two foldings of one model share it
    return f"{manifest.get('build_id')} ({manifest.get('board')}, {manifest.get('target')})"


def _keep_results(final: Path, root: Path, force: bool) -> None:
    """Carry <final>/results/ into the new package of the same build; another build's results
    are refused unless `force` (then dropped)."""
    old = final / "results"
    if not old.is_dir() or not any(old.iterdir()):
        return
    was, now = _build_key(_read_json(final / MANIFEST) or {}), _build_key(_read_json(root / MANIFEST))
    if was == now:
        shutil.copytree(old, root / "results")
    elif not force:
        raise PackageError(f"{old} holds validation results of build {was}, the new package is "
                           f"build {now}: move them away or pass --force to delete them")


def build_package(build, dataset: str | None = None, out="dist", name: str | None = None,
                  data_dir=None, make_zip: bool = True, *, allow_no_fit: bool = False,
                  force: bool = False, **hw) -> Path:
    """Assemble <out>/<name>/ (+ <out>/<name>.zip); returns the folder. `hw`: board, clock_mhz,
    target_fps, folding, search, budget (see `select_build`)."""
    from train.runs import dataset_slug   # host only

    build = select_build(build, **hw)
    fits = check_fit(build, allow_no_fit)
    golden_src = build / "golden.npz"
    g = read_golden(golden_src)
    model, slug, cfg = _run_info(build, g.meta)
    dataset = _dataset(dataset, cfg, g.meta)
    if data_dir is None and cfg.get("dataset") == dataset:
        data_dir = cfg.get("data_dir")
    data_name = dataset_slug(dataset)
    name = _package_name(name, data_name, slug, build)
    final = Path(out) / name
    root = Path(out) / f".{name}.partial"   # renamed when complete: a failure leaves nothing
    if root.exists():
        shutil.rmtree(root)
    try:
        _assemble(root, build, g, golden_src, model, dataset, data_name, data_dir, name, fits)
        _keep_results(final, root, force)
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    if final.exists():
        old = Path(out) / f".{name}.old"
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
        root.rename(final)
        shutil.rmtree(old)
    else:
        root.rename(final)
    if make_zip:
        tmp_zip = Path(out) / f".{name}.zip.partial"
        _zip(final, tmp_zip)
        tmp_zip.replace(Path(out) / f"{name}.zip")
    return final


def _assemble(root: Path, build: Path, g, golden_src: Path, model: str, dataset: str,
              data_name: str, data_dir, name: str, fits) -> dict:
    (root / "deploy").mkdir(parents=True)
    for f in sorted(DEPLOY_DIR.glob("*.py")):
        if f.name not in HOST_ONLY:
            shutil.copy2(f, root / "deploy" / f.name)
    (root / "core").mkdir()  # the rules deploy shares with the host stages (numpy only)
    for f in sorted(CORE_DIR.glob("*.py")):
        shutil.copy2(f, root / "core" / f.name)
    nb = DEPLOY_DIR / "notebooks" / NOTEBOOK
    (root / "notebooks").mkdir()
    shutil.copy2(nb, root / "notebooks" / NOTEBOOK)
    shutil.copy2(golden_src, root / "golden.npz")
    info = _write_test_set(dataset, data_name, data_dir, g.n_inputs, root / "data")
    bits = find_bitfile(build)
    files = ["golden.npz", f"data/{data_name}_test_x.npy", f"data/{data_name}_test_y.npy"]
    report = _read_json(build / "report.json") or {}
    manifest = {"format": 1, "build_id": g.build_id, "dataset": dataset, "data_name": data_name,
                "model": model, "board": g.meta.get("board"), "fclk_mhz": g.meta.get("fclk_mhz"),
                "target": g.meta.get("target") or build.name, "fits": fits,
                "estimated_fps": report.get("estimated_fps"), "build": build.name,
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
    _write_readme(root, manifest, bits, name)
    return manifest


def _write_readme(root: Path, m: dict, bits, name: str) -> None:
    bit_line = ("Bitfile included: run with `--backend pynq` on the board." if bits else
                "**sim backend only: no bitfile** (the build ran without Vivado). Everything "
                "below works with `--backend sim`; rebuild with Vivado for the board.")
    fps = f"{m['estimated_fps']:,.0f} fps estimated, " if m.get("estimated_fps") else ""
    fit_line = fps + {True: "fits the board (FINN estimate).",
                      False: "**does NOT fit the board** (FINN estimate; packaged with --allow-no-fit).",
                      None: "fit **unknown** (no estimate; packaged with --allow-no-fit)."}[m["fits"]]
    (root / "README.md").write_text(README.format(
        name=m["model"], dataset=m["dataset"], data_name=m["data_name"], build_id=m["build_id"],
        board=m.get("board") or "?", fclk=m.get("fclk_mhz") or "?", finn=m.get("finn_version") or "?",
        target=m["target"], fit_line=fit_line, bit_line=bit_line,
        bit_files=(f"`{bits[0].name}` + `{bits[1].name}`" if bits else "(empty: no bitfile in this build)"),
        n_test=m["n_test"], notebook=NOTEBOOK, zip_name=f"{name}.zip", name_dir=name,
        backend=m["backend"]))


def _zip(root: Path, dest: Path) -> None:
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as z:
        for p in sorted(root.rglob("*")):
            if p.is_file() and "__pycache__" not in p.parts and p.relative_to(root).parts[0] != "results":
                info = zipfile.ZipInfo(str(Path(root.name) / p.relative_to(root)), _ZIP_DATE)
                info.compress_type = zipfile.ZIP_DEFLATED
                info.external_attr = 0o644 << 16
                z.writestr(info, p.read_bytes())


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m deploy.package",
                                 description="Assemble the board package (host only).")
    ap.add_argument("--build", required=True, help="run folder (its build that the hardware options "
                    "name), or a hardware build folder (holds golden.npz)")
    ap.add_argument("--dataset", default=None, help="data set of the test set (default: the run's)")
    hw = ap.add_argument_group("which build of a run folder (as for python -m hw_build)")
    hw.add_argument("--board", default=None, help="default Pynq-Z2")
    hw.add_argument("--clock-mhz", type=_float, default=None, help="default: the board's")
    g = hw.add_mutually_exclusive_group()
    g.add_argument("--target-fps", type=_float, default=None)
    g.add_argument("--folding", type=Path, default=None)
    hw.add_argument("--search", choices=("resource", "stock"), default="resource")
    hw.add_argument("--budget", type=_float, default=0.9)
    ap.add_argument("--allow-no-fit", action="store_true",
                    help="package a build whose estimate does not fit the board (or has none)")
    ap.add_argument("--force", action="store_true",
                    help="replace a package whose results/ belong to another build")
    ap.add_argument("--out", default="dist", help="output folder (default: dist)")
    ap.add_argument("--name", default=None,
                    help="package name (default resbin-<data set>-<run slug>-<build folder>)")
    ap.add_argument("--data-dir", default=None, help="data set folder (default: the run's, else "
                    "train.data's)")
    ap.add_argument("--no-zip", action="store_true")
    return ap


def main(argv=None) -> int:
    a = _parser().parse_args(argv)
    try:
        root = build_package(a.build, a.dataset, a.out, a.name, a.data_dir, not a.no_zip,
                             allow_no_fit=a.allow_no_fit, force=a.force, board=a.board,
                             clock_mhz=a.clock_mhz, target_fps=a.target_fps, folding=a.folding,
                             search=a.search, budget=a.budget)
    except (PackageError, GoldenError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    m = json.loads((root / MANIFEST).read_text())
    print(f"package: {root}" + ("" if a.no_zip else f"  (+ {root}.zip)"))
    fit = {True: "fits", False: "does NOT fit (--allow-no-fit)", None: "fit unknown (--allow-no-fit)"}
    print(f"  build {m['build_id']} ({m['board']}, {m['target']}: {fit[m['fits']]}), {m['model']}, "
          f"{m['n_test']} test images, "
          + ("bitfile included (pynq backend)" if m["bitfile"] else "sim backend only: no bitfile"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
