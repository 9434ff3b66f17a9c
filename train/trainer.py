"""Training loop: one run folder per (data set, model) with config, history, checkpoint, metrics.

`train_run` trains (or resumes, or reuses a finished run), `load_run` rebuilds a trained model.
Files in the run folder (docs/design.md): config.json, history.csv, checkpoint.pt (written every
epoch, atomically), metrics.json (at the end: its presence marks a finished run, see
train.run_state), teacher.pt (float teacher of a distilling recipe, see train.teacher),
train.lock (one training process per run folder, see train.run_lock).
"""
from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import platform
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from train import fitting
from train.fitting import (TRAINERS, Split, evaluate, make_optimizer, make_scheduler, seed_all,
                           training_forward)
from train.models import ModelOptions, ResBinMLP, build_model, deployed_size
from train.recipes import get_recipe
from train.run_lock import training_lock
from train.run_state import FORCE_HINT, TrainError, read_checkpoint, require_finished
from train.runs import run_dir as default_run_dir
from train.spec import ModelSpec

HISTORY_FIELDS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds")
# What makes two runs the same run (the rest of config.json is provenance).
IDENTITY_KEYS = ("dataset", "model", "options", "recipe", "epochs", "seed", "limit_train", "val")
__all__ = ["TrainError", "train_run", "run_folder", "load_run", "load_checkpoint_into", "evaluate", "summary_table"]


# ---- small helpers ----------------------------------------------------------------------------

def _atomic_write_bytes(path: Path, write) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # concurrent writers of a shared file
    write(tmp)
    os.replace(tmp, path)


