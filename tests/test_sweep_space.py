"""helpers/sweep/space.py: a sweep's search space is checked whole before any training, samples recipe
overrides (model arguments merged onto the recipe's), and holds recipe fields only, never run settings."""
import subprocess
import sys

import optuna
import pytest

from helpers.recipes import Settings, get_recipe
from helpers.sweep import space as sp


@pytest.mark.parametrize("spec, message", [
    ({"lrr": [0.1, 1.0]}, "unknown field 'lrr'"),
    ({"model_kwargs.widthz": {"choices": [[32, 64, 128]]}}, "model_kwargs.widthz"),
    ({"model_kwargs": {"act": "gelu"}}, "model_kwargs.NAME"),
    ({"lr": [1.0, 0.1]}, "low must be < high"),
    ({"lr": {"log": [0.0, 1.0]}}, "low > 0"),
    ({"label_smoothing": [0.0, 1.0]}, "label_smoothing must be in [0, 1)"),
    ({"translate": [0.5, 4]}, "integer field"),
    ({"model_kwargs.act": {"choices": ["relu", "swish"]}}, "act must be one of"),
    ({"schedule": {"choices": ["one_cycle", "cosin"]}}, "schedule must be one of one_cycle, cosine"),
    ({"erase": [0.0, 1.5]}, "erase must be"),
    ({"lr": [0.1, 0.2, 0.3]}, "a range is [low, high]"),
    ({}, "non-empty"),
])
def test_space_errors_name_the_problem(spec, message):
    with pytest.raises(sp.SweepError, match=r".*" + message.replace("[", r"\[").replace("(", r"\(")
                       .replace(")", r"\)")):
        sp.load_space(spec, get_recipe("fast"))


def test_space_samples_and_merges_model_kwargs():
    space = sp.load_space({"lr": {"log": [0.1, 1.0]}, "translate": [0, 4], "epochs": 2,
                           "model_kwargs.widths": {"choices": [[16, 32, 64], [32, 64, 128]]},
                           "model_kwargs.res_pairs": {"choices": [0, 1]}}, get_recipe("fast"))
    assert space.searched == ["lr", "translate", "model_kwargs.widths", "model_kwargs.res_pairs"]
    overrides = space.sample(optuna.create_study().ask())
    assert 0.1 <= overrides["lr"] <= 1.0 and isinstance(overrides["translate"], int) and overrides["epochs"] == 2
    # sampled kwargs land on top of the recipe's (act=gelu), not instead of them
    assert overrides["model_kwargs"]["act"] == "gelu" and overrides["model_kwargs"]["widths"] in ([16, 32, 64],
                                                                                                  [32, 64, 128])


def test_the_schedule_and_random_erasing_are_searched_like_any_field():
    """A new recipe field needs no sweep code: the schedule is a choice, erasing a range, each trial one sample."""
    space = sp.load_space("fast-schedule-erase", get_recipe("fast"))
    assert space.searched == ["schedule", "pct_start", "erase", "lr"]
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    samples = [space.sample(study.ask()) for _ in range(20)]
    assert {s["schedule"] for s in samples} == {"one_cycle", "cosine"}
    assert all(0.0 <= s["erase"] <= 0.5 and 0.1 <= s["pct_start"] <= 0.3 for s in samples)
    for s in samples:  # every sample is a valid recipe
        get_recipe("fast", **s)


def test_example_spaces_are_valid():
    for path in sp.SPACES.glob("*.json"):
        assert sp.load_space(path.stem, get_recipe("fast")).searched


@pytest.mark.parametrize("key, spec", [("precision", {"choices": ["fp32", "bf16"]}), ("compile", "off"),
                                       ("device", "cpu"), ("channels_last", {"choices": [True, False]})])
def test_a_run_setting_is_no_search_space_key(key, spec):
    """Settings change how fast a trial runs, not what it trains: one line says so, and how to set it."""
    assert key in Settings().to_dict()
    with pytest.raises(sp.SweepError) as refused:
        sp.load_space({"lr": [0.1, 1.0], key: spec}, get_recipe("fast"))
    text = str(refused.value)
    assert f"{key!r} is a run setting" in text and "not what it trains" in text and f"--set {key}=" in text
    assert "\n" not in text and isinstance(refused.value, ValueError)   # a UserError: one line in a notebook too


def test_integer_fields_come_from_the_recipes_own_types():
    assert sp.is_int_field("translate") and sp.is_int_field("epochs")
    assert not sp.is_int_field("lr") and not sp.is_int_field("nesterov")   # a bool is no integer


def test_a_space_is_read_and_checked_without_optuna():
    """Optuna is an extra: checking a space needs only the recipes (it samples with an optuna.Trial)."""
    code = ("import sys; sys.modules['optuna'] = None\n"
            "from helpers.sweep.space import load_space; from helpers.recipes import get_recipe\n"
            "print(load_space('fast-lr-wd-ls', get_recipe('fast')).searched)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "lr" in done.stdout, done.stderr[-2000:]
