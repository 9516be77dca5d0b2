"""Training loop: train_one_epoch / evaluate, a Trainer with checkpoints, Trial and Record.

    python -m helpers.train --model seed --data folder --data-dir DIR --epochs 20 --out runs/seed

or from Python (returns the Record, so notebooks and tests can use the numbers):

    record = train(recipe="seed", data="synthetic", epochs=1)

Checkpoints are written atomically at the end of every epoch, so an interrupted run
loses at most the epoch in progress; `resume=True` continues it and, with the same
seed, ends with the same history as a run that was never interrupted.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
import time
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch
import torch.nn.functional as F

from .data import SOURCES, Loader, channel_stats, load_splits, reflect_pad
from .device import (DEVICE_HELP, autocast, configure_backends, make_scaler, pick_device, reset_peak_memory,
                     resolve_channels_last, resolve_compile, resolve_precision)
from .constraints import check
from .errors import UserError
from .model import count_params
from .rundir import RunLock, atomic_write, check_writable
from .registry import build_model, file_source, keep_copy, model_identity, model_problem, rebuild_spec, spec_name
from .recipes import COMPILE_MODES, PRECISIONS, RECIPES, RESOLVED_PER_DEVICE, Recipe, get_recipe

CHECKPOINT = "checkpoint.pt"
PREV_CHECKPOINT = "checkpoint.prev.pt"  # the epoch before CHECKPOINT's, kept in case that one is damaged
HISTORY = "history.json"

# What a resumed run must share with the run that wrote the checkpoint, besides recipe and seed:
# config["data_identity"] key -> how a refusal names it. Steps per epoch decide OneCycleLR's
# length; the rest decide which images it trains and is evaluated on.
DATA_IDENTITY = {
    "source": "data source (--data / data=)",
    "folder": "data folder (--data-dir / data_dir=, resolved)",
    "limit": "images per split (--limit / limit=)",
    "train_images": "training images",
    "test_images": "test images",
    "train_fingerprint": "training images' contents (fingerprint)",
    "test_fingerprint": "test images' contents (fingerprint)",
    "steps_per_epoch": "steps per epoch",
}
# recipe fields that may change on resume: torch.compile and the memory layout change speed, not what
# is trained; a precision the run asked as "auto" may change too (a Colab reconnect can land on
# another GPU type, or on a CPU): resume_differences
RESUME_MAY_CHANGE = {"compile", "channels_last"}


class NonFiniteLossError(RuntimeError):
    pass


class CheckpointError(UserError):
    """A checkpoint that cannot be read or resumed; the message names the file and what to do."""


# --------------------------------------------------------------------------- small pieces

def loss_fn(log_probs, target, label_smoothing: float = 0.0):
    """nll_loss on log-softmax outputs, optionally label-smoothed (mix in the uniform target)."""
    nll = F.nll_loss(log_probs, target)
    if label_smoothing:
        return (1 - label_smoothing) * nll - label_smoothing * log_probs.mean(dim=1).mean()
    return nll


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MB (NaN where unknown, e.g. Windows)."""
    try:
        import resource
    except ImportError:
        return float("nan")
    # ru_maxrss is KiB on Linux, bytes on macOS
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024 * 1024 if sys.platform == "darwin" else 1024)


def _progress(iterable, enabled, **kw):
    from tqdm import tqdm
    return tqdm(iterable, disable=not enabled, leave=False, dynamic_ncols=True, **kw)


def progress_default() -> bool:
    """Progress bars on a terminal or in a notebook, never in CI logs."""
    if os.environ.get("CI"):
        return False
    return sys.stderr.isatty() or "ipykernel" in sys.modules


def make_optimizer(model, recipe: Recipe):
    # no weight decay on BatchNorm parameters and biases: decaying them only adds noise;
    # their lr can be scaled up (bias_lr_scale; airbench uses 64 for BatchNorm shifts)
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    return torch.optim.SGD([dict(params=decay, weight_decay=recipe.weight_decay),
                            dict(params=no_decay, weight_decay=0.0, lr=recipe.lr * recipe.bias_lr_scale)],
                           lr=recipe.lr, momentum=recipe.momentum_max, nesterov=recipe.nesterov)


def make_scheduler(optimizer, recipe: Recipe, steps_per_epoch: int):
    pct_start = recipe.pct_start
    if pct_start * recipe.epochs * steps_per_epoch == 1:
        # a warm-up of exactly one step is a zero-length phase to OneCycleLR (ZeroDivisionError):
        # a hair longer gives the same rates, the peak one step in
        pct_start *= 1 + 1e-6
    return torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=[g["lr"] for g in optimizer.param_groups], epochs=recipe.epochs,
        steps_per_epoch=steps_per_epoch, pct_start=pct_start, anneal_strategy=recipe.anneal,
        base_momentum=recipe.momentum, max_momentum=recipe.momentum_max, div_factor=1 / recipe.lr_start,
        final_div_factor=recipe.lr_start / recipe.lr_end)


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


def lr_schedule(recipe: Recipe, steps_per_epoch: int) -> dict:
    """The learning rate of both parameter groups and the momentum at every step of a run, read off
    the recipe's own optimizer and scheduler driven on a stand-in model (one weight, one bias: the
    two groups a real model has). What plots.plot_schedule draws before training."""
    probe = torch.nn.Linear(1, 1)
    optimizer = make_optimizer(probe, recipe)
    scheduler = make_scheduler(optimizer, recipe, steps_per_epoch)
    seen = dict(lr=[], bias_lr=[], momentum=[])
    for _ in range(recipe.epochs * steps_per_epoch):
        weights, others = optimizer.param_groups
        seen["lr"].append(weights["lr"])
        seen["bias_lr"].append(others["lr"])
        seen["momentum"].append(weights["momentum"])
        optimizer.step()  # no gradients: nothing moves, but the scheduler sees a step taken
        scheduler.step()
    return dict(seen, steps_per_epoch=steps_per_epoch)


