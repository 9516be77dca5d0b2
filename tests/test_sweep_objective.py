"""helpers/sweep/objective.py: one Optuna trial is one Trial run. A rule-breaking sample is rejected untrained,
the pruner stops a lagging trial, a killed worker's trial is retried from its checkpoint, and the run's
own lines go to the trial's train.log with the settings it was given."""
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from conftest import PROJECT, SPACE, TINY, space_file, sweep_cli, trials_of
from helpers.errors import UserError
from helpers.recipes import Settings, get_recipe
from helpers.sweep import __main__ as sweep
from helpers.sweep import study as st
from helpers.sweep.objective import Objective
from helpers.sweep.space import SweepError, load_space


def test_rule_breaking_sample_is_rejected_untrained(tmp_path):
    root = tmp_path / "sweeps"
    space = space_file(tmp_path, {"lr": [0.2, 0.4], "model_kwargs.dilated": {"choices": ["none", "block3"]}})
    args = sweep.get_parser().parse_args([*TINY, "--epochs", "1", "--space", space, "--trials", "3",
                                          "--study", "r", "--root", str(root)])
    recipe, space, settings = sweep._prepare(args)
    study = st.open_study("r", None, root, settings, "median", 3, heartbeat=None)
    # the sampler is not seeded (parallel workers must not draw the same points), so both choices are
    # queued: a free draw could pick "block3" every time and leave nothing to reject
    study.enqueue_trial({"model_kwargs.dilated": "none"})
    study.enqueue_trial({"model_kwargs.dilated": "block3"})
    sweep.work(args, study, recipe, space)
    trials = trials_of(root, "r")
    assert {t.params["model_kwargs.dilated"] for t in trials} == {"none", "block3"}
    rejected = [t for t in trials if t.params["model_kwargs.dilated"] == "none"]
    kept = [t for t in trials if t.params["model_kwargs.dilated"] == "block3"]
    assert rejected and all(t.state == TrialState.PRUNED for t in rejected)
    for t in rejected:
        assert t.user_attrs["stopped"] == "rules: dilated conv" and not t.user_attrs["rules_passed"]
        assert t.user_attrs["rules"]["dilated conv"]["passed"] is False
        assert not t.intermediate_values and not (root / "r" / f"trial-{t.number:03d}").exists()
    for t in kept:
        assert t.user_attrs["rules_passed"] and (root / "r" / f"trial-{t.number:03d}" / "checkpoint.pt").is_file()
    assert st.counts(st.load_study("r", root=root))["rejected"] == len(rejected)


def leaders_then_one_real_trial(tmp_path, name: str, epochs: int):
    """A study holding three finished trials at 99 % after every epoch, then one real (far weaker)
    trial run by the sweep; returns (study, root)."""
    root = tmp_path / "sweeps"
    args = sweep.get_parser().parse_args([*TINY, "--epochs", str(epochs), "--space", space_file(tmp_path),
                                          "--trials", "4", "--study", name, "--root", str(root)])
    recipe, space, settings = sweep._prepare(args)
    study = st.open_study(name, None, root, settings, "median", 4, heartbeat=None)
    dists = {"lr": optuna.distributions.FloatDistribution(0.1, 1.0, log=True),
             "label_smoothing": optuna.distributions.FloatDistribution(0.0, 0.3)}
    every_epoch = dict.fromkeys(range(1, epochs + 1), 0.99)
    for _ in range(3):
        study.add_trial(optuna.trial.create_trial(params={"lr": 0.4, "label_smoothing": 0.1}, distributions=dists,
                                                  value=0.99, intermediate_values=every_epoch))
    sweep.work(args, study, recipe, space)
    return study, root