def _write_json(path: Path, obj) -> None:
    _atomic_write_bytes(path, lambda p: p.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n"))


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise TrainError(f"{path}: unreadable JSON ({e})") from None


def _describe(cfg: dict) -> str:
    opts = ModelOptions.from_dict(cfg["options"]) if isinstance(cfg.get("options"), dict) else ModelOptions()
    from train.models import options_suffix
    suffix = options_suffix(opts)
    return f"{cfg.get('model')}{' ' + suffix[2:] if suffix else ''} on {cfg.get('dataset')}"


def _same_data(saved: dict, wanted: dict) -> bool:
    """Same data set name and, where both runs recorded it, the same data (sha256 of the arrays)."""
    a, b = saved.get("data_sha256"), wanted.get("data_sha256")
    return saved.get("dataset") == wanted.get("dataset") and (a is None or b is None or a == b)


def _check_same(saved: dict, wanted: dict, where: Path) -> None:
    """Refuse a run folder whose checkpoint belongs to another spec/options/data set (one line)."""
    if _same_data(saved, wanted) and all(saved.get(k) == wanted.get(k) for k in ("model", "options")):
        return
    other = "" if saved.get("dataset") != wanted.get("dataset") or _same_data(saved, wanted) else \
        " (other data under the same name: its sha256 differs)"
    raise TrainError(f"{where} holds {_describe(saved)}{other}, not {_describe(wanted)}; "
                     f"use another --run-dir or {FORCE_HINT} to overwrite")


def _data_sha256(ds) -> str:
    """sha256 of the data a run was trained on: training + validation examples in order (so the
    validation split, its own identity key `val`, does not change it) and the test set."""
    h = hashlib.sha256()
    for a in (np.concatenate([ds.x_train, ds.x_val]), np.concatenate([ds.y_train, ds.y_val]),
              ds.x_test, ds.y_test):
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(memoryview(a).cast("B"))
    return h.hexdigest()


def _dataset_name(dataset) -> str:
    """The data set's name as recorded: idx:<dir> / npz:<file> made absolute (one name per folder)."""
    if isinstance(dataset, str) and dataset[:4] in ("idx:", "npz:"):
        return dataset[:4] + str(Path(dataset[4:]).expanduser().resolve())
    return dataset if isinstance(dataset, str) else dataset.name


# ---- quantizer state that state_dict() does not keep -------------------------------------------

def _stat_scalers(model):
    # Brevitas' runtime-statistics scalers keep their step counter and running buffer outside
    # state_dict(); saved here so a resumed run continues bit for bit.
    return [(n, m) for n, m in model.named_modules() if hasattr(m, "collect_stats_steps") and hasattr(m, "counter")]


def quant_state(model) -> dict:
    return {n: {"counter": int(m.counter), "buffer": m.buffer.detach().clone(),
                "value": m.value.detach().clone()} for n, m in _stat_scalers(model)}


def load_quant_state(model, state: dict) -> None:
    for n, m in _stat_scalers(model):
        if n in state:
            m.counter = int(state[n]["counter"])
            with torch.no_grad():
                m.buffer.copy_(state[n]["buffer"])
                m.value.copy_(state[n]["value"])


def _load_model_state(model, ckpt: dict) -> None:
    missing, unexpected = model.load_state_dict(ckpt["model"], strict=False)
    # Brevitas leaves a scaler's `value` out of state_dict() before its first statistics step.
    missing = [k for k in missing if not k.endswith(".value")]
    if missing or unexpected:
        raise TrainError(f"checkpoint does not fit the model: missing {missing[:3]}, unexpected {unexpected[:3]}")
    load_quant_state(model, ckpt.get("quant_state", {}))


# ---- the run ------------------------------------------------------------------------------------

def _resolve_device(device):
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _versions() -> dict:
    import brevitas
    return {"python": platform.python_version(), "torch": torch.__version__, "brevitas": brevitas.__version__,
            "numpy": np.__version__}


def _write_history(path: Path, history: list[dict]) -> None:
    def w(p):
        with open(p, "w", newline="") as f:
            wr = csv.DictWriter(f, fieldnames=HISTORY_FIELDS)
            wr.writeheader()
            for row in history:
                wr.writerow({k: (f"{row[k]:.6g}" if isinstance(row[k], float) else row[k]) for k in HISTORY_FIELDS})
    _atomic_write_bytes(path, w)


def summary_table(metrics: dict) -> str:
    rows = [("run", metrics["run_dir"]), ("model", metrics["model"]), ("data set", metrics["dataset"]),
            ("recipe / epochs / seed", f"{metrics['recipe']} / {metrics['epochs']} / {metrics['seed']}"),
            ("validation accuracy", f"{metrics['val_acc']:.4f}"), ("test accuracy", f"{metrics['test_acc']:.4f}"),
            ("test loss", f"{metrics['test_loss']:.4f}")]
    if metrics.get("thesis_size_kib") is not None:
        rows.append(("thesis size", f"{metrics['thesis_size_kib']:.2f} KiB ({metrics['relative_size']:.2f} of float)"))
    rows.append(("deployed size", f"{metrics['deployed_size_kib']:.2f} KiB"
                 + ("" if metrics.get("fpga_able") else " (not deployable)")))
    rows.append(("training time", f"{metrics['seconds']:.1f} s"))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k:<{width}}  {v}" for k, v in rows)


def _thesis_sizes(spec, n_in, n_out, options):
    try:
        from train.size import relative_size, thesis_size_kib
        kw = dict(pool_window=options.pool_window, shortcut_bits=options.shortcut_weight_bits)
        return thesis_size_kib(spec, n_in, n_out, **kw), relative_size(spec, n_in, n_out, **kw)
    except ImportError:
        return None, None


def run_folder(dataset, spec: ModelSpec, options: ModelOptions = ModelOptions(), run_dir=None,
               val=None) -> Path:
    """The run folder of `spec` with `options` (and an explicit validation split `val`) on
    `dataset` (name or Dataset): `run_dir` if given."""
    from train.data import parse_val, val_suffix
    from train.models import options_suffix

    if run_dir is not None:
        return Path(run_dir)
    slug = spec.slug + options_suffix(options) + val_suffix(parse_val(val))
    return default_run_dir(_dataset_name(dataset), slug)


