"""Training recipes: the thesis's set-up and a stronger default.

`thesis` reproduces the study (Keras RMSprop lr 1e-3, batch 32, 10 epochs, constant rate).
`strong` (the default): Adam 2e-3 with 1 warm-up epoch and a cosine decay, batch 128, 100 epochs,
latent weights clipped to [-1, 1], random +-1 px shifts, distillation (alpha 0.7, T 4) from a float
teacher twice as wide (BN on every layer, same shifts, 30 epochs, cached as teacher.pt).

The teacher keeps its `teacher_epochs` whatever `--epochs` says (that sets the student's): so
`EPOCHS=1` still trains a 30-epoch teacher once, and every student of these widths (a sweep's
variants, a later longer run) reuses that cached teacher instead of each scaling its own; the
progress output says so. The teacher is checkpointed every epoch and resumes with `--resume`
(train.teacher).

What each ingredient bought (one earlier 15-epoch ablation): docs/results/mnist-accuracy.md.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace


class RecipeError(ValueError):
    """Unknown recipe or bad recipe field."""


@dataclass(frozen=True)
class Recipe:
    name: str
    optimizer: str = "adam"            # "rmsprop" (Keras defaults: rho 0.9, eps 1e-7), "adam", "adamw"
    lr: float = 1e-3
    batch_size: int = 128
    epochs: int = 10
    schedule: str = "constant"         # "constant" or "cosine" (per step, to 0 at the last step)
    warmup_epochs: float = 0.0         # linear warm-up (cosine schedule only)
    weight_decay: float = 0.0          # applied to non-binary weights only (not BN, not latent +-1 weights)
    label_smoothing: float = 0.0
    shift_px: int = 0                  # random image shifts of up to +-shift_px pixels (images only)
    latent_clip: float | None = 1.0    # clamp binary layers' latent weights to [-c, c] after each step
    distill_alpha: float = 0.0         # weight of the distillation loss from a float teacher (0: off)
    distill_temperature: float = 4.0
    teacher_epochs: int = 0            # epochs of the float teacher (same widths, BN on every layer)
    teacher_width_mult: int = 1        # teacher hidden widths = student widths x this

    def __post_init__(self):
        if self.optimizer not in ("rmsprop", "adam", "adamw"):
            raise RecipeError(f"recipe {self.name}: optimizer {self.optimizer!r}; expected rmsprop, adam or adamw")
        if self.schedule not in ("constant", "cosine"):
            raise RecipeError(f"recipe {self.name}: schedule {self.schedule!r}; expected constant or cosine")
        if self.lr <= 0 or self.batch_size < 1 or self.epochs < 1:
            raise RecipeError(f"recipe {self.name}: lr, batch_size and epochs must be positive")
        if not 0.0 <= self.distill_alpha <= 1.0:
            raise RecipeError(f"recipe {self.name}: distill_alpha must be in [0, 1]")
        if self.distill_alpha > 0 and self.teacher_epochs < 1:
            raise RecipeError(f"recipe {self.name}: distillation needs teacher_epochs >= 1")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Recipe":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def with_epochs(self, epochs: int | None) -> "Recipe":
        return self if epochs is None else replace(self, epochs=int(epochs))


RECIPES: dict[str, Recipe] = {
    "thesis": Recipe("thesis", optimizer="rmsprop", lr=1e-3, batch_size=32, epochs=10, schedule="constant"),
    "strong": Recipe("strong", optimizer="adam", lr=2e-3, batch_size=128, epochs=100, schedule="cosine",
                     warmup_epochs=1.0, label_smoothing=0.0, shift_px=1, latent_clip=1.0,
                     distill_alpha=0.7, distill_temperature=4.0, teacher_epochs=30, teacher_width_mult=2),
}
DEFAULT_RECIPE = "strong"


def get_recipe(recipe: str | Recipe) -> Recipe:
    if isinstance(recipe, Recipe):
        return recipe
    if recipe not in RECIPES:
        raise RecipeError(f"unknown recipe {recipe!r}; expected one of {', '.join(RECIPES)}")
    return RECIPES[recipe]