def test_pruner_stops_a_lagging_trial(tmp_path):
    """Three finished trials at 99 % after every epoch; a real one (far below) stops after epoch 1."""
    study, root = leaders_then_one_real_trial(tmp_path, "p", epochs=3)
    last = study.get_trials(deepcopy=False)[-1]
    assert last.state == TrialState.PRUNED and last.user_attrs["stopped"] == "pruner at epoch 1"
    assert list(last.intermediate_values) == [1]
    # the epoch it trained is kept in its run folder (checkpoint and history), no further
    assert len(json.loads((root / "p" / "trial-003" / "history.json").read_text())["history"]) == 1
    assert st.counts(study)["pruned"] == 1


def test_pruner_keeps_a_trial_that_finished_its_last_epoch(tmp_path):
    """Below the median after its last epoch: a finished result, recorded COMPLETE, not discarded."""
    study, _ = leaders_then_one_real_trial(tmp_path, "q", epochs=1)
    last = study.get_trials(deepcopy=False)[-1]
    assert last.state == TrialState.COMPLETE and last.value < 0.99 and "stopped" not in last.user_attrs


def test_killed_worker_leaves_a_failed_trial_and_the_rerun_completes(tmp_path):
    root = tmp_path / "sweeps"
    args = [*TINY, "--epochs", "8", "--space", space_file(tmp_path), "--trials", "2", "--study", "k",
            "--heartbeat", "1", "--pruner", "none", "--root", str(root)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(PROJECT)}
    worker = subprocess.Popen([sys.executable, "-m", "helpers.sweep", *args], cwd=PROJECT, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:   # wait until the first trial has reported two epochs
            time.sleep(0.5)
            with contextlib.suppress(SweepError):   # until the worker has created the study
                trials = trials_of(root, "k")
                if trials and len(trials[0].intermediate_values) >= 2:
                    break
        else:
            pytest.fail("the worker reported no epoch in 120 s")
        worker.send_signal(signal.SIGKILL)
    finally:
        worker.kill()
        worker.wait()
    killed = trials_of(root, "k")[0]
    assert killed.state == TrialState.RUNNING   # what a dead worker leaves: no finished record
    epochs_done = len(killed.intermediate_values)
    time.sleep(3.5)   # the heartbeat's grace period (3 intervals of 1 s)
    sweep_cli(*args[:-2], root=root)
    trials = trials_of(root, "k")
    assert trials[0].state == TrialState.FAIL
    finished = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(finished) == 2
    retry = next(t for t in trials if t.user_attrs.get("resumed_from") == 0)
    assert retry.params == killed.params and len(retry.user_attrs["history"]) == 8
    log = (Path(retry.user_attrs["run_dir"]) / "train.log").read_text()
    # lost no finished epoch: the kill can land after an epoch's checkpoint and before its report to Optuna,
    # so the run folder may hold one epoch more than the study saw
    resumed = re.search(r"resumed from .* at epoch (\d+)", log)
    assert resumed and int(resumed.group(1)) in (epochs_done, epochs_done + 1), log
    assert not (root / "k" / "trial-000").exists()   # the folder moved to the retry


def test_a_trials_lines_go_to_its_log_and_its_settings_to_the_run(tmp_path, capsys):
    """Trial's log= carries every line of the run into train.log (nothing on stdout); the terminal gets
    one line per epoch; the settings reach the run (checkpoint config) and the trial's attributes."""
    recipe = get_recipe("fast", epochs=2, batch_size=50)
    terminal = []
    objective = Objective(recipe, load_space(SPACE, recipe), tmp_path / "s", "synthetic", None, 200,
                          settings={"device": "cpu", "precision": "fp32"}, log=terminal.append)
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.NopPruner())
    study.optimize(objective, n_trials=1)
    t = study.trials[0]
    assert t.state == TrialState.COMPLETE, t.user_attrs
    assert t.user_attrs["settings"] == dict(Settings().to_dict(), device="cpu", precision="fp32")
    run_dir = tmp_path / "s" / "trial-000"
    log = (run_dir / "train.log").read_text()
    assert "cpu" in log and "epoch   1/2" in log and "epoch   2/2" in log
    assert capsys.readouterr().out == ""   # the run's lines went to its log, not through stdout
    assert [line.split(":")[0] for line in terminal] == ["[trial 0] epoch 1/2", "[trial 0] epoch 2/2"]
    config = json.loads((run_dir / "history.json").read_text())["config"]
    assert config["settings"]["precision"] == "fp32" and config["settings"]["device"] == "cpu"
    assert config["recipe"] == t.user_attrs["recipe"]