def train_run(dataset, model, *, recipe="strong", epochs=None, options: ModelOptions = ModelOptions(), seed=0,
              run_dir=None, resume=False, data_dir=None, limit_train=None, device=None, progress=True,
              force=False, stop_after=None, val=None, trainer="fast") -> dict:
    """Train `model` (spec or name) on `dataset` (name or a loaded `train.data.Dataset`); returns metrics.

    A finished run with the same config (and data: sha256 of the arrays) is returned as is unless
    `force`; an interrupted one needs `resume=True` (continues bit for bit from the last epoch, the
    teacher's too) or `force` (starts over). One process at a time per run folder (train.lock).
    `stop_after=k` ends after epoch k (checkpoint written, no metrics), as an interruption would.
    `val`: the validation split (`--val`: count or share; None: the data set's default), part of
    the run's identity and, when given, of its folder name (`__val<N>`).
    `trainer`: "fast" (binary models step through `train.fast_model.FastPath`, Brevitas' arithmetic
    without its overhead, bit for bit the same) or "brevitas" (the Brevitas modules themselves).
    """
    from train.data import Dataset, load_dataset, parse_val

    spec = model if isinstance(model, ModelSpec) else ModelSpec.parse(model)
    rec = get_recipe(recipe).with_epochs(epochs)
    val = parse_val(val)
    ds = dataset if isinstance(dataset, Dataset) else load_dataset(dataset, data_dir, n_val=val)
    # Refuses impossible models (bad options, widths) and trainers before anything is written.
    if trainer not in TRAINERS:
        raise TrainError(f"unknown trainer {trainer!r}; expected one of {', '.join(TRAINERS)}")
    build_model(spec, ds.n_inputs, ds.n_outputs, options, ds.image_shape, input_max=ds.input_max)
    ds_name = _dataset_name(dataset)
    run = run_folder(dataset, spec, options, run_dir, val=val)
    dev = _resolve_device(device)
    config = {"dataset": ds_name, "data_sha256": _data_sha256(ds), "model": spec.name,
              "options": options.to_dict(), "recipe": rec.to_dict(), "epochs": rec.epochs, "seed": int(seed),
              "limit_train": limit_train, "val": val, "n_val": len(ds.y_val), "data_dir": str(data_dir) if data_dir is not None else None,
              "n_inputs": ds.n_inputs, "n_outputs": ds.n_outputs, "input_max": ds.input_max,
              "image_shape": list(ds.image_shape) if ds.image_shape is not None else None,
              "threads": torch.get_num_threads(),  # the float sums depend on it (train.cli_types)
              "versions": _versions()}
    with training_lock(run):
        return _train_locked(spec, rec, ds, run, dev, config, options=options, seed=seed, resume=resume,
                             limit_train=limit_train, progress=progress, force=force, stop_after=stop_after,
                             trainer=trainer)


def _existing_run(spec, run: Path, config: dict, *, resume, force, progress):
    """What the run folder already holds: ("finished", metrics) when it is this very run,
    ("resume", checkpoint or None) to continue or start; refuses another or an interrupted run
    (without --resume) with the way out. Writes config.json."""
    from train.teacher import PARTIAL_FILE

    ckpt_path, metrics_path, partial_teacher = run / "checkpoint.pt", run / "metrics.json", run / PARTIAL_FILE
    ckpt = None
    if (run / "config.json").exists() and not force:
        saved = _read_json(run / "config.json")
        _check_same(saved, config, run)
        diff = [k for k in IDENTITY_KEYS if saved.get(k) != config[k]]
        if not diff and metrics_path.exists():
            if progress:
                print(f"finished run reused (pass {FORCE_HINT} to retrain): {run}", file=sys.stderr)
            return "finished", _read_json(metrics_path)
        if diff:
            raise TrainError(f"{run} holds a run of {spec.name} with another {', '.join(diff)}; "
                             f"use {FORCE_HINT} to start over or another --run-dir")
        if (ckpt_path.exists() or partial_teacher.exists()) and not resume:
            raise TrainError(f"{run} holds an interrupted run; pass --resume (make RESUME=1) to continue it "
                             f"or {FORCE_HINT} to start over")
        if ckpt_path.exists():
            ckpt = read_checkpoint(ckpt_path)
            _check_same(ckpt.get("config") or {}, config, ckpt_path)
    run.mkdir(parents=True, exist_ok=True)
    if force:
        for f in (metrics_path, ckpt_path, run / "history.csv", partial_teacher):
            f.unlink(missing_ok=True)
    _write_json(run / "config.json", config)
    return "resume", ckpt


