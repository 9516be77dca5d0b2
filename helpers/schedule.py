"""The learning rate of each parameter group and the momentum at every optimizer step, as a pure function of
the step (nanoGPT's get_lr): the Trainer writes them into the optimizer before each step, so where a run stands
in its schedule is one number, the steps taken, which is what a checkpoint stores.

    rates = schedule(recipe, steps_per_epoch)
    lr, bias_lr, momentum = rates(step)      # step 0 .. recipe.epochs * steps_per_epoch - 1

The recipe's `schedule` picks the shape; both rise from lr_start x the peak to the peak over the first
pct_start of the steps and end at lr_end x the peak, and move momentum the other way (momentum_max at the
start and the end, momentum at the lr peak). The weights' peak is recipe.lr; the other parameter group's
(BatchNorm and biases) recipe.lr * bias_lr_scale.
- "one_cycle": torch's OneCycleLR (two phases, anneal "cos" or "linear"), its float operations in its
  order, so every value equals what torch.optim.lr_scheduler.OneCycleLR sets (tests/test_schedule.py).
- "cosine": a linear warm-up, then half a cosine down to the end (anneal does not apply).
"""
from __future__ import annotations

import math
from functools import partial
from typing import Callable, NamedTuple

from .recipes import Recipe


class Rates(NamedTuple):
    """One optimizer step's settings: the lr of each parameter group and the momentum of both."""
    lr: float        # the weights (conv and linear)
    bias_lr: float   # the rest: BatchNorm parameters and biases
    momentum: float


def one_cycle(step: int, total_steps: int, pct_start: float, anneal: str, start: float, peak: float,
              end: float) -> float:
    """OneCycleLR's value at `step`: from `start` to `peak` over steps 0 .. pct_start * total_steps - 1, then to
    `end` at the last step; "cos" or "linear" between them. Written as torch writes it (its phases' float end
    steps, its pct, its anneal functions), so that the value is torch's to the last bit."""
    peak_step = float(pct_start * total_steps) - 1
    if step <= peak_step:
        pct, a, b = (step - 0.0) / (peak_step - 0.0), start, peak
    else:
        pct, a, b = (step - peak_step) / (total_steps - 1 - peak_step), peak, end
    if anneal == "cos":
        return b + (a - b) / 2.0 * (math.cos(math.pi * pct) + 1)
    return (b - a) * pct + a


def warmup_cosine(step: int, total_steps: int, pct_start: float, start: float, peak: float, end: float) -> float:
    """A straight line from `start` at step 0 to `peak` at step round(pct_start * total_steps), then half a
    cosine down to `end` at the last step (a warm-up as long as the run ends at the peak: no decay)."""
    peak_step = min(round(pct_start * total_steps), total_steps - 1)
    if step < peak_step:
        return start + (peak - start) * step / peak_step
    pct = (step - peak_step) / max(total_steps - 1 - peak_step, 1)
    return end + (peak - end) * 0.5 * (1 + math.cos(math.pi * pct))


def rates(recipe: Recipe, steps_per_epoch: int, step: int) -> Rates:
    """The lr of both parameter groups and the momentum at optimizer step `step` (0-based) of a run of
    recipe.epochs * steps_per_epoch steps."""
    total = recipe.epochs * steps_per_epoch
    peaks = (recipe.lr, recipe.lr * recipe.bias_lr_scale)
    if recipe.schedule == "one_cycle":
        pct_start = recipe.pct_start
        if pct_start * recipe.epochs * steps_per_epoch == 1:
            # a warm-up of exactly one step is a zero-length phase to OneCycleLR (a division by zero):
            # a hair longer gives the same rates, the peak one step in
            pct_start *= 1 + 1e-6
        curve = partial(one_cycle, step, total, pct_start, recipe.anneal)
        # OneCycleLR's own arithmetic for the ends: peak / div_factor, then / final_div_factor
        div_factor, final_div_factor = 1 / recipe.lr_start, recipe.lr_start / recipe.lr_end
        lrs = [curve(peak / div_factor, peak, peak / div_factor / final_div_factor) for peak in peaks]
    else:
        curve = partial(warmup_cosine, step, total, recipe.pct_start)
        lrs = [curve(peak * recipe.lr_start, peak, peak * recipe.lr_end) for peak in peaks]
    # momentum moves against the lr, along the same curve: highest where the lr is low, lowest at its peak
    return Rates(*lrs, curve(recipe.momentum_max, recipe.momentum, recipe.momentum_max))


def schedule(recipe: Recipe, steps_per_epoch: int) -> Callable[[int], Rates]:
    """`rates` of one run as a function of the step alone: what the training loop calls before each step."""
    return partial(rates, recipe, steps_per_epoch)


def lr_schedule(recipe: Recipe, steps_per_epoch: int) -> dict:
    """The learning rate of both parameter groups and the momentum at every step of a run, as lists, with
    steps_per_epoch: what plots.plot_schedule draws before training."""
    steps = [rates(recipe, steps_per_epoch, step) for step in range(recipe.epochs * steps_per_epoch)]
    return dict(lr=[r.lr for r in steps], bias_lr=[r.bias_lr for r in steps],
                momentum=[r.momentum for r in steps], steps_per_epoch=steps_per_epoch)


def describe(recipe: Recipe) -> str:
    """The recipe's lr schedule in words, with its rates: one line of the recipe table."""
    r = recipe
    start, peak, end = f"{r.lr * r.lr_start:g}", f"{r.lr:g}", f"{r.lr * r.lr_end:g}"
    if r.schedule == "one_cycle":
        return (f"one cycle: {start} -> {peak} at {r.pct_start:.0%} of the steps -> {end} "
                f"({'cosine' if r.anneal == 'cos' else 'linear'})")
    return f"linear warm-up {start} -> {peak} over the first {r.pct_start:.0%} of the steps, then cosine -> {end}"