def test_the_objective_takes_settings_or_their_fields(tmp_path):
    recipe = get_recipe("fast")
    space = load_space(SPACE, recipe)
    given = Settings(device="cpu", compile="off")
    assert Objective(recipe, space, tmp_path, settings=given).settings is given
    assert Objective(recipe, space, tmp_path, settings={"precision": "bf16"}).settings == Settings(precision="bf16")
    assert Objective(recipe, space, tmp_path).settings == Settings()
    with pytest.raises(UserError, match="precision must be one of"):
        Objective(recipe, space, tmp_path, settings={"precision": "fp64"})
    with pytest.raises(UserError, match="unknown settings field"):
        Objective(recipe, space, tmp_path, settings={"threads": 2})   # process-wide: the sweep's --threads


def test_the_objective_is_validation_accuracy_and_test_accuracy_is_recorded_beside_it(tmp_path, monkeypatch):
    """What Optuna gets as the value and what the pruner sees each epoch (the intermediate values) are val_acc;
    test_acc is on the trial beside them, never reported to Optuna. val=0 reports test accuracy instead."""
    from helpers import run

    real = run.evaluate   # each split's "accuracy" is its size / 1000: the two can never coincide by chance
    monkeypatch.setattr(run, "evaluate", lambda model, loader, *a, **k: real(model, loader, *a, **k)
                        | dict(test_acc=len(loader.labels) / 1000))
    recipe = get_recipe("fast", epochs=2, batch_size=50)
    for val, metric, value in ((0.1, "val_acc", 0.02), (0, "test_acc", 0.2)):   # 20 held out; 200 test images
        objective = Objective(recipe, load_space(SPACE, recipe), tmp_path / str(val), "synthetic", None, 200,
                              settings={"device": "cpu"}, log=lambda m: None, val=val)
        study = optuna.create_study(direction="maximize", pruner=optuna.pruners.NopPruner())
        study.optimize(objective, n_trials=1)
        t = study.trials[0]
        assert t.state == TrialState.COMPLETE, t.user_attrs
        assert t.value == value and t.intermediate_values == {1: value, 2: value}
        assert t.user_attrs["test_acc"] == 0.2 and [h["test_acc"] for h in t.user_attrs["history"]] == [0.2, 0.2]
        config = json.loads((Path(t.user_attrs["run_dir"]) / "history.json").read_text())["config"]
        assert config.get("val") == (val or None)


def test_a_sweep_tunes_on_validation_accuracy_unless_val_0_which_it_says_loudly(tmp_path, capsys):
    root = tmp_path / "sweeps"
    common = [*TINY, "--epochs", "1", "--space", space_file(tmp_path), "--trials", "1", "--root", str(root)]
    assert sweep.main([*common, "--study", "t", "--val", "0"]) == 0
    captured = capsys.readouterr()
    warning = "WARNING: --val 0: study t tunes on TEST accuracy"
    assert any(line.startswith(warning) for line in captured.err.splitlines())
    assert "objective: TEST accuracy (--val 0: tuned on the test set)" in captured.out
    doc = json.loads((root / "t" / "study.json").read_text())
    assert doc["objective_metric"] == "test_acc" and doc["objective"].startswith("objective: TEST accuracy")
    assert st.load_study("t", root=root).user_attrs["settings"]["val"] == 0
    # without --val: the default validation split, which makes it another study
    assert sweep.main([*common, "--study", "t"]) == 2
    assert "study 't' was created with other val (val=0)" in capsys.readouterr().err