def recipe_table(trainer) -> str:
    """The training recipe as a run will use it, one line per ingredient, read from the trainer's
    own optimizer, loader and recipe (so it cannot disagree with what trains)."""
    r, groups, steps = trainer.recipe, trainer.optimizer.param_groups, len(trainer.train_loader)

    def group(g):
        return f"{len(g['params'])} tensors, {sum(p.numel() for p in g['params']):,} values"

    momentum = (f"{r.momentum:g}, constant" if r.momentum == r.momentum_max else
                f"{r.momentum_max:g} -> {r.momentum:g} at the lr peak -> {r.momentum_max:g} (against the lr)")
    flips = "mirror each image on alternate epochs" if r.alternate_flip else "mirror a random half"
    augment = [f"shift up to {r.translate} px (reflect padding)" if r.translate else "",
               flips if r.flip else "", f"cutout {r.cutout}x{r.cutout}" if r.cutout else ""]
    averaging = [f"EMA of the weights, decay {r.ema:g} per step (evaluated)" if r.ema else "",
                 f"lookahead every {r.lookahead} steps (trails more as training ends)" if r.lookahead else ""]
    whitening = any(hasattr(m, "init_whitening") for m in trainer.model.modules())
    rows = [
        ("optimizer", f"SGD with {'Nesterov ' if r.nesterov else ''}momentum, {len(groups)} parameter groups"),
        ("  weights", f"conv and linear weights ({group(groups[0])}): peak lr {r.lr:g}, "
                      f"weight decay {r.weight_decay:g}"),
        ("  the rest", f"BatchNorm and biases ({group(groups[1])}): peak lr {r.lr * r.bias_lr_scale:g} "
                       f"(x{r.bias_lr_scale:g}), no weight decay"),
        ("lr schedule", f"one cycle: {r.lr * r.lr_start:g} -> {r.lr:g} at {r.pct_start:.0%} of the steps -> "
                        f"{r.lr * r.lr_end:g} ({'cosine' if r.anneal == 'cos' else 'linear'}), stepped every batch"),
        ("momentum", momentum),
        ("loss", "nll_loss of the log-softmax output" +
         (f", label smoothing {r.label_smoothing:g}" if r.label_smoothing else ", no label smoothing")),
        ("batches", f"{r.batch_size} images, {steps} steps per epoch (the last partial batch dropped), "
                    f"{r.epochs} epoch{'s' * (r.epochs != 1)} = {r.epochs * steps} steps"),
        ("augmentation", ", ".join(a for a in augment if a) or "none"),
        ("weight averaging", "; ".join(a for a in averaging if a) or "none"),
        *([("whitening layer", "frozen filters; bias trains " + ("every epoch" if r.whiten_bias_epochs < 0 else
                                                                 f"for the first {r.whiten_bias_epochs} epochs"))]
          if whitening else []),
        ("test accuracy", "plain: one view per image" + {
            0: "", 1: "; TTA beside it: + the mirror (2 views)",
            2: "; TTA beside it: + mirror and 1 px shifts (6 views)"}[r.tta]),
        ("precision", f"{r.precision}{' autocast' if r.precision in ('bf16', 'fp16') else ''}"
                      f"{' + GradScaler' if r.precision == 'fp16' else ''} on {trainer.device}; torch.compile "
                      f"{r.compile}; {'channels_last' if r.channels_last else 'NCHW'} memory layout"),
    ]
    return "\n".join(f"{k:<18}{v}" for k, v in rows)


# --------------------------------------------------------------------------- one epoch

def make_ema(model, recipe: Recipe):
    """An exponential moving average of `model` (weights and BatchNorm buffers), or None."""
    if not recipe.ema:
        return None
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(recipe.ema), use_buffers=True)


