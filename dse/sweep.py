"""The thesis's exhaustive sweep, run as Ray tasks (locally or on a cluster, one code path).

    from dse.sweep import run_sweep
    df = run_sweep("mnist", "128,88", recipe="thesis", sample=56, seed=0)

Every valid variant of the base widths (`train.spec.enumerate_variants`, thesis order) or a seeded
random sample of them, plus the float baseline `F-<widths>` and the plain binary `B-<widths>`,
crossed with the option axes (`options_grid`, e.g. {"input_bits": [1, 2, 4, 8]}), is trained as one
Ray task and appended to `<out_dir>/results.csv` as it finishes (`dse.results`). A rerun skips the
(variant, options) pairs whose row says ok; a variant that raises is recorded as failed (one-line
error in the table, traceback in `<out_dir>/errors/`) and the sweep goes on.

Ray: `RAY_ADDRESS` (or `ray_address`) connects to an existing cluster; otherwise a private local
Ray instance with `parallel` CPUs is started (and shut down at the end). On a cluster the code is
shipped as the task's working_dir; run folders are written on the node that trains the variant
(use a shared file system for `out_dir` to collect them), while the rows always come back here.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import sys
import time
import traceback
from dataclasses import asdict, fields
from pathlib import Path

from dse import results as R
from dse.plan import SweepError, check_jobs, design_jobs, parse_widths, plan

REPO_ROOT = Path(__file__).resolve().parent.parent
IDENTITY = ("dataset", "recipe", "epochs", "limit_train", "seed", "board", "target_fps")


# ----------------------------------------------------------------------------------- execution

def _one_line(e: BaseException) -> str:
    text = f"{type(e).__name__}: {e}".replace("\r", " ").replace("\n", " | ")
    return text if len(text) <= 400 else text[:397] + "..."


def base_row(job: dict) -> dict:
    """The result columns a job knows before it runs (hardware columns come from the runner)."""
    return {k: v for k, v in job.items() if k in R.COLUMNS and k not in R.HW_COLUMNS}


def execute(runner, job: dict, dataset) -> dict:
    """Run `runner(job, dataset)` for one job; never raises: failures become a failed row."""
    t0 = time.time()
    row = base_row(job)
    try:
        out = runner(job, dataset) or {}
        unknown = set(out) - set(R.COLUMNS)
        if unknown:
            raise RuntimeError(f"runner returned unknown result columns {sorted(unknown)}")
        row.update(out)
        row["status"], row["error"] = "ok", ""
        tb = None
    except Exception as e:  # one crash must not stop the sweep
        row["status"], row["error"] = "failed", _one_line(e)
        tb = traceback.format_exc()
    row["seconds"] = round(time.time() - t0, 2)
    row["finished"] = _dt.datetime.now().isoformat(timespec="seconds")
    return {"row": row, "traceback": tb}


def _ray_init(parallel: int, ray_address: str | None):
    """Start (or connect to) Ray; returns True when this call started it (and must shut it down)."""
    import ray

    if ray.is_initialized():
        return False
    env = {"PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
           "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    for k in ("RESBIN_RUNS", "RESBIN_DATA"):
        if k in os.environ:
            env[k] = os.environ[k]
    address = ray_address or os.environ.get("RAY_ADDRESS")
    if address and address != "local":
        runtime_env = {"env_vars": env, "working_dir": str(REPO_ROOT),
                       "excludes": [".venv/", ".git/", "runs/", "build/", "docs/", "*.onnx", "*.pt"]}
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=False)
    else:
        ray.init(address="local", num_cpus=parallel, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": env}, configure_logging=False)
    return True


def run_sweep(dataset, widths, *, recipe: str = "thesis", epochs: int | None = None,
              sample: int | None = None, limit: int | None = None, seed: int = 0,
              options_grid: dict | None = None, first_widths=None, board: str | None = None,
              target_fps: float | None = None, estimate: bool = True, out_dir=None,
              parallel: int | None = None, ray_address: str | None = None, data_dir=None,
              variants=None, baselines: bool = True, designs=None, runner=None, progress: bool = True):
    """Run (or resume) a sweep; returns the results of this sweep's jobs as a DataFrame.

    `dataset`: a name for `train.data.load_dataset` or a loaded `Dataset`. `limit`: training
    examples per variant (None: all). `runner(job, dataset) -> dict of result columns` replaces
    the trainer (tests). `estimate`: FINN estimates for FPGA-able variants when `board` is given.
    `variants`: only these variants of the base widths (thesis notation) instead of all / a sample.
    `designs`: instead of the plan, exactly these (variant, options) pairs (`design_jobs`).
    """
    if isinstance(dataset, str):
        from train.data import load_dataset
        ds = load_dataset(dataset, data_dir)
    else:
        ds = dataset
    info = (int(ds.x_train.shape[1]), int(ds.n_outputs), int(ds.input_max), ds.image_shape)
    ws = parse_widths(widths)
    if target_fps is not None and board is None:
        raise SweepError("target_fps needs a board")
    out = Path(out_dir) if out_dir is not None else default_sweep_dir(ds.name, ws, recipe, sample)
    parallel = int(parallel or os.cpu_count() or 1)
    identity = {"dataset": ds.name, "recipe": recipe, "epochs": epochs, "limit_train": limit, "seed": seed,
                "board": board if estimate else None, "target_fps": target_fps if estimate else None}
    jobs = design_jobs(info, designs) if designs is not None else \
        plan(info, ws, sample=sample, seed=seed, options_grid=options_grid, first_widths=first_widths,
             variants=variants, baselines=baselines)
    check_jobs(jobs, info)
    out.mkdir(parents=True, exist_ok=True)
    _write_config(out, identity, {"widths": list(ws), "first_widths": list(first_widths or []),
                                  "sample": sample, "variants": list(variants or []), "baselines": baselines,
                                  "designs": [[d, o] for d, o in designs] if designs is not None else None,
                                  "options_grid": options_grid or {},
                                  "parallel": parallel, "ray_address": ray_address or os.environ.get("RAY_ADDRESS")})
    table = out / "results.csv"
    done = R.finished_keys(table, with_estimate=bool(board and estimate))
    todo = [j for j in jobs if (j["spec"], j["options"]) not in done]
    common = {"recipe": recipe, "epochs": epochs, "seed": seed, "limit_train": limit, "dataset": ds.name,
              "data_dir": str(data_dir) if data_dir else None, "sweep_dir": str(out.resolve()),
              "board": board if estimate else None, "target_fps": target_fps if estimate else None}
    for j in todo:
        j.update(common, run_dir=str((out / "runs" / j["slug"]).resolve()))
    t0 = time.time()
    n_ok, n_failed = _run_jobs(todo, len(jobs), runner or train_variant, ds, out, table, parallel,
                               ray_address, progress) if todo else (0, 0)
    wall = time.time() - t0
    df = R.read_results(table)
    keys = {(j["spec"], j["options"]) for j in jobs}
    mine = df[[k in keys for k in zip(df["spec"], df["options"])]]
    summary = {"jobs": len(jobs), "skipped": len(jobs) - len(todo), "ok": n_ok, "failed": n_failed,
               "wall_seconds": round(wall, 1),
               "variants_per_hour": round(3600 * (n_ok + n_failed) / wall, 1) if todo and wall > 0 else None}
    _append_run_log(out, summary)
    if progress:
        print(summary_table(mine, summary, out), file=sys.stderr)
    return mine.sort_values("job").reset_index(drop=True)


def _run_jobs(todo: list[dict], n_jobs: int, runner, ds, out: Path, table: Path, parallel: int,
              ray_address: str | None, progress: bool) -> tuple[int, int]:
    """Train `todo` as Ray tasks, appending each row as it finishes; (ok, failed) counts."""
    import ray
    from tqdm import tqdm

    n_ok = n_failed = 0
    own = _ray_init(parallel, ray_address)
    try:
        task = ray.remote(num_cpus=1, max_retries=0)(execute)
        ds_ref = ray.put(ds)
        pending = {task.remote(runner, j, ds_ref): j for j in todo}
        bar = tqdm(total=n_jobs, initial=n_jobs - len(todo), desc=f"sweep {out.name}",
                   unit="variant", disable=not progress, file=sys.stderr)
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            job = pending.pop(ready[0])
            try:
                res = ray.get(ready[0])
            except ray.exceptions.RayError as e:  # the worker died (killed, out of memory, ...)
                res = {"row": {**base_row(job), "status": "failed", "error": _one_line(e)},
                       "traceback": str(e)}
            row = res["row"]
            R.append_row(table, row)
            if row["status"] == "ok":
                n_ok += 1
            else:
                n_failed += 1
                err_dir = out / "errors"
                err_dir.mkdir(exist_ok=True)
                (err_dir / f"{job['slug']}.txt").write_text(res["traceback"] or row["error"])
            bar.set_postfix_str(f"{row['spec']}{row.get('options') or ''} "
                                f"{row['status']} {_fmt_acc(row.get('test_acc'))}")
            bar.update(1)
        bar.close()
    finally:
        if own:
            ray.shutdown()
    return n_ok, n_failed


def _fmt_acc(v) -> str:
    return f"{v:.4f}" if isinstance(v, (int, float)) and v == v else ""


def default_sweep_dir(dataset: str, widths, recipe: str, sample: int | None) -> Path:
    from train.runs import dataset_slug, runs_root

    name = f"{'_'.join(map(str, widths))}_{recipe}" + (f"_s{sample}" if sample else "")
    return runs_root() / "sweeps" / dataset_slug(dataset) / name


def _write_config(out: Path, identity: dict, invocation: dict) -> None:
    path = out / "sweep.json"
    if path.exists():
        try:
            cfg = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise SweepError(f"{path}: not valid JSON ({e})") from None
        old = cfg.get("identity", {})
        diff = [f"{k}={old.get(k)!r} (now {identity[k]!r})" for k in IDENTITY if old.get(k) != identity[k]]
        if diff:
            raise SweepError(f"{path}: this folder holds a sweep made with {', '.join(diff)}; "
                             "use another --out folder")
    else:
        cfg = {"identity": identity, "invocations": [], "runs": []}
    from train.options import ModelOptions

    cfg.setdefault("invocations", []).append({
        **invocation, "started": _dt.datetime.now().isoformat(timespec="seconds"),
        "default_options": asdict(ModelOptions()), "versions": _versions()})
    path.write_text(json.dumps(cfg, indent=2, default=str) + "\n")


def _append_run_log(out: Path, summary: dict) -> None:
    path = out / "sweep.json"
    cfg = json.loads(path.read_text())
    cfg.setdefault("runs", []).append({**summary, "ended": _dt.datetime.now().isoformat(timespec="seconds")})
    path.write_text(json.dumps(cfg, indent=2, default=str) + "\n")


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": sys.version.split()[0]}
    for pkg in ("torch", "brevitas", "ray", "finn-plus", "qonnx"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def summary_table(df, summary: dict, out: Path) -> str:
    """Counts, wall time and the five most accurate variants, as fixed-width text."""
    lines = [f"sweep {out}: {summary['jobs']} jobs, {summary['skipped']} already done, "
             f"{summary['ok']} ok, {summary['failed']} failed this run, {summary['wall_seconds']} s"
             + (f", {summary['variants_per_hour']} variants/hour" if summary.get("variants_per_hour") else "")]
    ok = df[df["status"] == "ok"]
    if len(ok) and ok["test_acc"].notna().any():
        top = ok.sort_values("test_acc", ascending=False).head(5)
        lines.append(f"  {'variant':<34} {'options':<16} {'test acc':>8} {'size KiB':>9} {'s':>7}")
        for _, r in top.iterrows():
            lines.append(f"  {r['spec']:<34} {r['options'] or '-':<16} {r['test_acc']:>8.4f} "
                         f"{r['thesis_size_kib']:>9.2f} {r['seconds']:>7.1f}")
    failed = df[df["status"] == "failed"]
    for _, r in failed.head(5).iterrows():
        lines.append(f"  FAILED {r['spec']}{r['options']}: {r['error']}")
    return "\n".join(lines)


# -------------------------------------------------------------------------- the default runner

def train_variant(job: dict, dataset) -> dict:
    """Train and evaluate one variant with `train.trainer.train_run`; FINN estimate if asked."""
    import torch

    torch.set_num_threads(1)
    from train.options import ModelOptions
    from train.trainer import train_run

    opts = ModelOptions(**{f.name: job[f.name] for f in fields(ModelOptions)})
    metrics = train_run(dataset, job["spec"], recipe=job["recipe"], epochs=job["epochs"], options=opts,
                        seed=job["seed"], run_dir=job["run_dir"], resume=True, data_dir=job["data_dir"],
                        limit_train=job["limit_train"], progress=False)
    row = metrics_to_row(metrics)
    if job.get("board") and job["fpga_able"]:
        row.update(estimate_row(job["run_dir"], job["board"], job["target_fps"]))
    return row


def metrics_to_row(m: dict) -> dict:
    """Result columns from the trainer's metrics (train.trainer.train_run)."""
    dep = m.get("deployed_size_kib")
    return {"test_acc": m.get("test_acc"), "val_acc": m.get("val_acc"), "test_loss": m.get("test_loss"),
            "val_loss": m.get("val_loss"), "epochs": m.get("epochs"),
            "train_seconds": round(m["seconds"], 2) if m.get("seconds") is not None else None,
            "deployed_kib": round(dep, 4) if dep is not None else None}