def _checkpoint_state(net, opt, sched, gen, dev, *, config, epoch, history, seconds) -> dict:
    """Everything a resumed run needs to continue bit for bit after `epoch`."""
    return {"config": config, "epoch": epoch, "history": history, "seconds": seconds,
            "model": net.state_dict(), "quant_state": quant_state(net), "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(), "generator": gen.get_state(), "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if dev.type == "cuda" else None,
            "python_rng": random.getstate(), "numpy_rng": np.random.get_state()}


def _restore(ckpt: dict, opt, sched, gen, dev) -> tuple[int, list, float]:
    """Optimizer, schedule and every random stream as the checkpoint left them."""
    opt.load_state_dict(ckpt["optimizer"])
    sched.load_state_dict(ckpt["scheduler"])
    gen.set_state(ckpt["generator"])
    torch.set_rng_state(ckpt["torch_rng"])
    if dev.type == "cuda" and ckpt.get("cuda_rng") is not None:
        torch.cuda.set_rng_state_all(ckpt["cuda_rng"])
    random.setstate(ckpt["python_rng"])
    np.random.set_state(ckpt["numpy_rng"])
    return ckpt["epoch"], ckpt["history"], ckpt["seconds"]


def _final_metrics(net, spec, rec, ds, run: Path, dev, config, options, seed, splits, teacher_acc,
                   seconds) -> dict:
    val, test = splits
    te_loss, te_acc = evaluate(net, test)
    va_loss, va_acc = evaluate(net, val)
    thesis_kib, rel = _thesis_sizes(spec, ds.n_inputs, ds.n_outputs, options)
    dep = deployed_size(net)
    return {"run_dir": str(run), "dataset": config["dataset"], "model": spec.name, "recipe": rec.name,
            "epochs": rec.epochs, "seed": int(seed), "test_acc": te_acc, "test_loss": te_loss, "val_acc": va_acc,
            "val_loss": va_loss, "thesis_size_kib": thesis_kib, "relative_size": rel,
            "deployed_size_kib": dep["total_kib"], "deployed_size_bits": dep["total_bits"],
            "deployed_size": dep, "fpga_able": spec.fpga_able, "teacher_val_acc": teacher_acc,
            "seconds": seconds, "device": str(dev), "finished": True}