def train_one_epoch(model, loader, optimizer, scheduler, recipe: Recipe, device, epoch=0, progress=False,
                    ema=None, scaler=None, lookahead=None):
    """One pass over `loader`, updating `ema` and `lookahead` (if given) after each step.

    `scaler`: a GradScaler for fp16 (helpers.device.make_scaler); a disabled one, or None, is plain SGD.

    Returns {"train_loss", "train_acc", "lr", "train_seconds"}.
    """
    model.train()
    t0 = time.perf_counter()
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen = 0
    bar = _progress(loader, progress, desc=f"epoch {epoch}", total=len(loader))
    for step, (x, y) in enumerate(bar):
        with autocast(device, recipe.precision):
            out = model(x)
        loss = loss_fn(out.float(), y, recipe.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        lr = optimizer.param_groups[0]["lr"]  # the rate this step used (reported per epoch)
        if scaler is not None and scaler.is_enabled():
            # fp16: scale the loss so small gradients survive; a step whose gradients
            # overflowed is skipped and the scale lowered (the schedule still advances)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        scheduler.step()
        if lookahead is not None:
            lookahead.update(model)
        if ema is not None:
            ema.update_parameters(model)
        loss_sum += loss.detach() * len(y)
        correct += (out.argmax(1) == y).sum()
        seen += len(y)
        if step % 20 == 0 or step == len(loader) - 1:
            value = loss.item()  # one sync every 20 steps: cheap, and catches divergence early
            if not math.isfinite(value):
                raise NonFiniteLossError(f"loss became {value} at epoch {epoch}, step {step}")
            bar.set_postfix(loss=f"{value:.3f}", lr=f"{lr:.4f}")
    return dict(train_loss=loss_sum.item() / seen, train_acc=correct.item() / seen,
                lr=lr, train_seconds=time.perf_counter() - t0)


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
            logs = torch.stack([model(v).float() for _, v in views])  # (V, N, classes)
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


# --------------------------------------------------------------------------- trainer

class Trainer:
    """Runs epochs, records history, writes a checkpoint after each epoch, resumes."""

    def __init__(self, model, recipe: Recipe, train_loader, test_loader, device, out_dir=None,
                 seed=0, progress=None, run_info=None, log=print, lock=None):
        self.model, self.recipe, self.device, self.seed = model, recipe, device, seed
        self.train_loader, self.test_loader = train_loader, test_loader
        self.out_dir = Path(out_dir) if out_dir else None
        # one writer per run folder (helpers/rundir.py): taken by Trial.setup, or here in restore()
        self.lock = lock or (RunLock(self.out_dir) if self.out_dir else None)
        self.progress = progress_default() if progress is None else progress
        self.run_info = run_info or {}
        self.log = log
        self.optimizer = make_optimizer(model, recipe)
        self.scheduler = make_scheduler(self.optimizer, recipe, len(train_loader))
        self.ema = make_ema(model, recipe)
        self.lookahead = make_lookahead(model, recipe, len(train_loader))
        self.scaler = make_scaler(device, recipe.precision)
        self.history: list[dict] = []

    @property
    def eval_model(self):
        """The weights that are evaluated: the moving average when the recipe keeps one."""
        return self.ema.module if self.ema is not None else self.model

    @property
    def epoch(self) -> int:
        """Epochs finished (and saved) so far."""
        return len(self.history)

    @property
    def config(self) -> dict:
        """What the run is: recipe, seed, data, model identity ... (stored in every checkpoint)."""
        return dict(recipe=self.recipe.to_dict(), seed=self.seed, **self.run_info)

    # ---- checkpoints
    def checkpoint(self) -> dict:
        return dict(model=self.model.state_dict(), optimizer=self.optimizer.state_dict(),
                    scheduler=self.scheduler.state_dict(), epoch=self.epoch, history=self.history,
                    ema=self.ema.module.state_dict() if self.ema is not None else None,
                    lookahead=self.lookahead.state_dict() if self.lookahead is not None else None,
                    scaler=self.scaler.state_dict() if self.scaler.is_enabled() else None,
                    config=self.config)

    def save(self):
        """checkpoint.pt (the previous one becomes checkpoint.prev.pt), then history.json."""
        if not self.out_dir:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        ckpt = self.checkpoint()
        # write the new file completely first (under a temporary name of this process's own); then two
        # renames, each atomic: a crash at any point leaves a readable checkpoint.pt or
        # checkpoint.prev.pt (fit resumes from either)
        path = self.out_dir / CHECKPOINT
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as f:
                torch.save(ckpt, f)
            if path.exists():
                os.replace(path, self.out_dir / PREV_CHECKPOINT)
            os.replace(tmp, path)
            write_history(self.out_dir, ckpt["config"], self.history)
        except OSError as e:  # a full or read-only disk: one line, and the last good epoch is still there
            tmp.unlink(missing_ok=True)
            kept = (f"the previous checkpoint (epoch {self.epoch - 1}) is intact" if self.epoch > 1
                    else "no earlier epoch was saved")
            raise CheckpointError(f"could not write {path} ({e.strerror or e}): epoch {self.epoch} is lost and "
                                  f"{kept}; free some space (or make the folder writable) and resume "
                                  "(--resume / run the notebook again)") from None

    def load(self, path):
        """Restore a checkpoint's state, after checking it was written by this very run.

        Refuses (CheckpointError, nothing loaded or written) when the recipe, seed, data or
        steps per epoch differ, naming each difference.
        """
        ckpt = read_checkpoint(path, self.device)
        diffs = resume_differences(ckpt["config"], self.config)
        if self.recipe.tta and ckpt["history"] and "tta_acc" not in ckpt["history"][-1]:
            diffs.append("its history predates plain accuracy (its test_acc includes test-time augmentation)")
        total = ckpt["scheduler"].get("total_steps") if isinstance(ckpt.get("scheduler"), dict) else None
        if not diffs and total is not None and total != self.scheduler.total_steps:
            # what the identity cannot show for checkpoints written before it was recorded
            diffs.append(f"scheduler length: checkpoint {total} steps, now {self.scheduler.total_steps} "
                         f"({self.recipe.epochs} epochs x {len(self.train_loader)} steps)")
        if diffs:
            raise CheckpointError(f"cannot resume {path}: it was written with other settings: " + "; ".join(diffs)
                                  + ". Resume with the checkpoint's settings, or start a new run in another "
                                  "folder (--out / out_dir=)")
        before = ckpt["config"]["recipe"].get("precision")
        if before and before != self.recipe.precision:  # allowed only when asked as "auto" (resume_differences)
            self.log(f"note: epochs 1-{len(ckpt['history'])} trained in {before}; this device resolves precision "
                     f"'auto' to {self.recipe.precision}, so the run continues in {self.recipe.precision}")
        if "data_identity" not in ckpt["config"]:
            self.log(f"note: {path} predates data fingerprints: only its data source, folder, limit and "
                     "scheduler length could be checked")
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if self.ema is not None:
            self.ema.module.load_state_dict(ckpt["ema"])
            self.ema.n_averaged.fill_(1)  # > 0: the next update averages instead of copying
        if self.lookahead is not None:
            self.lookahead.load_state_dict(ckpt["lookahead"])
        if self.scaler.is_enabled() and ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])  # the loss scale it had reached: resume stays exact
        self.history = list(ckpt["history"])
        # the checkpoint is the source of truth: a crash between its write and history.json's
        # leaves history.json an epoch behind, repaired here
        sync_history(Path(path).parent, ckpt, self.log)
        self.log(f"resumed from {path} at epoch {self.epoch}")

    # ---- the epoch loop, in the pieces notebook 03 shows (fit runs them in the same order)
    def restore(self, resume=True) -> int:
        """Continue from the run folder's checkpoint if there is one; returns the epochs it holds (0: none).

        resume=False refuses to train over an existing checkpoint (FileExistsError).
        """
        if self.lock is not None:
            self.lock.acquire(self.log)  # before reading the checkpoint another run might be writing
        ckpt = self.out_dir / CHECKPOINT if self.out_dir else None
        prev = self.out_dir / PREV_CHECKPOINT if self.out_dir else None
        found = ckpt if ckpt and ckpt.exists() else prev if prev and prev.exists() else None
        if found:
            if not resume:
                raise FileExistsError(f"{found} already exists; pass resume=True (--resume) to continue "
                                      "that run, or choose another output folder")
            if found == prev:  # save() died between its two renames
                self.log(f"note: {ckpt} is missing; resuming from the previous epoch's {prev}")
            self.load(found)
        if self.epoch >= self.recipe.epochs and self.lock is not None:
            self.lock.release()  # nothing left to train: the folder is free
        return self.epoch

    def train_one_epoch(self, epoch: int) -> dict:
        """Train epoch `epoch` (1-based): its own seeds, so that dropout, batch order and augmentation
        depend only on (seed, epoch) and a resumed run repeats it exactly; the whitening bias
        schedule; then the SGD steps along the lr schedule (the module's train_one_epoch)."""
        torch.manual_seed(self.seed * 100_003 + epoch)
        self.train_loader.set_epoch(epoch, self.seed)
        set_whiten_bias(self.model, self.recipe, epoch)
        try:
            stats = train_one_epoch(self.model, self.train_loader, self.optimizer, self.scheduler, self.recipe,
                                    self.device, epoch, self.progress, self.ema, self.scaler, self.lookahead)
        except NonFiniteLossError as e:
            raise self._stopped(e) from None
        return dict(epoch=epoch, **stats)

    def evaluate(self) -> dict:
        """Test loss and plain single-view accuracy of the evaluated weights (the moving average when
        the recipe keeps one), and with the recipe's test-time augmentation tta_loss / tta_acc beside them."""
        t0 = time.perf_counter()
        stats = evaluate(self.eval_model, self.test_loader, self.recipe.precision, self.recipe.tta)
        return stats | dict(eval_seconds=time.perf_counter() - t0)

    def save_epoch(self, stats: dict) -> dict:
        """Keep a finished epoch: append it to the history, write checkpoint.pt (atomically) and
        history.json, log one line. A non-finite loss is never saved as an epoch."""
        if stats.get("epoch") != self.epoch + 1:
            raise ValueError(f"epoch {stats.get('epoch')} cannot follow epoch {self.epoch}: call restore() "
                             "first, then train the epochs in order")
        bad = next((k for k in ("train_loss", "test_loss") if not math.isfinite(stats[k])), None)
        if bad:
            raise self._stopped(NonFiniteLossError(f"{bad.replace('_', ' ')} became {stats[bad]} "
                                                   f"at epoch {stats['epoch']}"))
        stats = stats | dict(peak_rss_mb=peak_rss_mb())
        self.history.append(stats)
        try:
            self.save()
        except CheckpointError:
            self.history.pop()  # not saved, so not an epoch of this run
            raise
        if self.epoch == self.recipe.epochs and self.lock is not None:
            self.lock.release()  # the run is complete: the folder is free for analysis or another run
        tta = f" (TTA {stats['tta_acc']:.2%})" if "tta_acc" in stats else ""
        self.log(f"epoch {stats['epoch']:>3}/{self.recipe.epochs}  train loss {stats['train_loss']:.4f} "
                 f"acc {stats['train_acc']:.2%}  test loss {stats['test_loss']:.4f} acc {stats['test_acc']:.2%}{tta}"
                 f"  lr {stats['lr']:.4f}  {stats['train_seconds']:.0f}s")
        return stats

    def _stopped(self, error: NonFiniteLossError) -> NonFiniteLossError:
        ckpt = self.out_dir / CHECKPOINT if self.out_dir else None
        kept = f"the last good checkpoint ({ckpt}, epoch {self.epoch}) is kept" if ckpt and ckpt.exists() \
            else "no checkpoint was written"
        return NonFiniteLossError(f"{error}: training stopped; {kept}. Try a lower lr or fp32 precision.")

    def fit(self, resume=False, stop_after=None, on_epoch=None) -> list[dict]:
        """Train until recipe.epochs (or `stop_after` more epochs); returns the history.

        `on_epoch(stats)` runs after each epoch's checkpoint is written (e.g. to report to a
        sweep's pruner); an exception it raises stops the run with that epoch kept.
        """
        try:
            self.restore(resume)
            last = self.recipe.epochs if stop_after is None else min(self.recipe.epochs, self.epoch + stop_after)
            for epoch in range(self.epoch + 1, last + 1):
                stats = self.train_one_epoch(epoch)
                stats |= self.evaluate()
                stats = self.save_epoch(stats)
                if on_epoch is not None:
                    on_epoch(stats)
        finally:
            if self.lock is not None:
                self.lock.release()
        return self.history

    # ---- examples for plots
    def examples(self, correct: bool, n: int = 25):
        """Up to n test images the model got right (correct=True) or wrong, most confident first.

        Returns dict(images uint8 (n, 3, 32, 32), true, pred, confidence, classes).
        """
        return select_examples(self.eval_model, self.test_loader, correct, n, self.recipe.precision)


