"""helpers/cli.py, the command-line layer train and benchmark share: count flags, --set values, --help."""
import pytest

import helpers.train as train_cli  # the command's module: `from helpers import train` can be the function
from helpers import benchmark, grade
from helpers.train import main as train_main


COUNT_FLAGS = ["--epochs", "--batch-size", "--limit", "--threads"]


@pytest.mark.parametrize("main, flag", [(train_main, f) for f in COUNT_FLAGS]
                         + [(benchmark.main, f) for f in COUNT_FLAGS + ["--seeds"]],
                         ids=lambda v: v if isinstance(v, str) else v.__module__.split(".")[-1])
@pytest.mark.parametrize("value", ["0", "-2", "1.5"])
def test_every_count_flag_rejects_zero_negative_and_fractions(main, flag, value, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["--data", "synthetic", f"{flag}={value}", "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and f"argument {flag}: must be a positive integer, got {value}" in err
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("setting, message", [
    ('model_kwargs={"act": gelu}', "is not valid JSON; model_kwargs needs a dict (a JSON object)"),
    ("lr=abc", "lr needs a number"),
    ("epochs=1.5", "epochs needs a whole number, got 1.5"),
    ("flip=1", "flip needs true or false"),
])
def test_benchmark_set_checks_the_value_type(setting, message, capsys):
    with pytest.raises(SystemExit) as e:
        benchmark.main(["--data", "synthetic", "--set", setting])
    err = capsys.readouterr().err
    assert e.value.code == 2 and message in err and "Traceback" not in err


@pytest.mark.parametrize("module, prog, defaults", [
    (train_cli, "python -m helpers.train", ["(default: seed)", "(default: cifar10, or folder", "(default: auto)",
                                            "(default: 0)"]),
    (benchmark, "python -m helpers.benchmark", ["(default: seed)", "(default: cifar10, or folder", "(default: 1)"]),
])
def test_help_names_the_command_and_shows_defaults(module, prog, defaults, capsys):
    with pytest.raises(SystemExit):
        module.main(["--help"])
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert out.startswith(f"usage: {prog} ") and all(d in out for d in defaults)


@pytest.mark.parametrize("main, argv, message", [
    (grade.main, ["mynet.py", "--val", "5000"], "--val 5000: grading trains each submission on the whole training "
                                                "split and scores its plain test accuracy"),
])
def test_the_grader_refuses_a_validation_split_in_one_line(main, argv, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main([*argv, "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and message in err.strip().splitlines()[-1]   # argparse's usage, then one line
    assert not (tmp_path / "x").exists()
