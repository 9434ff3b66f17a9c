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
import itertools
import json
import os
import random
import sys
import time
import traceback
from dataclasses import asdict, fields
from pathlib import Path

from dse import results as R
from train.options import SWEEP_AXES as OPTION_AXES
from train.shortcuts import get_shortcut

REPO_ROOT = Path(__file__).resolve().parent.parent
IDENTITY = ("dataset", "recipe", "epochs", "limit_train", "seed", "board", "target_fps")


class SweepError(ValueError):
    """A sweep that cannot start (bad arguments, a folder made with another configuration)."""


# ---------------------------------------------------------------------------------------- plan

def parse_widths(widths) -> tuple[int, ...]:
    """train.spec.parse_widths, its error as a SweepError."""
    from train.spec import SpecError
    from train.spec import parse_widths as parse

    try:
        return parse(widths)
    except SpecError as e:
        raise SweepError(f"widths: {e}") from None


def option_combos(options_grid: dict | None) -> list[dict]:
    """Cartesian product of the option axes, each a full `ModelOptions` dict (defaults elsewhere)."""
    from train.options import ModelOptions

    grid = dict(options_grid or {})
    unknown = set(grid) - set(OPTION_AXES)
    if unknown:
        raise SweepError(f"unknown option axes {sorted(unknown)}; expected some of {list(OPTION_AXES)}")
    default = asdict(ModelOptions())
    axes = [(k, list(v) if isinstance(v, (list, tuple)) else [v]) for k, v in grid.items()]
    for k, vals in axes:
        if not vals:
            raise SweepError(f"option axis {k} has no values")
    return [{**default, **dict(zip([k for k, _ in axes], combo))}
            for combo in itertools.product(*[v for _, v in axes])]


def relevant_options(spec, opts: dict) -> dict:
    """`opts` with the options that cannot change this spec's model reset to their defaults.

    Float models use none; binary ones all of input/add/output bits; shortcut weight bits matter
    for the quantized shortcuts (Q, P), the pooling geometry only for P (see train.models).
    """
    from train.options import ModelOptions

    default = asdict(ModelOptions())
    if spec.kind != "B":
        return dict(default)
    out = dict(opts)
    for k, kinds in R.OPTION_SCOPE.items():
        if spec.shortcut not in kinds:
            out[k] = default[k]
    return out


def _flag_key(spec) -> tuple:
    return (spec.dropout, spec.batchnorm, spec.shortcut, spec.shortcut_bn, spec.final_dropout)


def _flags(spec) -> dict:
    _, bits = spec.encode(1, 1)
    return dict(zip(R.COMPONENTS, bits))