def select_examples(model, loader, correct: bool, n: int = 25, precision="fp32", predictions=None):
    """`predictions`: (log_probs, labels) from `predict`, to reuse one pass over the test set."""
    log_probs, y = predictions if predictions is not None else predict(model, loader, precision)
    conf, pred = log_probs.exp().max(1)
    idx = ((pred == y) == correct).nonzero().flatten()
    idx = idx[conf[idx].argsort(descending=True)][:n]
    return dict(images=loader.images[idx].cpu(), true=y[idx].cpu(), pred=pred[idx].cpu(),
                confidence=conf[idx].cpu(), classes=loader.classes)


def write_history(out_dir: Path, config: dict, history: list):
    atomic_write(Path(out_dir) / HISTORY, lambda f: f.write(json.dumps(
        dict(config=config, history=history), indent=1).encode()))


def sync_history(out_dir: Path, ckpt: dict, log=print):
    """Rewrite out_dir/history.json from the checkpoint when it says something else (or is missing)."""
    path = Path(out_dir) / HISTORY
    try:
        on_disk = json.loads(path.read_text())["history"]
    except (OSError, ValueError, KeyError, TypeError):
        on_disk = None
    if on_disk == ckpt["history"]:
        return
    try:
        write_history(out_dir, ckpt["config"], ckpt["history"])
    except OSError as e:  # a read-only folder: analysis still works from the checkpoint
        log(f"note: {path} differs from the checkpoint but cannot be rewritten ({e})")
        return
    had = "missing or unreadable" if on_disk is None else f"{len(on_disk)} epochs"
    log(f"note: {path} ({had}) rebuilt from the checkpoint ({len(ckpt['history'])} epochs)")


