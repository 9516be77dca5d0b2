"""The scripts beside the package (scripts/): the rule-pricing networks build and break exactly the rules they
price, and gpu_check.sh can run the tests on a fresh machine (pytest's config in pyproject.toml included)."""
from pathlib import Path

import pytest
import torch

from helpers.constraints import check, trace
from helpers.model import count_params
from helpers.registry import build_model


# --------------------------------------------------------------------------- rule-pricing networks

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def test_airbench93_net_has_airbench93s_size_and_breaks_the_rules_it_should():
    # scripts/airbench93_net.py prices the rules: airbench93's layout, so it must fail them
    model = build_model(f"{SCRIPTS}/airbench93_net.py:net")
    assert count_params(model) == 569_656                     # airbench93's own count
    report = check(model)
    # its graph reads as conv blocks between max-pools, so the structure holds whatever its classes are called
    assert {r.name for r in report.rules if not r.passed} == {"exactly 3 max-pools", "depthwise-separable conv",
                                                             "dilated conv"}
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


BROKEN_BY_AIRBENCH = {"depthwise-separable conv", "dilated conv"}


@pytest.mark.parametrize("spec, kwargs, broken", [
    # one change each to airbench93's net: each of the first two leaves the three max-pools the rules ask for
    ("airbench93_net.py:net", {"head_pool": "avg"}, BROKEN_BY_AIRBENCH),
    ("airbench93_net.py:net", {"first_pool": "avg"}, BROKEN_BY_AIRBENCH),
    ("airbench93_net.py:net", {"dilated": True}, BROKEN_BY_AIRBENCH - {"dilated conv"} | {"exactly 3 max-pools"}),
    # air with its rule-required layers moved or removed
    ("air_variants.py:without_pair", {}, {"depthwise-separable conv"}),
    ("air_variants.py:max_head", {}, set()),
    ("air_variants.py:max_head", {"avg_at": "trans3"}, set()),
])
def test_rule_pricing_variants_break_only_what_they_change(spec, kwargs, broken):
    model = build_model(f"{SCRIPTS / spec}", **kwargs)
    report = check(model)
    assert {r.name for r in report.rules if not r.passed} == broken, report.rules_text()
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("avg_at", ["trans1", "trans3"])
def test_max_head_variant_pools_globally_by_max_in_a_fourth_transition(avg_at):
    model = build_model(f"{SCRIPTS}/air_variants.py:max_head", avg_at=avg_at)
    ops = trace(model)
    pools = [op for op in ops if op.kind == "maxpool"]
    averaged = [op for op in ops if op.kind == "avgpool" and op.module == f"{avg_at}.pool"]
    assert [op.module for op in pools][-1] == "trans4.pool" and pools[-1].out_shape[1:] == (1, 1)
    assert len(pools) == 3 and f"{avg_at}.pool" not in [op.module for op in pools] and averaged
    x = torch.randn(2, 128, 3, 3)
    assert torch.equal(model.trans4(x), x.amax(dim=(2, 3), keepdim=True))
    with pytest.raises(ValueError, match="avg_at must be"):
        build_model(f"{SCRIPTS}/air_variants.py:max_head", avg_at="head")


# --------------------------------------------------------------------------- scripts/gpu_check.sh

def test_pytest_reads_its_config_without_optional_packages():
    """A warning filter naming a class makes pytest import its module to read pyproject.toml; Colab,
    where gpu_check.sh runs, has no Optuna (an extra), and older pytest stops on that."""
    tomllib = pytest.importorskip("tomllib")
    from pathlib import Path
    config = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    for entry in config["tool"]["pytest"]["ini_options"].get("filterwarnings", []):
        category = (entry.split(":") + [""] * 3)[2]
        assert category in ("",) or "." not in category, f"filter {entry!r} imports {category}"


def test_gpu_check_installs_what_it_runs_before_running_it():
    from pathlib import Path
    script = (Path(__file__).parents[1] / "scripts" / "gpu_check.sh").read_text().splitlines()
    code = [line.strip() for line in script if line.strip() and not line.lstrip().startswith("#")]
    install = next(i for i, line in enumerate(code) if "pip install" in line)
    assert "-e ." in code[install] and "pytest" in code[install]
    first_run = next(i for i, line in enumerate(code) if "-m pytest" in line or "-m helpers" in line)
    assert install < first_run