def estimate_row(run_dir: str, board: str, target_fps: float | None) -> dict:
    """FINN's estimate (no synthesis) for a trained run: fps, LUT, BRAM18, DSP, fits.

    `target_fps=None` asks hw_build for the fastest folding that fits the board.
    A failing estimate is recorded in `hw_error`; the variant's training result stands.
    """
    row = {"board": board, "target_fps": target_fps}
    try:
        from hw_build.build import build

        if not (Path(run_dir) / "model.qonnx.onnx").exists():
            from export.qonnx_export import export_run

            export_run(run_dir)
        rep = build(run_dir, board=board, target_fps=target_fps, until="estimate", check_fit=False,
                    progress=False)
        row.update(hw_row(rep))
    except Exception as e:
        if isinstance(getattr(e, "report", None), dict):  # hw_build's DoesNotFitError carries the estimate
            row.update(hw_row({**e.report, "fits": False}))
        row["hw_error"] = _one_line(e)
    return row


def hw_row(rep: dict) -> dict:
    """Result columns from a hw_build estimate report (hw_build.estimate.collect_report)."""
    res = rep.get("resources") or {}
    return {"est_fps": rep.get("estimated_fps"), "lut": res.get("LUT"), "bram18": res.get("BRAM_18K"),
            "dsp": res.get("DSP"), "fits": int(bool(rep["fits"])) if rep.get("fits") is not None else None}
