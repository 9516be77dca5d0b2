"""helpers/record.py: a run read back, its plain and TTA accuracies kept apart; the runs of a folder listed by
the recipe they are."""
import pytest

from conftest import SMALL
from helpers.checkpoint import write_history
from helpers.errors import UserError
from helpers.record import Record, list_runs, other_seeds
from helpers.recipes import get_recipe
from helpers.run import train


def test_history_and_record_keep_plain_and_tta_apart(tmp_path):
    record = train(out_dir=tmp_path / "run", **dict(SMALL, recipe="fast", tta=1))
    last = record.history[-1]
    assert {"test_acc", "tta_acc", "test_loss", "tta_loss"} <= set(last)
    assert record.final_acc == last["test_acc"] and record.final_tta_acc == last["tta_acc"]
    table = record.table()
    assert "TTA acc" in table and "final test accuracy (plain, single view)" in table
    assert train(**dict(SMALL, epochs=1)).final_tta_acc is None  # seed has no TTA


def format_1_config(recipe, seed):
    """A config as runs before the settings group stored it: the per-device settings inside the recipe."""
    return dict(recipe=dict(recipe.to_dict(), precision="bf16", compile="off", channels_last=True), seed=seed,
                device="cpu")


def test_runs_are_read_upgraded_and_named_by_their_recipe(tmp_path):
    """A run whose recipe was changed (fast with epochs=1) is listed as the recipe it is, "fast", and compared with
    the other seeds of it; a format-1 history.json reads as the current format."""
    for folder, recipe, seed in (("a", get_recipe("fast", epochs=1), 0), ("b", get_recipe("fast", epochs=1), 1),
                                 ("c", get_recipe("seed", epochs=1), 2)):
        (tmp_path / folder).mkdir()
        write_history(tmp_path / folder, format_1_config(recipe, seed), [dict(epoch=1, test_acc=0.5)])
    assert [(r["folder"].name, r["recipe"], r["seed"]) for r in list_runs(tmp_path)] == [
        ("a", "fast", 0), ("b", "fast", 1), ("c", "seed", 2)]
    assert other_seeds(tmp_path / "a") == [tmp_path / "b"]
    record = Record.load(tmp_path / "a" / "history.json")
    assert record.name == "a" and record.config["settings"]["precision"] == "bf16"
    assert "precision" not in record.config["recipe"] and record.config["format"] == 2


def test_a_missing_run_is_one_user_error_naming_the_fix(tmp_path):
    with pytest.raises(UserError, match="history.json not found: train first"):
        Record.load(tmp_path / "none")