def _train_locked(spec, rec, ds, run: Path, dev, config: dict, *, options, seed, resume, limit_train, progress,
                  force, stop_after, trainer) -> dict:
    from train.teacher import train_teacher

    state, found = _existing_run(spec, run, config, resume=resume, force=force, progress=progress)
    if state == "finished":
        return found
    ckpt, ckpt_path = found, run / "checkpoint.pt"
    x_tr, y_tr = ds.x_train, ds.y_train
    if limit_train is not None:
        x_tr, y_tr = x_tr[:limit_train], y_tr[:limit_train]
    train = Split(x_tr, y_tr, dev)
    val, test = Split(ds.x_val, ds.y_val, dev), Split(ds.x_test, ds.y_test, dev)

    seed_all(seed)
    net = build_model(spec, ds.n_inputs, ds.n_outputs, options, ds.image_shape, input_max=ds.input_max).to(dev)
    if trainer == "fast" and spec.binary and torch.device(dev).type == "cpu":
        from train.fast_kernels import library, step_ops
        library(), step_ops()  # built now: a missing compiler stops the run before the teacher's minutes
    teacher, teacher_acc = None, None
    if rec.distill_alpha > 0 and spec.binary:
        teacher, teacher_acc = train_teacher(spec, rec, ds, train, run, seed, dev, progress)
    if ckpt is not None:
        # Before the optimizer exists: Brevitas re-creates its quantizer modules (and their
        # parameters) when a state dict is loaded.
        _load_model_state(net, ckpt)
    forward = training_forward(net, trainer)  # after the state dict: Brevitas re-creates quantizers
    opt = make_optimizer(net, rec)
    sched = make_scheduler(opt, rec, math.ceil(len(train) / rec.batch_size))
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed + 1)  # dropout stream, independent of whether the teacher was cached
    start_epoch, history, seconds = 0, [], 0.0
    if ckpt is not None:
        start_epoch, history, seconds = _restore(ckpt, opt, sched, gen, dev)
        if progress:
            print(f"resuming {spec.name} at epoch {start_epoch}/{rec.epochs} from {ckpt_path}", file=sys.stderr)

    last = rec.epochs if stop_after is None else min(rec.epochs, stop_after)
    outer = tqdm(range(start_epoch + 1, last + 1), desc=f"{spec.name} {ds.name}", unit="epoch",
                 disable=not progress, file=sys.stderr, initial=start_epoch, total=rec.epochs)
    for ep in outer:
        t0 = time.perf_counter()
        tr_loss, tr_acc = fitting.train_epoch(net, opt, sched, rec, train, image_shape=ds.image_shape, gen=gen,
                                              teacher=teacher, desc=f"epoch {ep}/{rec.epochs}",
                                              progress=progress, forward=forward)
        va_loss, va_acc = evaluate(net, val)
        dt = time.perf_counter() - t0
        seconds += dt
        history.append({"epoch": ep, "train_loss": tr_loss, "train_acc": tr_acc, "val_loss": va_loss,
                        "val_acc": va_acc, "lr": opt.param_groups[0]["lr"], "seconds": dt})
        outer.set_postfix(train_loss=f"{tr_loss:.4f}", val_acc=f"{va_acc:.4f}")
        st = _checkpoint_state(net, opt, sched, gen, dev, config=config, epoch=ep, history=history,
                               seconds=seconds)
        _atomic_write_bytes(ckpt_path, lambda p: torch.save(st, p))
        _write_history(run / "history.csv", history)
    outer.close()
    if last < rec.epochs:
        return {"run_dir": str(run), "epoch": last, "finished": False}
    metrics = _final_metrics(net, spec, rec, ds, run, dev, config, options, seed, (val, test), teacher_acc,
                             seconds)
    _write_json(run / "metrics.json", metrics)
    return metrics


def load_run(run_dir) -> tuple[ResBinMLP, ModelSpec, ModelOptions, dict]:
    """(model in eval mode with the trained weights, spec, options, config) of a finished run folder;
    an unfinished one (no metrics.json) is refused with the way out (TrainError)."""
    run = Path(run_dir)
    if not (run / "config.json").exists() or not (run / "checkpoint.pt").exists():
        raise TrainError(f"{run}: no trained run here (expected config.json and checkpoint.pt)")
    require_finished(run)
    config = _read_json(run / "config.json")
    spec = ModelSpec.parse(config["model"])
    options = ModelOptions.from_dict(config["options"])
    ckpt = read_checkpoint(run / "checkpoint.pt")
    _check_same(ckpt.get("config") or {}, config, run / "checkpoint.pt")
    shape = tuple(config["image_shape"]) if config.get("image_shape") else None
    model = build_model(spec, config["n_inputs"], config["n_outputs"], options, shape, input_max=config["input_max"])
    _load_model_state(model, ckpt)
    return model.eval(), spec, options, config


def load_checkpoint_into(model: ResBinMLP, checkpoint, spec_name: str | None = None) -> None:
    """Load a checkpoint file into an already built model; refuses another spec/options, naming both."""
    ckpt = read_checkpoint(checkpoint)
    saved = ckpt.get("config") or {}
    wanted = dict(saved, model=spec_name or model.spec.name, options=model.options.to_dict())
    if saved.get("model") != wanted["model"] or saved.get("options") != wanted["options"]:
        raise TrainError(f"{checkpoint} holds {_describe(saved)}, not {_describe(wanted)}")
    _load_model_state(model, ckpt)
