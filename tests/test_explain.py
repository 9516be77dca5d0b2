"""helpers/explain.py: the notebooks' prose is computed from the run it sits under, so it cannot describe
another run, and says the numbers right."""
import math

import pytest
import torch

from conftest import SMALL
from helpers.constraints import check
from helpers.explain import explain_architecture, explain_errors, explain_history, explain_recipe, smoothed_loss_floor
from helpers.loop import make_optimizer
from helpers.recipes import Settings, get_recipe
from helpers.record import Record
from helpers.registry import build_model
from helpers.run import Trial, recipe_table


def test_the_smoothed_loss_floor_is_the_targets_entropy():
    assert smoothed_loss_floor(0.0, 10) == 0.0
    # 0.29 over 10 classes: 0.739 on the true class, 0.029 on each other
    expected = -(0.739 * math.log(0.739) + 9 * 0.029 * math.log(0.029))
    assert smoothed_loss_floor(0.29, 10) == pytest.approx(expected)
    # no cross-entropy against that target goes lower: the target itself as the prediction reaches it
    target = torch.full((1, 10), 0.029)
    target[0, 3] = 0.739
    torch.manual_seed(0)
    for logits in [target.log(), torch.randn(1, 10), target.log() * 3]:
        loss = torch.nn.functional.cross_entropy(logits, torch.tensor([3]), label_smoothing=0.29)
        assert loss.item() >= smoothed_loss_floor(0.29, 10) - 1e-6


def test_the_architecture_is_read_from_the_trace():
    net = build_model("fast")
    text = explain_architecture(net, check(net))
    assert "Map sizes: 32 -> 31 -> 15 -> 7 -> 3 -> 1 px" in text
    assert "prep.conv, a 2x2 conv with padding 0, takes the map from 32 to 31 px" in text
    assert "prep is a PatchWhitening layer" in text
    assert "The dilated conv (block3.0.conv, dilation 2) runs on 7x7 maps: its 3x3 kernel spans 5x5 pixels" in text
    assert "17,536 weights where a full 3x3 conv would have 147,456 (8.4x as many)" in text
    assert "Receptive field 79 px, more than the 32 px image" in text
    seed = build_model("seed")
    text = explain_architecture(seed, check(seed))
    assert "Map sizes: 32 -> 16 -> 8 -> 4 -> 1 px" in text and "PatchWhitening" not in text


def epoch(n, train_loss, train_acc, test_loss, test_acc):
    return dict(epoch=n, train_loss=train_loss, train_acc=train_acc, test_loss=test_loss, test_acc=test_acc)


def test_the_history_explains_small_first_epochs_and_a_training_loss_above_the_test_loss():
    history = [epoch(1, 1.86, 0.50, 1.93, 0.30), epoch(2, 1.64, 0.67, 1.02, 0.71), epoch(3, 1.48, 0.78, 0.79, 0.81)]
    record = Record("r", dict(recipe=get_recipe("fast", epochs=3).to_dict(), classes=list("abcdefghij")), history)
    text = explain_history(record)
    assert "trained epoch 1 on 16 px images (test 30.00 %), tested on 32 px ones" in text
    assert "From epoch 2 on, training and test images are the same size" in text
    assert "training loss (1.4800) is above its test loss (0.7900)" in text and "cannot go below 1.148" in text
    assert "Training accuracy (78.00 %) is below test accuracy (81.00 %)" in text
    assert "above 80 % from epoch 3" in text
    # a run without those surprises is not explained as if it had them
    plain = Record("r", dict(recipe=get_recipe("seed", epochs=1).to_dict(), classes=list("abcdefghij")),
                   [epoch(1, 0.5, 0.9, 0.8, 0.7)])
    text = explain_history(plain)
    assert "16 px" not in text and "label-smoothed" not in text and "80 % not reached" in text