def read_checkpoint(path, device="cpu") -> dict:
    """A checkpoint dict, or one CheckpointError naming the file and what to do.

    Never falls back to weights_only=False (which runs arbitrary pickled code).
    """
    path = Path(path)
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
        missing = {"model", "optimizer", "scheduler", "history", "config"} - set(ckpt)
        if missing:
            raise KeyError(f"no {', '.join(sorted(missing))}")
    except Exception as e:  # truncated, overwritten, not a checkpoint: torch's messages vary
        raise CheckpointError(f"checkpoint {path} cannot be read ({type(e).__name__}: truncated or corrupt); "
                              + _prev_hint(path)) from None
    return ckpt


def _prev_hint(path: Path) -> str:
    prev = path.with_name(PREV_CHECKPOINT)
    if path.name != CHECKPOINT or not prev.exists():
        return "start the run again in a new folder (--out / out_dir=)"
    try:
        epoch = torch.load(prev, map_location="cpu", weights_only=True)["epoch"]
    except Exception:
        return f"the previous epoch's {prev} is damaged too: start the run again in a new folder"
    return (f"the previous epoch's checkpoint is intact (epoch {epoch}): to resume from it, "
            f"move it over the damaged one (mv {prev} {path}) and resume again")


def resume_differences(saved: dict, now: dict) -> list[str]:
    """What differs between a checkpoint's config and this run's: one phrase per setting."""
    diffs = []
    # from_dict fills fields added since the checkpoint was written with their defaults
    old, new = Recipe.from_dict(saved["recipe"]).to_dict(), now["recipe"]
    auto = {k for k, v in (now.get("requested") or {}).items() if v == "auto"}  # re-resolved on this device
    diffs += [f"recipe field {k}: checkpoint {old.get(k)!r}, now {v!r}" for k, v in new.items()
              if old.get(k) != v and k not in RESUME_MAY_CHANGE | auto]
    if saved.get("seed") != now.get("seed"):
        diffs.append(f"seed (--seed / seed=): checkpoint {saved.get('seed')}, now {now.get('seed')}")
    old_model, new_model = saved.get("model_identity"), now.get("model_identity")
    if old_model and new_model and old_model.get("sha1") != new_model.get("sha1"):
        diffs.append(f"model file {new_model.get('file') or old_model.get('file')}: changed since the checkpoint "
                     f"(SHA-1 {str(old_model.get('sha1'))[:12]} there, {str(new_model.get('sha1'))[:12]} now)")
    elif old_model and new_model and old_model["architecture"] != new_model["architecture"]:
        diffs.append("model architecture (its parameter names and shapes) differs from the checkpoint's")
    before, after = saved.get("data_identity"), now.get("data_identity")
    if after is None:  # a Trainer built by hand, without a Trial: nothing known about its data
        return diffs
    if before is None:  # written before the data identity existed: what it did record
        before = dict(source=saved.get("data"), limit=saved.get("limit"),
                      folder=str(Path(saved["data_dir"]).resolve()) if saved.get("data_dir") else None)
    diffs += [f"{label}: checkpoint {before[k]!r}, now {after.get(k)!r}" for k, label in DATA_IDENTITY.items()
              if k in before and before[k] != after.get(k)]
    return diffs


# --------------------------------------------------------------------------- trial / record

