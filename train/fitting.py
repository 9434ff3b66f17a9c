"""One epoch of training and an evaluation: data on the device, augmentation, losses, optimizer
and schedule, and the forward a training step runs (the fast path for binary models). The run
around them (config, resume, checkpoints, metrics) is train.trainer's."""
from __future__ import annotations

import math
import random
import sys

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from core.labels import labels_from_outputs
from train.models import ResBinMLP
from train.recipes import Recipe
from train.run_state import TrainError

__all__ = ["Split", "seed_all", "random_shift", "evaluate", "make_optimizer", "make_scheduler",
           "train_epoch", "training_forward", "TRAINERS"]


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ---- data on the device -----------------------------------------------------------------------

class Split:
    def __init__(self, x: np.ndarray, y: np.ndarray, device):
        self.x = torch.from_numpy(np.ascontiguousarray(x)).to(device)  # uint8 stays uint8
        self.y = torch.from_numpy(np.ascontiguousarray(y)).long().to(device)

    def __len__(self):
        return len(self.y)


def random_shift(x: torch.Tensor, image_shape, max_px: int, gen: torch.Generator) -> torch.Tensor:
    """Shift each flattened (H, W, C) uint8 image by up to +-max_px pixels (zero fill): image b is
    the H x W window at offset (d0[b], d1[b]) of the zero-padded image, d = randint(0, 2 max_px + 1,
    (2, n)) from `gen`.

    Written by hand because torchvision is not a dependency: padding, then ONE gather of flat
    indices (window position + per-image offset); 2.5x faster than indexing rows and columns.
    """
    h, w, c = image_shape
    n, p = x.shape[0], max_px
    img = F.pad(x.reshape(n, h, w, c).permute(0, 3, 1, 2), (p, p, p, p)).permute(0, 2, 3, 1).reshape(n, -1)
    d = torch.randint(0, 2 * p + 1, (2, n), generator=gen).to(x.device)
    wp = w + 2 * p  # the padded row length
    rows, cols, chans = (torch.arange(k, device=x.device) for k in (h, w, c))
    window = ((rows[:, None, None] * wp + cols[None, :, None]) * c + chans).reshape(1, -1)
    return img.gather(1, window + ((d[0] * wp + d[1]) * c)[:, None])


def _loss_fn(n_outputs: int, label_smoothing: float):
    if n_outputs == 1:
        def bce(logits, y):
            t = y.float()
            if label_smoothing:
                t = t * (1 - label_smoothing) + 0.5 * label_smoothing
            return F.binary_cross_entropy_with_logits(logits[:, 0], t)
        return bce
    return lambda logits, y: F.cross_entropy(logits, y, label_smoothing=label_smoothing)


def _n_correct(logits, y) -> int:
    pred = labels_from_outputs(logits.detach().cpu().numpy())
    return int((pred == y.cpu().numpy()).sum())


def _distill_loss(student, teacher, temperature: float):
    t = temperature
    if student.shape[1] == 1:
        return F.binary_cross_entropy_with_logits(student[:, 0] / t, torch.sigmoid(teacher[:, 0] / t)) * t * t
    return F.kl_div(F.log_softmax(student / t, 1), F.log_softmax(teacher / t, 1), log_target=True,
                    reduction="batchmean") * t * t


@torch.no_grad()
def evaluate(model, split: Split, batch_size: int = 2000) -> tuple[float, float]:
    """(loss, accuracy) of `model` on a split, eval mode; the loss is without label smoothing."""
    was = model.training
    model.eval()
    loss_fn = _loss_fn(model.n_outputs, 0.0)
    total, correct = 0.0, 0
    for i in range(0, len(split), batch_size):
        xb, yb = split.x[i:i + batch_size].float(), split.y[i:i + batch_size]
        logits = model(xb)
        total += float(loss_fn(logits, yb)) * len(yb)
        correct += _n_correct(logits, yb)
    model.train(was)
    return total / max(1, len(split)), correct / max(1, len(split))


# ---- optimisation -----------------------------------------------------------------------------

def make_optimizer(model: ResBinMLP, recipe: Recipe):
    binary = {id(p) for lin in model.binary_linears() for p in [lin.weight]}
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        if id(p) in binary or p.ndim < 2:
            no_decay.append(p)  # latent +-1 weights, biases, BN, quantizer scales
        else:
            decay.append(p)
    groups = [{"params": decay, "weight_decay": recipe.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # foreach: one op per update term for all parameters (torch's CPU default is a loop per
    # parameter); bit-identical to the loop (tests/test_training.py), fewer ops for small models.
    if recipe.optimizer == "rmsprop":  # Keras RMSprop defaults (the thesis used Keras/Larq)
        return torch.optim.RMSprop(groups, lr=recipe.lr, alpha=0.9, eps=1e-7, foreach=True)
    if recipe.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=recipe.lr, foreach=True)
    return torch.optim.Adam(groups, lr=recipe.lr, foreach=True)


def make_scheduler(opt, recipe: Recipe, steps_per_epoch: int):
    total = max(1, recipe.epochs * steps_per_epoch)
    warm = int(recipe.warmup_epochs * steps_per_epoch)

    def factor(step: int) -> float:
        if recipe.schedule == "constant":
            return 1.0
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))
    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def train_epoch(model, opt, sched, recipe, data: Split, *, image_shape, gen, teacher, desc, progress,
                 forward=None):
    model.train()
    forward = forward or model
    n = len(data)
    perm = torch.randperm(n, generator=gen).to(data.x.device)
    loss_fn = _loss_fn(model.n_outputs, recipe.label_smoothing)
    bs = recipe.batch_size
    total_loss, correct, seen = 0.0, 0, 0
    bar = tqdm(range(0, n, bs), desc=desc, leave=False, disable=not progress, unit="batch", file=sys.stderr)
    for i in bar:
        idx = perm[i:i + bs]
        xb, yb = data.x[idx], data.y[idx]
        if recipe.shift_px and image_shape is not None:
            xb = random_shift(xb, image_shape, recipe.shift_px, gen)
        xb = xb.float()
        logits = forward(xb)
        loss = loss_fn(logits, yb)
        if teacher is not None:
            with torch.no_grad():
                t_logits = teacher(xb)
            a = recipe.distill_alpha
            loss = (1 - a) * loss + a * _distill_loss(logits, t_logits, recipe.distill_temperature)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if recipe.latent_clip is not None:
            model.clip_latent_weights(recipe.latent_clip)
        total_loss += loss.item() * len(yb)
        correct += _n_correct(logits.detach(), yb)
        seen += len(yb)
        if progress:
            bar.set_postfix(loss=f"{total_loss / seen:.4f}", acc=f"{correct / seen:.4f}", refresh=False)
    bar.close()
    return total_loss / seen, correct / seen


TRAINERS = ("fast", "brevitas")


def training_forward(model: ResBinMLP, trainer: str = "fast"):
    """The callable a training step runs: `FastPath(model)` for binary models with trainer "fast"
    (same outputs, gradients and quantizer statistics as `model`), else the model itself."""
    if trainer not in TRAINERS:
        raise TrainError(f"unknown trainer {trainer!r}; expected one of {', '.join(TRAINERS)}")
    if trainer == "fast" and model.binary:
        from train.fast_model import FastPath
        return FastPath(model)
    return model