def test_the_errors_name_the_worst_class_and_the_pairs_that_dominate():
    classes = ["airplane", "cat", "dog", "ship"]
    cm = torch.tensor([[90, 2, 3, 5], [1, 60, 35, 4], [0, 28, 70, 2], [4, 1, 0, 95]])
    text = explain_errors(cm, classes)
    assert "best class ship (95.00 %), worst cat (60.00 %)" in text
    assert "cat taken for dog 35 times; dog taken for cat 28 times; airplane taken for ship 5 times" in text
    assert "cat and dog are confused both ways (35 and 28 images)" in text
    wrong = int(cm.sum() - cm.diag().sum())
    assert f"{100 * (35 + 28 + 5) / wrong:.2f} % of all {wrong} mistakes" in text


# --------------------------------------------------------------------------- 03: the recipe table

def test_recipe_table_reads_the_run():
    trainer = Trial(**dict(SMALL, recipe="best", batch_size=40)).setup()
    table = recipe_table(trainer)
    groups = trainer.optimizer.param_groups
    assert f"{sum(p.numel() for p in groups[1]['params']):,} values): peak lr 96 (x64)" in table
    assert f"Muon ({len(groups[2]['params'])} tensors, {sum(p.numel() for p in groups[2]['params']):,} values)" in table
    assert "lookahead every 5 steps" in table and "label smoothing 0.2" in table
    assert "first 3 epochs" in table and "+ mirror and 1 px shifts (6 views)" in table and "3 steps per epoch" in table
    for epochs, words in [(0, "bias frozen too"), (1, "bias trains in epoch 1 only"), (-1, "bias trains every epoch")]:
        trainer.recipe = trainer.recipe.override(whiten_bias_epochs=epochs)
        assert words in recipe_table(trainer)


@pytest.mark.parametrize("schedule, row", [
    ("one_cycle", "one cycle: 0.089 -> 0.89 at 20% of the steps -> 0.00089 (linear), stepped every batch"),
    ("cosine", "linear warm-up 0.089 -> 0.89 over the first 20% of the steps, then cosine -> 0.00089, "
               "stepped every batch"),
])
def test_the_recipe_table_describes_the_recipes_schedule(schedule, row):
    """From the run's values alone (no Trainer): the schedule row is the recipe's schedule, momentum against it."""
    recipe, model = get_recipe("fast", schedule=schedule), build_model("fast")
    table = explain_recipe(recipe, Settings(device="cpu", precision="fp32", compile="off"), model,
                           make_optimizer(model, recipe).param_groups, steps_per_epoch=195, image_size=32)
    lines = dict((line[:18].strip(), line[18:]) for line in table.splitlines())
    assert lines["lr schedule"] == row
    assert lines["momentum"] == "0.95 -> 0.85 at the lr peak -> 0.95 (against the lr)"
    assert lines["batches"] == "256 images, 195 steps per epoch (the last partial batch dropped), 3 epochs = 585 steps"


@pytest.mark.parametrize("changes, row", [
    ({}, "shift up to 2 px (reflect padding), mirror each image on alternate epochs"),
    (dict(alternate_flip=False, cutout=8, erase=0.5), "shift up to 2 px (reflect padding), mirror a random half, "
     "cutout 8x8, random erasing (p 0.5: a box of 2%-33% of the image, aspect 0.3-3.3)"),
    (dict(translate=0, flip=False), "none"),
])
def test_the_recipe_tables_augmentation_row_is_the_loaders_list(changes, row):
    """Each augmentation the Loader applies, in its order, and nothing it does not (random erasing included)."""
    recipe, model = get_recipe("fast", **changes), build_model("fast")
    table = explain_recipe(recipe, Settings(device="cpu", precision="fp32", compile="off"), model,
                           make_optimizer(model, recipe).param_groups, steps_per_epoch=195, image_size=32)
    lines = dict((line[:18].strip(), line[18:]) for line in table.splitlines())
    assert lines["augmentation"] == row