@dataclass
class Record:
    """A named run: its config and per-epoch history. Several records compare in plots."""
    name: str
    config: dict
    history: list = field(default_factory=list)

    def series(self, key: str) -> list:
        return [h[key] for h in self.history]

    @property
    def final_acc(self) -> float:
        """Plain single-view test accuracy after the last epoch."""
        return self.history[-1]["test_acc"] if self.history else float("nan")

    @property
    def final_tta_acc(self):
        """Test accuracy with the recipe's test-time augmentation after the last epoch (None without TTA)."""
        return self.history[-1].get("tta_acc") if self.history else None

    @property
    def best_acc(self) -> float:
        return max(self.series("test_acc"), default=float("nan"))

    def first_epoch_reaching(self, acc: float):
        """The first epoch whose plain test accuracy reaches `acc` (None if none does)."""
        return next((h["epoch"] for h in self.history if h["test_acc"] >= acc), None)

    def table(self) -> str:
        """The history as a text table, one row per epoch; test accuracy plain, TTA in its own column."""
        tta = bool(self.history) and all("tta_acc" in h for h in self.history)
        lines = [f"{'epoch':>5}{'train loss':>12}{'train acc':>11}{'test loss':>11}{'test acc':>10}"
                 + (f"{'TTA acc':>9}" if tta else "") + f"{'lr':>9}{'train s':>9}"]
        for h in self.history:
            lines.append(f"{h['epoch']:>5}{h['train_loss']:>12.4f}{h['train_acc']:>11.2%}{h['test_loss']:>11.4f}"
                         f"{h['test_acc']:>10.2%}" + (f"{h['tta_acc']:>9.2%}" if tta else "")
                         + f"{h['lr']:>9.4f}{h['train_seconds']:>9.1f}")
        reached = self.first_epoch_reaching(0.80)
        lines.append(f"final test accuracy (plain, single view) {self.final_acc:.2%}"
                     + (f"; with test-time augmentation {self.final_tta_acc:.2%}" if tta else "")
                     + (f"; 80 % first reached at epoch {reached}" if reached else "; 80 % not reached"))
        return "\n".join(lines)

    @classmethod
    def load(cls, path, name=None) -> "Record":
        """From a run folder (or its history.json)."""
        path = Path(path)
        path = path / HISTORY if path.is_dir() else path
        if not path.exists():
            raise FileNotFoundError(f"{path} not found: train first (notebook 03 or python -m helpers.train)")
        d = json.loads(path.read_text())
        return cls(name or path.parent.name, d["config"], d["history"])


class Trial:
    """One named run: builds data, model and Trainer from a recipe, runs it, returns a Record.

    `recipe`: a name from RECIPES or a Recipe; other recipe fields may follow as keyword
    overrides (epochs=5). `model`: None (the recipe's), a registered name, your own
    "FILE.py:NAME", or a Python callable returning an nn.Module. A model that breaks one of
    the assignment's rules is refused before any training (enforce_rules=False is for measuring
    what a rule costs). Every argument is a keyword.
    """

    def __init__(self, *, name="run", recipe="seed", model=None, data="synthetic", data_dir=None, limit=None,
                 device="auto", seed=0, out_dir=None, progress=None, threads=None, enforce_rules=True, **overrides):
        if data not in SOURCES:
            raise UserError(f"unknown data source {data!r}; choose one of {', '.join(SOURCES)}")
        if data == "folder" and not data_dir:
            raise UserError("data='folder' needs data_dir (--data-dir DIR on the command line): "
                             "a folder holding train/ and test/")
        if limit is not None and limit <= 0:
            raise UserError(f"limit must be a positive number of images per split, or None; got {limit}")
        self.name = name
        self.factory = model if callable(model) else None  # a Python callable cannot live in a Recipe: its name does
        self.recipe = recipe if isinstance(recipe, Recipe) else get_recipe(recipe)
        self.recipe = self.recipe.override(model=spec_name(model) if model is not None else None, **overrides)
        self.recipe = self.recipe.validate()
        self.data, self.data_dir, self.limit = data, data_dir, limit
        self.device_name, self.seed, self.out_dir, self.progress = device, seed, out_dir, progress
        self.threads, self.enforce_rules = threads, enforce_rules
        self.trainer: Trainer | None = None

    def setup(self) -> Trainer:
        if self.threads:
            torch.set_num_threads(self.threads)
        if self.out_dir:  # a file, a parent that is a file, a read-only disk: one line, before any work
            check_writable(self.out_dir, create=False)
        self.lock = None
        try:
            return self._setup()
        except BaseException:
            if self.lock is not None:
                self.lock.release()  # nothing will train: the folder is free again
            raise

    def _setup(self) -> Trainer:
        device = pick_device(self.device_name)
        configure_backends(device)
        reset_peak_memory(device)  # the benchmark's peak_device_mb covers this run alone
        # per-device defaults, decided once and stored resolved (checkpoint config, history, benchmark);
        # what was asked is kept too: a resume on another device may re-resolve an "auto" (Trainer.load)
        requested = {k: getattr(self.recipe, k) for k in (*RESOLVED_PER_DEVICE, "channels_last")}
        self.recipe = self.recipe.override(precision=resolve_precision(self.recipe.precision, device),
                                           channels_last=resolve_channels_last(self.recipe.channels_last, device))
        r = self.recipe
        # the network first: a file that fails or a rule it breaks is one line before any data is read
        source = file_source(r.model)  # your FILE.py as built, kept in the run folder
        torch.manual_seed(self.seed)  # model init depends on the seed only
        model = build_model(self.factory or r.model, **r.model_kwargs)
        if self.enforce_rules:
            check(model).require(r.model)
        if self.out_dir:  # one run per folder: another one training there is one line, before data is read
            self.lock = RunLock(check_writable(self.out_dir)).acquire()
        train_set, test_set = load_splits(self.data, self.data_dir, self.limit)
        mean, std = channel_stats(train_set.images)
        common = dict(mean=mean, std=std, device=device, channels_last=r.channels_last)
        train_loader = Loader(train_set, r.batch_size, True, translate=r.translate, flip=r.flip,
                              alternate_flip=r.alternate_flip, cutout=r.cutout, seed=self.seed, **common)
        test_loader = Loader(test_set, 500, False, **common)
        # torch.compile pays back only over many steps: decided now that the run's length is known
        self.recipe = r = r.override(compile=resolve_compile(r.compile, device, r.epochs * len(train_loader)))
        changed = [f"{k}: {v} -> {getattr(r, k)}" for k, v in requested.items() if getattr(r, k) != v]
        if changed:
            print("; ".join(changed))
        model = model.to(device)
        for m in model.modules():  # data-dependent init (PatchWhitening) from 5,000 training images
            if hasattr(m, "init_whitening"):
                m.init_whitening(train_loader.normalize(train_set.images[:5000].to(device)).contiguous())
        if r.channels_last:
            model = model.to(memory_format=torch.channels_last)
        identity = model_identity(self.factory or r.model, model, source)
        keep_copy(self.out_dir, identity, source)
        compile_seconds = compile_model(model, r, train_loader, test_loader) if r.compile != "off" else 0.0
        info = dict(name=self.name, requested=requested, data=self.data,
                    data_dir=str(self.data_dir) if self.data_dir else None, limit=self.limit, mean=mean, std=std,
                    classes=train_set.classes,
                    params=count_params(model), device=str(device), torch=str(torch.__version__),
                    compile_seconds=round(compile_seconds, 1), model_identity=identity)
        # what the run is trained and evaluated on: a resume must match it (Trainer.load)
        info["data_identity"] = dict(
            source=self.data, folder=str(Path(self.data_dir).resolve()) if self.data_dir else None,
            limit=self.limit, train_images=len(train_set), test_images=len(test_set),
            train_fingerprint=train_set.fingerprint(), test_fingerprint=test_set.fingerprint(),
            steps_per_epoch=len(train_loader))
        info["skipped_files"] = dict(train=train_set.skipped_files(), test=test_set.skipped_files())
        self.trainer = Trainer(model, r, train_loader, test_loader, device, self.out_dir, self.seed,
                               self.progress, info, lock=self.lock)
        return self.trainer

    def record(self) -> Record:
        """The run so far: its config and history (after setup)."""
        return Record(self.name, self.trainer.config, list(self.trainer.history))

    def run(self, resume=False, stop_after=None, on_epoch=None) -> Record:
        trainer = self.trainer or self.setup()
        trainer.fit(resume=resume, stop_after=stop_after, on_epoch=on_epoch)
        return self.record()


