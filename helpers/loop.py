"""The training step, read top to bottom: loss, optimizer and its two parameter groups, Lookahead, EMA, the
whitening-bias toggle, the image size of each epoch, one epoch, then prediction and evaluation (plain
single-view accuracy, test-time augmentation beside it), and the warm-up that runs each graph once before
the clock starts (torch.compile's, cuDNN's).

Nothing here knows about run folders, checkpoints or the command line (helpers/run.py and
helpers/checkpoint.py do): every function takes a model, a loader and a Recipe. The lr schedule is
helpers/schedule.py's, handed to an epoch as a function of the step.
"""
from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from .loader import reflect_pad, resize
from .device import autocast
from .errors import UserError
from .muon import SGDMuon
from .recipes import Recipe, Settings
from .speed import IDLE, Stopwatch, synchronize


class NonFiniteLossError(UserError, RuntimeError):
    """The loss became NaN or infinite: a setting the user changes (a lower lr, fp32), so a UserError."""



def loss_fn(out, target, label_smoothing: float = 0.0):
    """Cross-entropy of the network's output, optionally label-smoothed (mix in the uniform target).

    The output may be logits (PyTorch's convention: a network ending in nn.Linear) or log-probabilities
    (a log_softmax head, like the original solution's). cross_entropy takes the log-softmax of what it is
    given, and the log-softmax of log-probabilities is themselves, so both train exactly alike. (nll_loss
    alone would train a logits network on -logit[y]: a loss that falls without bound, and a network that
    learns little, without a word.)
    """
    return F.cross_entropy(out, target, label_smoothing=label_smoothing)


def log_probs(out):
    """Log-probabilities from a network's output, logits or log-probabilities alike (see loss_fn)."""
    return out.float().log_softmax(dim=1)



def _progress(iterable, enabled, **kw):
    from tqdm import tqdm
    return tqdm(iterable, disable=not enabled, leave=False, dynamic_ncols=True, **kw)


def progress_default() -> bool:
    """Progress bars on a terminal or in a notebook, never in CI logs."""
    if os.environ.get("CI"):
        return False
    return sys.stderr.isatty() or "ipykernel" in sys.modules


