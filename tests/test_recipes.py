"""helpers/recipes.py: the recipes, their checks (ranges and types, from Python too) and older configs."""
import argparse

import pytest
import torch

from conftest import SMALL
from helpers.cli import field_value
from helpers.device import pick_device
from helpers.errors import UserError
from helpers.notebook import check_params
from helpers.recipes import RECIPES, Recipe, RecipeName, get_recipe, recipe_name
from helpers.run import Trial


def test_bad_settings_raise_clear_errors():
    with pytest.raises(ValueError, match="epochs must be >= 1"):
        get_recipe("seed", epochs=0)
    with pytest.raises(ValueError, match="unknown recipe"):
        get_recipe("turbo")
    with pytest.raises(ValueError, match="unknown model"):
        get_recipe("seed", model="vgg")
    with pytest.raises(ValueError, match="tta must be"):
        get_recipe("seed", tta=3)
    with pytest.raises(ValueError, match="ema must be"):
        get_recipe("seed", ema=1.0)
    with pytest.raises(ValueError, match="cutout must be"):
        get_recipe("seed", cutout=-1)
    with pytest.raises(ValueError, match="momentum must satisfy"):
        get_recipe("seed", momentum=0.95, momentum_max=0.9)
    with pytest.raises(ValueError, match="needs data_dir"):
        Trial(data="folder")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA"):
            pick_device("cuda")


@pytest.mark.parametrize("field, value, message", [
    ("epochs", 1.5, "epochs must be a whole number, got 1.5"),
    ("lr", "abc", "lr must be a number"),
    ("flip", 1, "flip must be true or false"),
    ("batch_size", True, "batch_size must be a whole number"),
    ("model_kwargs", "gelu", "model_kwargs must be a dict"),
])
def test_recipe_rejects_wrong_types_from_python_too(field, value, message):
    with pytest.raises(ValueError, match=message):
        Trial(**{**SMALL, field: value})


@pytest.mark.parametrize("field, value", [("lr_start", 0.0), ("lr_end", 0.5), ("lookahead", -1),
                                          ("whiten_bias_epochs", -2), ("resize_start", 8),
                                          ("resize_epochs", -1)])
def test_new_schedule_fields_are_validated(field, value):
    with pytest.raises(ValueError, match=field):
        get_recipe("fast", **{field: value})


def test_resize_start_needs_epochs_to_resize():
    with pytest.raises(ValueError, match="resize_start .* resize_epochs >= 1"):
        get_recipe("seed", resize_start=16, resize_epochs=0)


@pytest.mark.parametrize("changes, message", [
    (dict(erase=1.5), "erase must be a probability in"), (dict(erase=-0.1), "erase must be a probability in"),
    (dict(erase_scale_min=0.0), "0 < erase_scale_min <= erase_scale_max <= 1, got 0.0 and 0.33"),
    (dict(erase_scale_min=0.5, erase_scale_max=0.4), "0 < erase_scale_min <= erase_scale_max <= 1"),
    (dict(erase_scale_max=1.5), "0 < erase_scale_min <= erase_scale_max <= 1"),
    (dict(erase_ratio_min=0.0), "0 < erase_ratio_min <= erase_ratio_max, got 0.0 and 3.3"),
    (dict(erase_ratio_min=4.0), "0 < erase_ratio_min <= erase_ratio_max"),
])
def test_random_erasing_fields_are_validated_in_one_line(changes, message):
    with pytest.raises(UserError, match=message) as error:
        get_recipe("fast", **changes)
    assert "\n" not in str(error.value)


def test_random_erasing_is_off_unless_asked_and_settable_with_set():
    assert all(r.erase == 0 for r in RECIPES.values())
    # a config stored before the erasing fields existed reads back as the same recipe
    stored = {k: v for k, v in get_recipe("fast").to_dict().items() if not k.startswith("erase")}
    assert Recipe.from_dict(stored) == get_recipe("fast")
    sets = dict(field_value(text) for text in ("erase=0.25", "erase_scale_max=0.2", "erase_ratio_max=3"))
    assert sets == dict(erase=0.25, erase_scale_max=0.2, erase_ratio_max=3.0)
    assert get_recipe("seed", **sets).erase_ratio_max == 3.0
    with pytest.raises(argparse.ArgumentTypeError, match="erase needs a number"):
        field_value("erase=true")


def test_old_checkpoint_config_records_the_momentum_it_used():
    # before momentum_max existed the scheduler ignored `momentum` and cycled 0.85 <-> 0.95
    old = {**get_recipe("fast").to_dict(), "momentum": 0.9}
    del old["momentum_max"]
    assert Recipe.from_dict(old) == get_recipe("fast")


def test_another_model_leaves_the_recipes_model_arguments_behind():
    # fast's GELU belongs to the fast model: the seed model (or yours) is built without it
    r = check_params(data="synthetic", model="seed", recipe="fast")
    assert (r.model, r.model_kwargs, r.epochs) == ("seed", {}, RECIPES["fast"].epochs)
    assert get_recipe("fast").model_kwargs == {"act": "gelu"}
    assert get_recipe("fast", epochs=5).model_kwargs is not RECIPES["fast"].model_kwargs  # a copy, never shared


def test_recipe_name_is_the_closest_named_recipe_and_the_fields_changed():
    """Data to compare (name, changes), and today's text as str(): no caller parses the text."""
    for name, recipe in RECIPES.items():
        assert recipe_name(recipe.to_dict()) == RecipeName(name, {}) and str(recipe_name(recipe.to_dict())) == name
    named = recipe_name(get_recipe("fast", epochs=1, lr=0.5).to_dict())
    assert (named.name, named.changes) == ("fast", {"epochs": 1, "lr": 0.5})
    assert str(named) == "fast (epochs=1, lr=0.5)"