def compile_model(model, recipe: Recipe, train_loader, test_loader) -> float:
    """torch.compile `model` in place and compile it now, so that the compile time is
    measured here (returned, in seconds) rather than hidden in the first epoch's.

    In place (`nn.Module.compile`) keeps the state_dict keys unchanged, so checkpoints load
    into compiled and uncompiled models alike. The warm-up passes leave no trace: weights,
    BatchNorm statistics and the random state are restored, and no optimizer step is taken.
    """
    t0 = time.perf_counter()
    model.compile(mode=recipe.compile, dynamic=False)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [p.requires_grad for p in model.parameters()]
    rng = torch.get_rng_state()
    x, y = next(iter(train_loader))
    # the graphs depend on which parameters train: a recipe that freezes the whitening bias part-way
    # (whiten_bias_epochs) needs the frozen graphs too, or they would compile inside that epoch's time
    for epoch in sorted({1, recipe.epochs}):
        set_whiten_bias(model, recipe, epoch)
        model.train()
        with autocast(x.device, recipe.precision):
            out = model(x)
        loss_fn(out.float(), y).backward()   # compiles forward and backward graphs
        model.zero_grad(set_to_none=True)
        evaluate(model, test_loader, recipe.precision, recipe.tta)  # and the eval-mode graphs
    for p, trains in zip(model.parameters(), flags):
        p.requires_grad_(trains)
    model.load_state_dict(state)
    torch.set_rng_state(rng)
    return time.perf_counter() - t0


def train(recipe="seed", data="synthetic", resume=False, name=None, **kwargs) -> Record:
    """Train one run and return its Record (see Trial for the arguments)."""
    name = name or (recipe if isinstance(recipe, str) else "run")
    return Trial(name=name, recipe=recipe, data=data, **kwargs).run(resume=resume)


class RunNotFoundError(UserError):
    """No trained run where one was looked for; the message says how to make or find it."""


def load_run(out_dir, device="cpu", model=None):
    """(model, config, history) from a run folder's checkpoint, for analysis.

    The network is rebuilt as the run recorded it; your FILE.py:NAME from the run folder's copy
    when the file is not here (another Colab runtime) or has changed. `model`: the callable, for a
    run trained with a Python factory (Trial(model=...)).
    """
    path = Path(out_dir) / CHECKPOINT
    if not path.exists():
        raise RunNotFoundError(f"no run in {out_dir} (no {CHECKPOINT} there): train it first, with notebook 03 "
                               "and the same recipe, model and seed (in Colab: use_drive = True in both notebooks, "
                               f"since each runs on its own machine), or python -m helpers.train --out {out_dir}")
    ckpt = read_checkpoint(path, device)
    sync_history(path.parent, ckpt)  # history.json, which Record.load and plots read, follows the checkpoint
    recipe = Recipe.from_dict(ckpt["config"]["recipe"])
    identity = ckpt["config"].get("model_identity") or dict(spec=recipe.model)
    spec = model if model is not None else rebuild_spec(identity, path.parent)
    model = build_model(spec, **recipe.model_kwargs).to(device)
    # the moving average, when the run kept one, is the model that was evaluated
    model.load_state_dict(ckpt.get("ema") or ckpt["model"])
    if recipe.channels_last:  # the memory layout it was evaluated in: the same sums, the same predictions
        model = model.to(memory_format=torch.channels_last)
    return model.eval(), ckpt["config"], ckpt["history"]


def test_loader_for(config: dict, device="cpu", batch_size=500) -> Loader:
    """The test split a run was evaluated on, rebuilt from its checkpoint config (same normalisation,
    same memory layout)."""
    from .data import load_split

    test_set = load_split(config["data"], "test", config["data_dir"], config["limit"])
    channels_last = Recipe.from_dict(config["recipe"]).channels_last
    return Loader(test_set, batch_size, False, config["mean"], config["std"], device, channels_last=channels_last)


# --------------------------------------------------------------------------- CLI

