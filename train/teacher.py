"""Float teacher of a distilling recipe: trained once per (widths, recipe, seed, data), checkpointed
every epoch (an interrupted teacher resumes where it stopped, bit for bit), cached as teacher.pt
in the run folder and in ../.teachers/ for sibling runs (a sweep's option variants).

Its length is the recipe's `teacher_epochs`, not `--epochs` (which sets the student's): one
cached teacher then serves every student of these widths whatever its epochs; the progress
output says so when it trains.
"""
from __future__ import annotations

import hashlib
import json
import math
import shutil
import sys
from pathlib import Path

import torch

from train.models import ModelOptions, build_model
from train.recipes import Recipe
from train.run_state import TrainError, read_checkpoint
from train.spec import ModelSpec

TEACHER_FILE = "teacher.pt"
PARTIAL_FILE = "teacher-checkpoint.pt"  # the unfinished teacher, rewritten after every epoch


def _teacher_recipe(recipe: Recipe) -> Recipe:
    return Recipe(f"{recipe.name}-teacher", optimizer=recipe.optimizer, lr=recipe.lr,
                  batch_size=recipe.batch_size, epochs=recipe.teacher_epochs, schedule=recipe.schedule,
                  warmup_epochs=recipe.warmup_epochs, weight_decay=recipe.weight_decay,
                  label_smoothing=recipe.label_smoothing, shift_px=recipe.shift_px, latent_clip=None)


def _cached(paths, key: dict):
    for cached in paths:
        if not cached.exists():
            continue
        try:
            ck = read_checkpoint(cached, "teacher")
        except TrainError:  # a truncated cache file is retrained, not fatal
            continue
        if ck.get("key") == key:
            return cached, ck
    return None, None


def train_teacher(spec: ModelSpec, recipe: Recipe, ds, train, run: Path, seed: int, device, progress):
    """(float teacher in eval mode, its validation accuracy): F-<widths x mult with N>."""
    from train import fitting
    from train.fitting import Split, evaluate, make_optimizer, make_scheduler, seed_all
    from train.trainer import _atomic_write_bytes

    widths = tuple(w * recipe.teacher_width_mult for w in spec.widths)
    tspec = ModelSpec("F", widths, (False,) * len(widths), (True,) * len(widths))
    trecipe = _teacher_recipe(recipe)
    key = {"teacher": tspec.name, "recipe": trecipe.to_dict(), "seed": seed, "dataset": ds.name,
           "n_train": len(train)}
    model = build_model(tspec, ds.n_inputs, ds.n_outputs, ModelOptions(), ds.image_shape, input_max=ds.input_max)
    path, partial = run / TEACHER_FILE, run / PARTIAL_FILE
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]
    shared = run.parent / ".teachers" / f"{tspec.slug}-{digest}.pt"
    cached, ck = _cached((path, shared), key)
    if cached is not None:
        model.load_state_dict(ck["model"])
        if cached != path:
            _atomic_write_bytes(path, lambda p: shutil.copyfile(cached, p))
        return model.to(device).eval(), ck["val_acc"]
    seed_all(seed + 7919)
    model = build_model(tspec, ds.n_inputs, ds.n_outputs, ModelOptions(), ds.image_shape, input_max=ds.input_max)
    model.to(device)
    gen = torch.Generator().manual_seed(seed + 7919)
    opt = make_optimizer(model, trecipe)
    sched = make_scheduler(opt, trecipe, math.ceil(len(train) / trecipe.batch_size))
    start = 0
    if partial.exists():
        ck = read_checkpoint(partial, "teacher checkpoint")
        if ck.get("key") == key:
            model.load_state_dict(ck["model"])
            opt.load_state_dict(ck["optimizer"])
            sched.load_state_dict(ck["scheduler"])
            gen.set_state(ck["generator"])
            start = int(ck["epoch"])
    if progress:
        what = f"resuming at epoch {start}/{trecipe.epochs}" if start else f"{trecipe.epochs} epochs"
        print(f"teacher {tspec.name}: {what} (recipe {recipe.name}'s teacher_epochs; --epochs sets the "
              f"student's only), cached for sibling runs", file=sys.stderr)
    for ep in range(start + 1, trecipe.epochs + 1):
        fitting.train_epoch(model, opt, sched, trecipe, train, image_shape=ds.image_shape, gen=gen, teacher=None,
                     desc=f"teacher {tspec.name} {ep}/{trecipe.epochs}", progress=progress)
        state = {"key": key, "epoch": ep, "model": model.state_dict(), "optimizer": opt.state_dict(),
                 "scheduler": sched.state_dict(), "generator": gen.get_state()}
        _atomic_write_bytes(partial, lambda p: torch.save(state, p))
    _, val_acc = evaluate(model, Split(ds.x_val, ds.y_val, device))
    _atomic_write_bytes(path, lambda p: torch.save({"key": key, "model": model.state_dict(), "val_acc": val_acc}, p))
    shared.parent.mkdir(exist_ok=True)
    _atomic_write_bytes(shared, lambda p: shutil.copyfile(path, p))
    partial.unlink(missing_ok=True)
    return model.eval(), val_acc
