"""Named training recipes: the one hyperparameter table everything else defaults from.

A Recipe is the single config object that flows through training, the CLI, the
notebooks, the benchmark and every checkpoint (stored as a dict under "config").
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace

# "auto" resolves per device at the start of each run (helpers.device.resolve_precision);
# the others force autocast to that dtype ("fp16" adds a GradScaler)
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
# torch.compile: "auto" compiles on CUDA only (helpers.device.resolve_compile), "off" never,
# a mode name always
COMPILE_MODES = ("auto", "off", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
# fields a run stores resolved for its device ("auto" -> "bf16"): a stored "bf16" still is the
# recipe whose value is "auto"
RESOLVED_PER_DEVICE = ("precision", "compile")


@dataclass(frozen=True)
class Recipe:
    model: str = "seed"
    model_kwargs: dict = field(default_factory=dict)
    epochs: int = 20
    batch_size: int = 128
    # SGD + OneCycleLR, as the original. The original's lr values are not recorded:
    # max_lr 0.05 (peak at 30 % of training) is our choice.
    lr: float = 0.05
    # OneCycleLR moves momentum against the lr: momentum_max at the start and the end,
    # momentum at the lr peak (PyTorch's defaults, 0.85 / 0.95); equal values keep it constant
    momentum: float = 0.85
    momentum_max: float = 0.95
    nesterov: bool = False
    weight_decay: float = 5e-4
    bias_lr_scale: float = 1.0    # lr multiplier for the 1-d parameters (BatchNorm shifts/scales, biases)
    pct_start: float = 0.3
    anneal: str = "cos"           # OneCycleLR's shape: "cos", or "linear" (warmup then linear decay)
    label_smoothing: float = 0.0
    # augmentation, applied to whole batches: shift by up to `translate` px (reflect pad), mirror
    translate: int = 4
    flip: bool = True
    alternate_flip: bool = False  # mirror each image on alternate epochs instead of at random
    cutout: int = 0               # blank a random square of this size in each image (0: off)
    tta: int = 0                  # test-time augmentation: 0 off, 1 + mirror, 2 + mirror and 1 px shifts
    # weight averaging: per-step decay of an exponential moving average of the weights and
    # BatchNorm statistics (0: off); evaluation, checkpoints' analysis and plots use the average
    ema: float = 0.0
    # "auto": bf16 on Ampere+ GPUs and CPUs with native bf16, fp16 + GradScaler on older GPUs
    # (T4), fp32 elsewhere (helpers/device.py); resolved once per run and stored resolved
    precision: str = "auto"
    compile: str = "auto"         # torch.compile mode (COMPILE_MODES); resolved once per run
    channels_last: bool = True    # NHWC: about 1.3x faster convs on CPU, same math

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Recipe":
        known = {f.name for f in fields(cls)}
        if "momentum_max" not in d:
            # written before momentum_max existed, when the scheduler ignored `momentum` and
            # always cycled 0.85 <-> 0.95: record what those runs really used
            d = {**d, "momentum": 0.85}
        if "compile" not in d:
            d = {**d, "compile": "off"}  # written before torch.compile was an option: never compiled
        return cls(**{k: v for k, v in d.items() if k in known})

    def override(self, **changes) -> "Recipe":
        """A copy with some fields changed; None values mean 'keep the recipe's'."""
        changes = {k: v for k, v in changes.items() if v is not None}
        bad = set(changes) - {f.name for f in fields(self)}
        if bad:
            raise ValueError(f"unknown recipe field(s) {sorted(bad)}; known: {[f.name for f in fields(self)]}")
        return replace(self, **changes)

    def validate(self) -> "Recipe":
        from .model import list_models

        problems = [f"{f.name} must be {_KIND[f.type]}, got {getattr(self, f.name)!r}"
                    for f in fields(self) if not _has_type(getattr(self, f.name), f.type)]
        if problems:  # wrong types would only fail later, deep inside the scheduler or a model
            raise ValueError("invalid recipe: " + "; ".join(problems))
        if self.model not in list_models():
            problems.append(f"unknown model {self.model!r} (known: {', '.join(list_models())})")
        if self.epochs < 1:
            problems.append(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            problems.append(f"batch_size must be >= 1, got {self.batch_size}")
        if not self.lr > 0:
            problems.append(f"lr must be > 0, got {self.lr}")
        if not 0 <= self.momentum <= self.momentum_max < 1:
            problems.append(f"momentum must satisfy 0 <= momentum <= momentum_max < 1, "
                            f"got {self.momentum} and {self.momentum_max}")
        if not self.bias_lr_scale > 0:
            problems.append(f"bias_lr_scale must be > 0, got {self.bias_lr_scale}")
        if not 0 <= self.label_smoothing < 1:
            problems.append(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.translate < 0:
            problems.append(f"translate must be >= 0 pixels, got {self.translate}")
        if not 0 <= self.cutout <= 32:
            problems.append(f"cutout must be a square size in 0..32 pixels, got {self.cutout}")
        if self.tta not in (0, 1, 2):
            problems.append(f"tta must be 0 (off), 1 (mirror) or 2 (mirror + shifts), got {self.tta!r}")
        if not 0 <= self.ema < 1:
            problems.append(f"ema must be a per-step decay in [0, 1) (0: off), got {self.ema}")
        if self.anneal not in ("cos", "linear"):
            problems.append(f"anneal must be 'cos' or 'linear', got {self.anneal!r}")
        if self.precision not in PRECISIONS:
            problems.append(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.compile not in COMPILE_MODES:
            problems.append(f"compile must be one of {', '.join(COMPILE_MODES)}, got {self.compile!r}")
        if problems:
            raise ValueError("invalid recipe: " + "; ".join(problems))
        return self


_KIND = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string",
         "dict": "a dict of model arguments"}


def _has_type(value, kind: str) -> bool:
    # annotations are strings here (from __future__ import annotations); bool is not a number
    if kind == "float":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, {"int": int, "bool": bool, "str": str, "dict": dict}[kind]) and \
        not (kind == "int" and isinstance(value, bool))


# few epochs on a CPU: small whitened GELU net, big batches, short warmup then linear decay,
# label smoothing, alternating flip, mirror test-time augmentation
# (measured on the JPEG CIFAR-10 dev split: see README, python -m helpers.benchmark).
# GELU instead of ReLU costs ~10 % per epoch here but is worth ~0.6 points at 3 epochs (3 seeds),
# which is what lets 3 epochs instead of 4 pass 80 %
FAST = Recipe(model="fast", model_kwargs={"act": "gelu"}, epochs=3, batch_size=256, lr=0.4, nesterov=True,
              weight_decay=5e-4, pct_start=0.2, anneal="linear", label_smoothing=0.2, translate=2,
              alternate_flip=True, tta=1)

RECIPES = {
    # the original solution: seed model, nll_loss, SGD + OneCycleLR, 20 epochs, batch 128
    "seed": Recipe(),
    "fast": FAST,
    # the fast recipe for 40 epochs on the wider net, with mirror + shift test-time augmentation;
    # ReLU: GELU's early lead is gone by epoch 40 (90.48 against 90.60 %) and ReLU is faster here
    "long": FAST.override(model="wide", model_kwargs={}, epochs=40, tta=2),
}


def get_recipe(name: str, **overrides) -> Recipe:
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; known recipes: {', '.join(sorted(RECIPES))}")
    return RECIPES[name].override(**overrides).validate()