def positive_int(s):
    """argparse type of every count flag (--epochs, --batch-size, --limit, --threads, --seeds)."""
    try:
        v = int(s)
    except ValueError:
        v = 0
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {s}")
    return v


def model_arg(text):
    """argparse type of --model: a registered name or your FILE.py:NAME."""
    problem = model_problem(text)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return text


def field_value(text: str):
    """FIELD=VALUE -> (field, value), VALUE parsed as JSON and checked against the field's type.

    A bare word is a string (precision=bf16) only for string fields: lr=abc, epochs=1.5 or
    model_kwargs={"act": gelu} (unquoted string, invalid JSON) are refused here, in one line,
    instead of failing deep inside training. Unknown fields are left to Recipe.override's message.
    """
    field, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected FIELD=VALUE, got {text!r}")
    kind = {f.name: type(getattr(Recipe(), f.name)) for f in fields(Recipe)}.get(field)
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        if kind not in (None, str):
            quotes = ", and strings inside need double quotes" if kind is dict else ""
            raise argparse.ArgumentTypeError(f"{text!r}: {value!r} is not valid JSON; "
                                             f"{field} needs {_KIND_WORDS[kind]}{quotes}") from None
        parsed = value  # a bare string such as precision=bf16
    is_number = isinstance(parsed, (int, float)) and not isinstance(parsed, bool)
    ok = (kind is None or (kind is float and is_number) or (kind is int and is_number and parsed == int(parsed))
          or (kind not in (int, float) and isinstance(parsed, kind)))
    if not ok:
        raise argparse.ArgumentTypeError(f"{text!r}: {field} needs {_KIND_WORDS[kind]}, got {parsed!r}")
    return field, (int(parsed) if kind is int else float(parsed) if kind is float else parsed)


_KIND_WORDS = {int: "a whole number", float: "a number", bool: "true or false", str: "a string",
               dict: 'a JSON object such as {"act": "gelu"}'}


def get_args_parser(add_help=True) -> argparse.ArgumentParser:
    """Shared by the training CLI and the benchmark."""
    p = argparse.ArgumentParser(prog="python -m helpers.train", add_help=add_help,
                                description="Train a CIFAR-10 CNN under the assignment's constraints.")
    p.add_argument("--recipe", default="seed", choices=sorted(RECIPES),
                   help="named hyperparameter set (helpers/recipes.py); other flags override it "
                        "(default: %(default)s)")
    p.add_argument("--model", type=model_arg, help="a registered model (seed, fast, wide, air) or your own "
                                                     "FILE.py:NAME (default: the recipe's)")
    p.add_argument("--data", default="folder", choices=SOURCES,
                   help="cifar10: download via torchvision; folder: ImageFolder root with train/ and test/; "
                        "synthetic: generated images for smoke runs (default: %(default)s)")
    p.add_argument("--data-dir", help="folder with train/ and test/ (needed for --data folder)")
    p.add_argument("--epochs", type=positive_int, help="epochs (default: the recipe's)")
    p.add_argument("--batch-size", type=positive_int, help="batch size (default: the recipe's)")
    p.add_argument("--lr", type=float, help="peak learning rate (default: the recipe's)")
    p.add_argument("--precision", choices=PRECISIONS,
                   help="autocast precision; auto picks per device, see helpers/device.py (default: the recipe's)")
    p.add_argument("--compile", choices=COMPILE_MODES,
                   help="torch.compile mode; auto compiles long CUDA runs only (default: the recipe's)")
    p.add_argument("--limit", type=positive_int, help="use at most this many images per split (class-balanced)")
    p.add_argument("--device", default="auto", help=DEVICE_HELP + " (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0,
                   help="random seed for init, batch order, augmentation, dropout (default: %(default)s)")
    p.add_argument("--threads", type=positive_int, help="CPU threads for torch (default: torch's choice)")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", type=field_value,
                   help="override any recipe field, VALUE as JSON: --set label_smoothing=0.05 --set "
                        "'model_kwargs={\"bn_after_pool\": false}' (repeatable; wins over the flags above)")
    return p


def main(argv=None):
    p = get_args_parser()
    p.add_argument("--out", required=True, help="run folder: checkpoint.pt and history.json are written here")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    args = p.parse_args(argv)
    if args.data == "folder" and not args.data_dir:
        p.error("--data folder needs --data-dir DIR (a folder holding train/ and test/)")
    if args.lr is not None and not args.lr > 0:
        p.error(f"--lr must be > 0, got {args.lr}")
    if "model" in dict(args.set):
        p.error("--set model=...: use --model NAME (or FILE.py:NAME)")
    try:
        trial = Trial(name=Path(args.out).name, recipe=args.recipe, model=args.model, data=args.data,
                      data_dir=args.data_dir, limit=args.limit, device=args.device, seed=args.seed, out_dir=args.out,
                      threads=args.threads, **{**dict(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                                                    precision=args.precision, compile=args.compile), **dict(args.set)})
        record = trial.run(resume=args.resume)
    except (ValueError, FileExistsError, FileNotFoundError, NonFiniteLossError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: every finished epoch is in the checkpoint
        done = len(trial.trainer.history) if trial.trainer else 0
        again = shlex.join(["python", "-m", "helpers.train", *(sys.argv[1:] if argv is None else argv)])
        print(f"interrupted: {done} epoch(s) saved in {args.out}; to continue: "
              f"{again}{'' if args.resume else ' --resume'}", file=sys.stderr)
        return 130
    reached = record.first_epoch_reaching(0.80)
    tta = f" (with TTA {record.final_tta_acc:.2%})" if record.final_tta_acc is not None else ""
    print(f"final test accuracy (plain, single view) {record.final_acc:.2%}{tta}, best epoch {record.best_acc:.2%}; "
          + (f"80% first reached at epoch {reached}" if reached else "80% not reached") + f"; outputs in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