def _sizes(spec, opts: dict, n_in: int, n_out: int, image_shape) -> dict:
    """Thesis size (KiB, its Keras accounting) and relative size; P counts the pooled features."""
    from train import size as S

    rows = S.thesis_size_breakdown(spec, n_in, n_out, pool_window=min(opts["pool_window"], n_in),
                                   shortcut_bits=opts["shortcut_weight_bits"])
    bits = sum(r.bits for r in rows)
    if spec.shortcut is not None and get_shortcut(spec.shortcut).pooled and opts["pool_mode"] == "vertical" \
            and image_shape is not None:
        h, w = image_shape[0], (n_in // image_shape[0])
        extra = (h // opts["pool_window"]) * w - S.pooled_features(n_in, min(opts["pool_window"], n_in))
        bits += extra * spec.widths[-1] * S.FLOAT_BITS
    kib = bits / 8 / 1024
    return {"thesis_size_kib": round(kib, 4),
            "relative_size": round(kib / S.float_baseline_size_kib(spec.widths, n_in, n_out), 5)}


def plan(info: tuple, widths, *, sample: int | None = None, seed: int = 0,
         options_grid: dict | None = None, first_widths=None, variants=None,
         baselines: bool = True) -> list[dict]:
    """The jobs of a sweep, in submission order: per base widths the float baseline, then the
    (sampled) binary variants in the thesis's enumeration order, each crossed with the options.

    `info` = (n_inputs, n_outputs, input_max, image_shape) as `train.data.dataset_info` gives it.
    `variants`: only these binary variants (names in the thesis notation, hidden widths written
    as the base widths; with `first_widths` the first width is replaced), instead of all/sample.
    `baselines=False` (only with `variants`): without F-<widths> and the plain B-<widths>.
    """
    from train.options import ModelOptions, options_suffix
    from train.spec import ModelSpec, enumerate_variants

    n_in, n_out, _, image_shape = info
    base = parse_widths(widths)
    bases = [base] if not first_widths else [(int(f), *base[1:]) for f in first_widths]
    combos = option_combos(options_grid)
    if sample is not None and sample < 1:
        raise SweepError(f"sample must be >= 1, got {sample}")
    if not baselines and not variants:
        raise SweepError("leaving out the float and plain binary baselines needs an explicit variant list")
    wanted = None
    if variants:
        wanted = [ModelSpec.parse(v) for v in variants]
        for v in wanted:
            if v.kind != "B" or v.widths != base:
                raise SweepError(f"variant {v.name} is not a binary variant of the base widths "
                                 f"{','.join(map(str, base))}")
    jobs, seen = [], set()
    for ws in bases:
        specs = enumerate_variants(ws, "B")
        chosen = list(range(len(specs)))
        if wanted is not None:
            flags = {_flag_key(v) for v in wanted}
            chosen = [i for i in chosen if _flag_key(specs[i]) in flags]
        elif sample is not None and sample < len(specs):
            chosen = sorted(random.Random(seed).sample(chosen, sample))
        plain = next(i for i, s in enumerate(specs) if s.name == f"B-{','.join(map(str, ws))}")
        if baselines and plain not in chosen:  # the plain binary is part of every full sweep
            chosen = sorted([plain, *chosen])
        todo = ([(None, specs[0].float_baseline())] if baselines else []) + [(i, specs[i]) for i in chosen]
        for idx, spec in todo:
            for combo in (combos if spec.kind == "B" else combos[:1]):
                opts = relevant_options(spec, combo)
                suffix = options_suffix(ModelOptions(**opts))
                if (spec.name, suffix) in seen:
                    continue
                seen.add((spec.name, suffix))
                jobs.append(_job(len(jobs), idx, spec, opts, suffix, n_in, n_out, image_shape))
    return jobs


def _job(n: int, idx, spec, opts: dict, suffix: str, n_in: int, n_out: int, image_shape) -> dict:
    return {"job": n, "variant": idx, "spec": spec.name, "kind": spec.kind,
            "widths": ",".join(map(str, spec.widths)), "n_layers": len(spec.widths),
            "fpga_able": int(spec.fpga_able), **_flags(spec), **opts,
            "options": suffix, "slug": spec.slug + suffix, **_sizes(spec, opts, n_in, n_out, image_shape)}


def design_jobs(info: tuple, designs) -> list[dict]:
    """Jobs for an explicit list of designs, (binary variant name, options dict) pairs, of any
    widths (the board search's final stage); options left out take their defaults."""
    from train.options import ModelOptions, options_suffix
    from train.spec import ModelSpec, enumerate_variants

    n_in, n_out, _, image_shape = info
    jobs, seen = [], set()
    for name, opts in designs:
        spec = ModelSpec.parse(name)
        if spec.kind != "B":
            raise SweepError(f"design {spec.name} is not a binary variant")
        idx = next(i for i, v in enumerate(enumerate_variants(spec.widths, "B")) if _flag_key(v) == _flag_key(spec))
        full = relevant_options(spec, {**asdict(ModelOptions()), **opts})
        suffix = options_suffix(ModelOptions(**full))
        if (spec.name, suffix) not in seen:
            seen.add((spec.name, suffix))
            jobs.append(_job(len(jobs), idx, spec, full, suffix, n_in, n_out, image_shape))
    return jobs


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
    import ray
    from tqdm import tqdm

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
    runner = runner or train_variant
    t0 = time.time()
    n_ok = n_failed = 0
    if todo:
        own = _ray_init(parallel, ray_address)
        try:
            task = ray.remote(num_cpus=1, max_retries=0)(execute)
            ds_ref = ray.put(ds)
            pending = {task.remote(runner, j, ds_ref): j for j in todo}
            bar = tqdm(total=len(jobs), initial=len(jobs) - len(todo), desc=f"sweep {out.name}",
                       unit="variant", disable=not progress, file=sys.stderr)
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                job = pending.pop(ready[0])
                try:
                    res = ray.get(ready[0])
                except ray.exceptions.RayError as e:  # the worker died (killed, out of memory, ...)
                    res = {"row": {**base_row(job), "status": "failed",
                                   "error": _one_line(e)}, "traceback": str(e)}
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


def check_jobs(jobs: list[dict], info: tuple) -> None:
    """Build one model per distinct option set (P variants first, they use the most options), so
    that bad options fail here with one line instead of in every task."""
    from train.models import ModelOptions, build_model

    n_in, n_out, input_max, image_shape = info
    seen = set()
    for j in sorted(jobs, key=lambda j: j["P"] == 0):
        opts = {f.name: j[f.name] for f in fields(ModelOptions)}
        key = tuple(sorted(opts.items()))
        if key in seen:
            continue
        seen.add(key)
        try:
            build_model(j["spec"], n_in, n_out, ModelOptions(**opts), image_shape, input_max=input_max)
        except ValueError as e:  # ModelError / SpecError
            raise SweepError(f"{j['spec']} with options {j['options'] or '(defaults)'}: {e}") from None


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
