"""helpers/schedule.py: the lr of both parameter groups and the momentum as a function of the step. one_cycle
is torch's OneCycleLR to the last bit for every shipped recipe; cosine warms up linearly and decays along a
cosine, momentum against the lr; the recipe's `schedule` field is checked."""
import math

import pytest
import torch

from helpers.errors import UserError
from helpers.recipes import RECIPES, Recipe, get_recipe
from helpers.schedule import lr_schedule, rates


def one_cycle_lr(recipe: Recipe, steps_per_epoch: int):
    """(optimizer, scheduler): torch's OneCycleLR over a weight and a bias, configured from the recipe as the
    project configured it when torch's scheduler ran its runs."""
    weight, bias = torch.nn.Parameter(torch.zeros(1, 1)), torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([dict(params=[weight]), dict(params=[bias], lr=recipe.lr * recipe.bias_lr_scale)],
                                lr=recipe.lr, momentum=recipe.momentum_max, nesterov=recipe.nesterov)
    pct_start = recipe.pct_start
    if pct_start * recipe.epochs * steps_per_epoch == 1:
        pct_start *= 1 + 1e-6
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=[g["lr"] for g in optimizer.param_groups], epochs=recipe.epochs,
        steps_per_epoch=steps_per_epoch, pct_start=pct_start, anneal_strategy=recipe.anneal,
        base_momentum=recipe.momentum, max_momentum=recipe.momentum_max, div_factor=1 / recipe.lr_start,
        final_div_factor=recipe.lr_start / recipe.lr_end)
    return optimizer, scheduler


# every shipped recipe at a few lengths, and each with a warm-up of exactly one step (0.25 x 4 x 1)
CASES = [(name, {}, steps) for name in RECIPES for steps in (1, 3, 7, 176)] + \
        [(name, dict(epochs=4, pct_start=0.25), 1) for name in RECIPES]


@pytest.mark.parametrize("name, changes, steps_per_epoch", CASES)
def test_one_cycle_is_torchs_one_cycle_lr_to_the_last_bit(name, changes, steps_per_epoch):
    recipe = RECIPES[name].override(**changes)
    optimizer, scheduler = one_cycle_lr(recipe, steps_per_epoch)
    for step in range(recipe.epochs * steps_per_epoch):
        weights, rest = optimizer.param_groups
        assert rates(recipe, steps_per_epoch, step) == (weights["lr"], rest["lr"], weights["momentum"]), step
        assert rest["momentum"] == weights["momentum"]
        optimizer.step()
        scheduler.step()


def test_a_one_step_warm_up_peaks_one_step_in():
    recipe = get_recipe("fast", epochs=4, pct_start=0.25)
    seen = lr_schedule(recipe, steps_per_epoch=1)
    assert seen["lr"][0] == pytest.approx(recipe.lr * recipe.lr_start) and max(seen["lr"]) == seen["lr"][1]


@pytest.mark.parametrize("pct_start, peak_step", [(0.2, 12), (0.0, 0), (1.0, 59)])
def test_cosine_warms_up_in_a_line_then_decays_along_a_cosine(pct_start, peak_step):
    """60 steps: lr_start x the peak at step 0, the peak at round(pct_start x 60), lr_end x the peak at the last
    step, half a cosine between; momentum the other way, the bias group at bias_lr_scale x the weights'."""
    recipe = get_recipe("best", schedule="cosine", epochs=6, pct_start=pct_start)  # the triangle 0.2 -> 1 -> 0.07
    seen = lr_schedule(recipe, steps_per_epoch=10)
    lr, peak = seen["lr"], recipe.lr
    assert lr.index(max(lr)) == peak_step and lr[peak_step] == pytest.approx(peak)
    for step in range(peak_step):  # a straight line from the start to the peak
        assert lr[step] == pytest.approx(peak * (0.2 + 0.8 * step / peak_step))
    for step in range(peak_step, 60):
        pct = (step - peak_step) / max(59 - peak_step, 1)
        assert lr[step] == pytest.approx(peak * (0.07 + 0.93 * (1 + math.cos(math.pi * pct)) / 2))
    assert lr[-1] == pytest.approx(peak * (0.07 if peak_step < 59 else 1))
    assert seen["bias_lr"] == pytest.approx([x * 64 for x in lr])
    m = seen["momentum"]
    assert m == [recipe.momentum] * 60  # best's momentum is constant (momentum == momentum_max)


def test_cosine_moves_momentum_against_the_lr():
    recipe = get_recipe("fast", schedule="cosine", momentum=0.8, momentum_max=0.9, epochs=3)
    seen = lr_schedule(recipe, steps_per_epoch=10)
    lr, m = seen["lr"], seen["momentum"]
    assert m[0] == pytest.approx(0.9) and m[-1] == pytest.approx(0.9) and min(m) == pytest.approx(0.8)
    assert m.index(min(m)) == lr.index(max(lr))
    # the lr rising means momentum falling, step for step
    assert all((b - a) * (n - o) <= 0 for a, b, o, n in zip(lr, lr[1:], m, m[1:]))


def test_cosine_ignores_anneal():
    a, b = (lr_schedule(get_recipe("fast", schedule="cosine", anneal=anneal), 5) for anneal in ("cos", "linear"))
    assert a == b


@pytest.mark.parametrize("changes, message", [
    (dict(schedule="cos"), "schedule must be one of one_cycle, cosine, got 'cos'"),
    (dict(pct_start=1.5), "pct_start must be a fraction of the steps in [0, 1], got 1.5"),
])
def test_a_bad_schedule_is_one_line_naming_the_choices(changes, message):
    with pytest.raises(UserError) as e:
        get_recipe("fast", **changes)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_a_recipe_stored_without_a_schedule_is_one_cycle():
    stored = {k: v for k, v in RECIPES["seed"].to_dict().items() if k != "schedule"}
    assert Recipe.from_dict(stored).schedule == "one_cycle"
    assert all(recipe.schedule == "one_cycle" for recipe in RECIPES.values())