def make_optimizer(model, recipe: Recipe):
    """SGD over two parameter groups: the weights, then the rest (BatchNorm parameters and biases).

    No weight decay on the rest: decaying them only adds noise; their lr can be scaled up (bias_lr_scale;
    airbench uses 64 for BatchNorm shifts). Each group's lr and the momentum are the schedule's, written in
    before every step (set_rates); the values given here are each group's peak lr, and momentum_max, the
    larger momentum, so that SGD's check that Nesterov has a momentum passes whenever the schedule gives it one.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    # with Muon (recipe.muon_lr > 0) the conv filters take its step, in a third group (helpers/muon.py)
    filters = [p for p in params if p.ndim == 4] if recipe.muon_lr else []
    decay = [p for p in params if p.ndim > 1 and (p.ndim != 4 or not filters)]
    no_decay = [p for p in params if p.ndim <= 1]
    groups = [dict(params=decay, weight_decay=recipe.weight_decay),
              dict(params=no_decay, weight_decay=0.0, lr=recipe.lr * recipe.bias_lr_scale)]
    if not filters:
        return torch.optim.SGD(groups, lr=recipe.lr, momentum=recipe.momentum_max, nesterov=recipe.nesterov)
    # Muon's lr follows the schedule's shape at its own peak (set_rates scales it by lr_scale); its momentum
    # is its own, constant, and Nesterov as in Muon
    groups.append(dict(params=filters, muon=True, lr=recipe.muon_lr, lr_scale=recipe.muon_lr / recipe.lr,
                       momentum=recipe.muon_momentum, nesterov=True, weight_decay=recipe.weight_decay,
                       ns_steps=recipe.muon_ns_steps, normalize=recipe.muon_normalize))
    return SGDMuon(groups, lr=recipe.lr, momentum=recipe.momentum_max, nesterov=recipe.nesterov)


def set_rates(optimizer, rates):
    """One step's (lr, bias_lr, momentum) (helpers.schedule.Rates) into make_optimizer's groups: the weights,
    the rest, and the conv filters under Muon when the recipe uses it (the weights' lr x its lr_scale; its
    momentum stays its own)."""
    lr, bias_lr, momentum = rates
    weights, rest, *muon = optimizer.param_groups
    weights["lr"], rest["lr"] = lr, bias_lr
    weights["momentum"] = rest["momentum"] = momentum
    for group in muon:
        group["lr"] = lr * group["lr_scale"]


class Lookahead:
    """airbench's lookahead: every `every` steps a slow copy of the weights (and BatchNorm
    statistics) moves toward the weights, and the weights jump back to it.

    The slow copy trails by decay = 0.95^every * (step / total)^3: nothing early on, when fast
    progress matters, and heavy averaging near the end, where it smooths out SGD's noise like a
    lower learning rate would. The last step leaves the weights equal to the slow copy.
    """

    def __init__(self, model, every: int, total_steps: int):
        self.every, self.total, self.step = every, total_steps, 0
        self.slow = {k: v.detach().clone() for k, v in model.state_dict().items() if v.is_floating_point()}

    @torch.no_grad()
    def update(self, model):
        self.step += 1
        last = self.step >= self.total
        if self.step % self.every and not last:
            return
        decay = 0.95 ** self.every * min(self.step / self.total, 1.0) ** 3 if self.step % self.every == 0 else 1.0
        state = model.state_dict()
        for k, slow in self.slow.items():
            slow.lerp_(state[k], 1 - decay)
            state[k].copy_(slow)

    def state_dict(self) -> dict:
        return dict(step=self.step, slow=self.slow)

    def load_state_dict(self, d: dict):
        self.step = d["step"]
        for k, v in d["slow"].items():
            self.slow[k].copy_(v)


def make_lookahead(model, recipe: Recipe, steps_per_epoch: int):
    return Lookahead(model, recipe.lookahead, recipe.epochs * steps_per_epoch) if recipe.lookahead else None


def set_whiten_bias(model, recipe: Recipe, epoch: int):
    """Train the whitening layer's bias only for the recipe's first whiten_bias_epochs epochs."""
    from .model import PatchWhitening

    trains = recipe.whiten_bias_epochs < 0 or epoch <= recipe.whiten_bias_epochs
    for m in model.modules():
        if isinstance(m, PatchWhitening) and m.conv.bias is not None:
            m.conv.bias.requires_grad_(trains)  # a parameter without a gradient: SGD leaves it alone


def image_size(recipe: Recipe, epoch: int, full: int) -> int:
    """The training images' height in epoch `epoch` (1-based) under progressive resizing: resize_start
    in epoch 1, growing evenly to `full` after resize_epochs epochs (rounded to even sizes)."""
    if not recipe.resize_start or epoch > recipe.resize_epochs or recipe.resize_start >= full:
        return full
    size = recipe.resize_start + (full - recipe.resize_start) * (epoch - 1) / recipe.resize_epochs
    return min(full, 2 * round(size / 2))


def image_sizes(recipe: Recipe, full: int) -> list[int]:
    """`image_size` of every epoch of the recipe, in order."""
    return [image_size(recipe, epoch, full) for epoch in range(1, recipe.epochs + 1)]


def make_ema(model, recipe: Recipe):
    """An exponential moving average of `model` (weights and BatchNorm buffers), or None."""
    if not recipe.ema:
        return None
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(recipe.ema), use_buffers=True)


@dataclass
class StepHooks:
    """How each step of an epoch runs besides the SGD step itself; every field is optional, and StepHooks()
    is plain fp32 SGD without a progress bar."""
    precision: str = "fp32"  # autocast to "bf16" or "fp16" (helpers.device.autocast), or "fp32"
    # fp16's GradScaler (helpers.device.make_scaler): the loss scaled so that small gradients survive, and a
    # step whose gradients overflowed skipped; a disabled one, or None, is plain SGD
    scaler: torch.amp.GradScaler | None = None
    lookahead: Lookahead | None = None  # updated after each step
    ema: torch.optim.swa_utils.AveragedModel | None = None  # make_ema's, updated after each step
    stopwatch: Stopwatch = IDLE  # times each phase of a step (benchmark --profile); the default does nothing
    progress: bool = False  # a progress bar


def train_one_epoch(model, loader, optimizer, schedule: Callable, recipe: Recipe, step: int = 0, epoch: int = 0,
                    hooks: StepHooks | None = None) -> dict:
    """One pass over `loader`. Before each SGD step the optimizer gets `schedule(step)`'s lr and momentum
    (helpers.schedule: a function of the step alone), `step` counting the optimizer steps taken before this
    epoch; `hooks` adds mixed precision, weight averaging, timing and a progress bar.

    Returns {"train_loss", "train_acc", "lr", "train_seconds"}.
    """
    hooks = hooks or StepHooks()
    scaler, stopwatch = hooks.scaler, hooks.stopwatch
    model.train()
    t0 = time.perf_counter()
    loss_sum = correct = seen = 0  # loss_sum and correct: tensors on the batches' device from the first batch on
    bar = _progress(loader, hooks.progress, desc=f"epoch {epoch}", total=len(loader))
    stopwatch.start()
    for i, (x, y) in enumerate(bar):   # the loader augments each batch as it is drawn
        stopwatch.lap("data")
        with autocast(x.device, hooks.precision):
            out = model(x)
        loss = loss_fn(out.float(), y, recipe.label_smoothing)
        stopwatch.lap("forward")
        optimizer.zero_grad(set_to_none=True)
        rates = schedule(step + i)  # a step fp16 skips still takes its place in the schedule
        set_rates(optimizer, rates)
        if scaler is not None and scaler.is_enabled():
            # fp16: scale the loss so small gradients survive; a step whose gradients
            # overflowed is skipped and the scale lowered
            scaler.scale(loss).backward()
            stopwatch.lap("backward")
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            stopwatch.lap("backward")
            optimizer.step()
        if hooks.lookahead is not None:
            hooks.lookahead.update(model)
        if hooks.ema is not None:
            hooks.ema.update_parameters(model)
        stopwatch.lap("optimizer")
        loss_sum += loss.detach() * len(y)
        correct += (out.argmax(1) == y).sum()
        seen += len(y)
        if i % 20 == 0 or i == len(loader) - 1:
            value = loss.item()  # one sync every 20 steps: cheap, and catches divergence early
            if not math.isfinite(value):
                raise NonFiniteLossError(f"loss became {value} at epoch {epoch}, step {i}")
            bar.set_postfix(loss=f"{value:.3f}", lr=f"{rates.lr:.4f}")
    return dict(train_loss=loss_sum.item() / seen, train_acc=correct.item() / seen,
                lr=rates.lr, train_seconds=time.perf_counter() - t0)


def tta_views(x: torch.Tensor, level: int) -> list[tuple[float, torch.Tensor]]:
    """(weight, batch) views of a normalized batch that test-time augmentation averages over.

    level 0: the image; 1: + its mirror; 2: + both of them shifted 1 px up-left and down-right
    (reflect padding), the shifted views sharing half the weight.
    """
    views = [(1.0, x)] if level == 0 else [(0.5, x), (0.5, x.flip(-1))]
    if level >= 2:
        h, w = x.shape[-2:]
        padded = reflect_pad(x, 1)                                  # (N, C, H+2, W+2)
        shifted = [padded[..., :h, :w], padded[..., 2:, 2:]]         # each (N, C, H, W)
        views = [(wt / 2, v) for wt, v in views] + [(0.125, v) for s in shifted for v in (s, s.flip(-1))]
    return views


@torch.no_grad()
def predict_views(model, loader, precision="fp32", tta=0):
    """One pass over `loader`: (plain, tta, labels) log-probabilities for every image, in order.

    plain: the image alone (single view), what "test accuracy" means throughout the project;
    tta: the views of `tta_views(level)` averaged in probability (None when tta is 0). Both come
    from the same forward passes: the plain view is the first of the TTA views.
    """
    model.eval()
    plain, combined, labels = [], [], []
    for x, y in loader:
        with autocast(x.device, precision):
            views = tta_views(x, int(tta))
            logs = torch.stack([log_probs(model(v)) for _, v in views])  # (V, N, classes)
        plain.append(logs[0])
        if tta:
            weights = torch.tensor([math.log(wt) for wt, _ in views], device=logs.device)[:, None, None]
            combined.append(torch.logsumexp(logs + weights, 0))
        labels.append(y)
    return torch.cat(plain), (torch.cat(combined) if tta else None), torch.cat(labels)


def predict(model, loader, precision="fp32", tta=0):
    """Log-probabilities for every image of `loader` (in order) and the labels.

    tta: test-time augmentation level (see tta_views); 0, the default, is the plain single view.
    """
    plain, combined, y = predict_views(model, loader, precision, tta)
    return (combined if tta else plain), y


def accuracy(log_probs, labels) -> float:
    return (log_probs.argmax(1) == labels).float().mean().item()


def evaluate(model, loader, precision="fp32", tta=0):
    """{"test_loss", "test_acc"}: plain single-view loss and accuracy over the whole loader; with
    tta > 0 also {"tta_loss", "tta_acc"}, the same images with test-time augmentation (never instead)."""
    plain, combined, y = predict_views(model, loader, precision, tta)
    stats = dict(test_loss=F.nll_loss(plain, y).item(), test_acc=accuracy(plain, y))
    if combined is not None:
        stats |= dict(tta_loss=F.nll_loss(combined, y).item(), tta_acc=accuracy(combined, y))
    return stats



def select_examples(model, loader, correct: bool, n: int = 25, precision="fp32", predictions=None):
    """`predictions`: (log_probs, labels) from `predict`, to reuse one pass over the test set."""
    log_probs, y = predictions if predictions is not None else predict(model, loader, precision)
    conf, pred = log_probs.exp().max(1)
    idx = ((pred == y) == correct).nonzero().flatten()
    idx = idx[conf[idx].argsort(descending=True)][:n]
    return dict(images=loader.images[idx].cpu(), true=y[idx].cpu(), pred=pred[idx].cpu(),
                confidence=conf[idx].cpu(), classes=loader.classes)



def warm_up(model, recipe: Recipe, settings: Settings, train_loader, test_loader) -> float:
    """Run every graph the run will need once, before its clock starts; returns the seconds it took.

    A device's first use of each shape is one-time work: torch.compile's compile, cuDNN's autotuning
    (helpers/device.py turns it on), CUDA's lazy kernel loading. Done here, it is reported apart instead
    of landing in the first epochs' train_seconds. The passes leave no trace, even when one fails: weights,
    BatchNorm statistics, which parameters train and the random state are restored, and no optimizer step
    is taken.
    """
    t0 = time.perf_counter()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [p.requires_grad for p in model.parameters()]
    rng = torch.get_rng_state()
    x, y = next(iter(train_loader))
    # the graphs depend on which parameters train and on the image size: a recipe that freezes the
    # whitening bias part-way (whiten_bias_epochs) or starts on smaller images (resize_start) needs
    # those graphs too, or they would be built inside that epoch's time
    full = x.shape[-2]
    try:
        for epoch in sorted({1, *range(1, recipe.resize_epochs + 1), recipe.epochs}):
            set_whiten_bias(model, recipe, epoch)
            model.train()
            with autocast(x.device, settings.precision):
                out = model(resize(x, image_size(recipe, epoch, full)))
            loss_fn(out.float(), y).backward()   # the forward and backward graphs
            model.zero_grad(set_to_none=True)
            evaluate(model, test_loader, settings.precision, recipe.tta)  # and the eval-mode ones
    finally:
        for p, trains in zip(model.parameters(), flags):
            p.requires_grad_(trains)
        model.load_state_dict(state)
        torch.set_rng_state(rng)
    synchronize(x.device)
    return time.perf_counter() - t0


class CompileFailed(RuntimeError):
    """torch.compile failed on a network that runs uncompiled; the network is back to uncompiled."""


def compile_model(model, recipe: Recipe, settings: Settings, train_loader, test_loader) -> float:
    """torch.compile `model` in place and compile it now (`warm_up`), so that the compile time is
    measured here (returned, in seconds) rather than hidden in the first epoch's.

    In place (`nn.Module.compile`) keeps the state_dict keys unchanged, so checkpoints load
    into compiled and uncompiled models alike.

    Compiling can fail where training would not: no C compiler, a Triton build without this GPU, an inductor
    bug, a forward() the compiler cannot trace. Then the model is put back as it was and warmed up uncompiled:
    a network that fails that way too raises its own error (it is the network, not the compiler); one that
    runs raises CompileFailed with the compiler's first line, and the caller trains it uncompiled.
    """
    t0 = time.perf_counter()
    try:
        model.compile(mode=settings.compile, dynamic=False)
        warm_up(model, recipe, settings, train_loader, test_loader)
    except Exception as e:
        model._compiled_call_impl = None  # what nn.Module.compile set: calls go to forward() again
        warm_up(model, recipe, settings, train_loader, test_loader)
        raise CompileFailed(f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0]}"[:300]) from e
    return time.perf_counter() - t0
