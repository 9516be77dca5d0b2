"""helpers/sweep/study.py: a study exported to JSON comes back whole, the published one stands in for a study
not on disk, the best trial comes with the exact command that trains it again; notebook 05 shows a study
(its figures: test_sweep_figures.py)."""
import json
import shlex
import shutil
import subprocess
import sys

import optuna
import pytest

from conftest import PROJECT, TINY, space_file, study_of
from helpers.recipes import get_recipe
from helpers.sweep import __main__ as sweep
from helpers.sweep import study as st

NOTEBOOK = PROJECT / "notebooks" / "05_sweep.ipynb"
SANITIZE = PROJECT / "tests" / "nbval_sanitize.cfg"


def test_a_study_exports_to_json_and_comes_back_whole(tmp_path):
    assert sweep.main([*TINY, "--epochs", "2", "--space", space_file(tmp_path), "--trials", "3", "--study", "x",
                       "--root", str(tmp_path), "--pruner", "none"]) == 0
    original = st.load_study("x", root=tmp_path)
    exported = tmp_path / "x" / "study.json"  # written by every sweep, next to its database
    back = st.import_study(exported)
    key = lambda t: (t.number, t.state, t.value, t.params, t.intermediate_values,  # noqa: E731
                     {k: v for k, v in t.user_attrs.items() if k != "run_dir"}, t.datetime_start, t.datetime_complete)
    assert [key(t) for t in back.get_trials()] == [key(t) for t in original.get_trials()]
    # no machine path in the file: run folders relative to it
    assert [t.user_attrs["run_dir"] for t in back.get_trials()] == ["trial-000", "trial-001", "trial-002"]
    assert st.describe(back) == st.describe(original) and st.table(back) == st.table(original)


def test_a_study_not_on_disk_falls_back_to_the_published_copy(tmp_path, capsys):
    published = sorted(p.stem for p in st.STUDIES.glob("*.json"))
    assert "fast-lr-wd-ls" in published
    s = st.load_study("fast-lr-wd-ls", root=tmp_path)
    assert "showing the published one shipped with the project" in capsys.readouterr().out
    assert st.counts(s)["complete"] >= 5 and all("history" in t.user_attrs for t in st.top_trials(s))
    with pytest.raises(st.SweepError, match=f"no study 'nope'.*; published: {published[0]}"):
        st.load_study("nope", root=tmp_path)


def _study_with(root, name, n):
    """A study file holding n finished trials, as a sweep leaves it."""
    st.study_dir(name, root).mkdir(parents=True)
    study = optuna.create_study(study_name=name, storage=f"sqlite:///{st.study_dir(name, root) / 'study.db'}")
    for _ in range(n):
        study.add_trial(optuna.trial.create_trial(value=0.5, params={}, distributions={}))


def test_a_missing_study_names_what_is_there(tmp_path, monkeypatch, capsys):
    root = tmp_path / "sweeps"
    with pytest.raises(st.SweepError, match=f"no study 'mine' in {root / 'mine'}; {root} does not exist; "):
        st.load_study("mine", root=root)
    (root / "mine").mkdir(parents=True)        # a folder without a study: a sweep that never started
    with pytest.raises(st.SweepError, match=f"; no studies in {root}; "):
        st.load_study("mine", root=root)
    _study_with(root, "lr-wd", 3)
    _study_with(root, "one", 1)
    published = ", ".join(sorted(p.stem for p in st.STUDIES.glob("*.json")))
    with pytest.raises(st.SweepError) as e:
        st.load_study("mine", root=root)
    assert str(e.value) == (f"no study 'mine' in {root / 'mine'}; studies in {root}: lr-wd (3 trials), one (1 trial); "
                            f"published: {published}. Name one of these, or run python -m helpers.sweep --study mine "
                            "first.")
    # the same root on Google Drive: a study from another runtime may not show yet
    monkeypatch.setenv("CIFAR_DRIVE_MOUNT", str(tmp_path))
    with pytest.raises(st.SweepError) as e:
        st.load_study("mine", root=root)
    assert str(e.value).endswith(f"first. {root} is on Google Drive, which can take a minute or more to show files "
                                 "written by another runtime: if the sweep ran in another one, rerun this cell in a "
                                 "minute")
    # and where the published study of that name stands in for it
    st.load_study("fast-lr-wd-ls", root=root)
    assert "rerun this cell in a minute" in capsys.readouterr().out


def test_the_published_study_still_loads_and_says_it_tuned_on_test_accuracy(tmp_path, capsys):
    """Notebook 05's code path with its defaults: the study shipped in helpers/studies/, made before validation
    splits existed, shows with its objective named in its describe line and its table (its figures' axes:
    test_sweep_figures.py)."""
    s = st.load_study("fast-lr-wd-ls", root=tmp_path)   # as notebook 05 calls it: no such study in root
    assert "showing the published one" in capsys.readouterr().out
    assert st.describe(s).endswith("; objective: test accuracy (before validation splits existed)")
    first, head = st.table(s).splitlines()[:2]
    assert first.startswith("objective: test accuracy (before validation splits existed): tuned on the test set")
    assert head.split()[:3] == ["trial", "test", "acc"] and "val acc" not in head
    best = st.best_run(s)
    assert best["objective"] == "test_acc" and best["val_acc"] is None and best["test_acc"] == s.best_value
    assert "--val" not in shlex.split(best["command"])
    assert [r.name for r in st.records(s, 1)] == [f"trial {s.best_trial.number} (test {s.best_value:.2%})"]


def test_a_study_counts_the_trials_that_ran_at_once_not_every_worker_it_ever_had():
    """Two workers, then (a re-run of the command) two other ones: 4 workers, never more than 2 trials at once;
    that is what shared the CPU, and what notebook 05 says about `train s`."""
    import datetime as dt

    study = optuna.create_study(direction="maximize")
    dist = {"lr": optuna.distributions.FloatDistribution(0.1, 1.0)}
    t0 = dt.datetime(2026, 12, 3, 9)
    for i, (start, end) in enumerate([(0, 10), (1, 10), (10, 20), (11, 19), (30, 40), (31, 42)]):
        trial = optuna.trial.create_trial(params={"lr": 0.5}, distributions=dist, value=0.5,
                                          user_attrs=dict(worker=f"host:{i // 2}"))
        trial.datetime_start, trial.datetime_complete = (t0 + dt.timedelta(minutes=m) for m in (start, end))
        study.add_trial(trial)
    assert st.most_at_once(study) == 2
    assert "; 3 worker(s), at most 2 at once, 42.0 min from first start to last finish; " in st.describe(study)
    assert "with up to 2 trials running at once" in st.explain_study(study)


def test_a_study_says_which_number_is_which(tmp_path):
    """With a validation split the table has "val acc" (optimised) beside "test acc" (reported); study.json, the
    best run say the same (the figures' axes: test_sweep_figures.py); a study made with --val 0 says loudly that
    it tuned on test."""
    val = study_of(dict(recipe="fast", data="synthetic", seed=0, val=0.1))
    lines = st.table(val).splitlines()
    assert lines[0].startswith("objective: validation accuracy (--val 0.1): plain single view")
    assert "test acc is reported beside it, never optimised" in lines[0]
    assert lines[1].split()[:5] == ["trial", "val", "acc", "test", "acc"]
    assert lines[3].split()[:3] == ["1", "70.00%", "50.00%"]        # the best by val acc, its test acc beside
    assert st.describe(val).endswith("; objective: validation accuracy (--val 0.1)")
    best = st.best_run(val)
    assert best["val_acc"] == 0.7 and best["test_acc"] == 0.5 and "--val 0.1 " in best["command"]
    assert [r.name for r in st.records(val, 2)] == ["trial 1 (val 70.00%)", "trial 0 (val 60.00%)"]
    doc = json.loads(st.export_study(val, tmp_path / "study.json").read_text())
    assert doc["objective"] == lines[0] and doc["objective_metric"] == "val_acc"
    assert (doc["best"]["val_acc"], doc["best"]["test_acc"]) == (0.7, 0.5)
    assert st.table(st.import_study(tmp_path / "study.json")) == st.table(val)
    on_test = study_of(dict(recipe="fast", data="synthetic", seed=0, val=0))
    assert st.table(on_test).startswith("objective: TEST accuracy (--val 0: tuned on the test set): the best trials' "
                                        "test acc is biased upward by the choice, not a result to report")
    assert st.describe(on_test).endswith("; objective: TEST accuracy (--val 0: tuned on the test set)")


def test_a_study_from_before_validation_splits_continues_only_as_val_0(tmp_path):
    """IDENTITY holds val: another val is another study. A study made before val existed tuned on test
    accuracy, which is what --val 0 does: that alone continues it."""
    identity = dict(recipe="fast", overrides={}, space={}, data="synthetic", limit=200, seed=0, pruner="median")
    st.open_study("old", None, tmp_path, identity, heartbeat=None)   # its settings hold no "val"
    st.open_study("old", None, tmp_path, dict(identity, val=0), heartbeat=None)
    with pytest.raises(st.SweepError, match=r"study 'old' was created with other val \(val=0\)"):
        st.open_study("old", None, tmp_path, dict(identity, val=0.1), heartbeat=None)
    st.open_study("new", None, tmp_path, dict(identity, val=0.1), heartbeat=None)
    with pytest.raises(st.SweepError, match=r"study 'new' was created with other val \(val=0.1\)"):
        st.open_study("new", None, tmp_path, dict(identity, val=500), heartbeat=None)


# --------------------------------------------------------------------------- from the best trial to a run

def test_the_best_trial_comes_with_the_exact_command_that_trains_it_again(tmp_path, capsys, monkeypatch):
    from helpers.record import Record
    from helpers.train import main as train_main
    root = tmp_path / "sweeps"
    space = space_file(tmp_path, {"lr": {"log": [0.2, 1.0]}, "label_smoothing": [0.0, 0.3]})
    assert sweep.main([*TINY, "--epochs", "1", "--space", space, "--trials", "2", "--study", "b",
                       "--root", str(root), "--set", "weight_decay=0.0003"]) == 0
    out = capsys.readouterr().out
    study = st.load_study("b", root=root)
    best = st.best_run(study)
    assert best["command"] in out and json.loads((root / "b" / "study.json").read_text())["best"] == best
    argv = shlex.split(best["command"])
    assert argv[:3] == ["python", "-m", "helpers.train"] and "weight_decay=0.0003" in argv
    # chosen by validation accuracy: the command holds out the same split, so it trains on the same images
    assert best["objective"] == "val_acc" and argv[argv.index("--val") + 1] == "0.1"
    lr = next(a for a in argv if a.startswith("lr="))
    assert float(lr[3:]) == study.best_trial.params["lr"]  # every digit, not the table's 3
    # the command, run again (into a new folder, one thread as the sweep's worker had), gives the same accuracy
    argv[argv.index("--out") + 1] = str(tmp_path / "again")
    monkeypatch.chdir(tmp_path)
    assert train_main([*argv[3:], "--threads", "1", "--batch-size", "50"]) == 0
    again = Record.load(tmp_path / "again")
    assert again.final_val_acc == study.best_value == best["val_acc"]
    assert again.final_acc == best["test_acc"] == study.best_trial.user_attrs["test_acc"]


def test_the_best_command_carries_the_trials_settings_but_never_its_device():
    """A trial's run settings that differ from the defaults are --set too (--set takes settings fields),
    its device never (the command runs wherever it is typed); an older study's recipe that still held
    precision gives it as a setting, and the returned recipe holds recipe fields only."""
    from helpers import cli

    study = optuna.create_study(direction="maximize")
    study.set_user_attr("settings", dict(recipe="fast", data="synthetic", limit=200, seed=0))
    recipe = get_recipe("fast", lr=0.5).to_dict()
    ran = dict(device="cuda:1", precision="fp32", compile="auto", channels_last=False)
    study.add_trial(optuna.trial.create_trial(value=0.6, user_attrs=dict(recipe=recipe, settings=ran)))
    older = dict(get_recipe("fast", lr=0.25).to_dict(), precision="bf16", compile="auto", channels_last=True)
    study.add_trial(optuna.trial.create_trial(value=0.5, user_attrs=dict(recipe=older)))
    argv = shlex.split(st.best_run(study)["command"])
    assert 'precision="fp32"' in argv and "channels_last=false" in argv and "lr=0.5" in argv
    assert not [a for a in argv if a.startswith(("device", "compile"))] and "--device" not in argv
    p = cli.get_args_parser("python -m helpers.train", "")
    p.add_argument("--out")
    assert cli.overrides(p.parse_args(argv[3:])) == dict(device="auto", lr=0.5, precision="fp32",
                                                         channels_last=False)
    study.add_trial(optuna.trial.create_trial(value=0.7, user_attrs=dict(recipe=older)))
    best = st.best_run(study)
    assert 'precision="bf16"' in shlex.split(best["command"]) and "precision" not in best["recipe"]
    published = st.best_run(st.load_study("fast-lr-wd-ls", root="/nonexistent", log=lambda m: None))
    assert "precision" not in published["recipe"] and "precision" not in published["command"]


# --------------------------------------------------------------------------- notebook 05

def test_notebook_runs_on_a_tiny_study_and_passes_nbval(tmp_path):
    import papermill as pm

    root = PROJECT / "runs" / "test-sweep-notebook"   # inside the project: the setup cell finds helpers from there
    shutil.rmtree(root, ignore_errors=True)
    try:
        assert sweep.main([*TINY, "--epochs", "2", "--space", space_file(tmp_path), "--trials", "4",
                           "--study", "nb", "--root", str(root)]) == 0
        executed = root / "05_sweep.ipynb"
        pm.execute_notebook(str(NOTEBOOK), str(executed), cwd=str(PROJECT), kernel_name="python3",
                            progress_bar=False,
                            parameters=dict(study="nb", root=str(root), top=3, images_dir=str(root / "images")))
        outputs = [o for c in json.loads(executed.read_text())["cells"] for o in c.get("outputs", [])]
        assert not [o for o in outputs if o["output_type"] == "error"]
        text = "".join("".join(o.get("text", "")) for o in outputs)
        assert "study nb: " in text and "val acc" in text and "objective: validation accuracy" in text
        cells = json.loads(executed.read_text())["cells"]
        figure_cells = [c for c in cells if "H.sweep.figures.study_figure(" in "".join(c["source"])]
        assert len(figure_cells) == 4 and all(  # every figure cell shows its figure
            any(o["output_type"] == "display_data" for o in c["outputs"]) for c in figure_cells)
        assert {p.name for p in (root / "images").glob("*.png")} == {
            "sweep_history.png", "sweep_epochs.png", "sweep_importances.png", "sweep_top_runs.png"}
        result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval-lax",
                                 "--nbval-sanitize-with", str(SANITIZE), str(executed)],
                                cwd=PROJECT, capture_output=True, text=True)
        assert result.returncode == 0, result.stdout[-3000:]
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_explain_study_says_where_the_recipes_values_came_from_only_for_the_one_a_sweep_made():
    """fast's values came from a sweep; best's from airbench93's author: the text must not claim a sweep for it."""
    fast = st.explain_study(study_of(dict(recipe="fast", data="synthetic", seed=0, val=0.1)))
    best = st.explain_study(study_of(dict(recipe="best", data="synthetic", seed=0, val=0.1)))
    assert "The `fast` recipe's own values came from an earlier sweep" in fast
    assert "earlier sweep" not in best and "Where the `best` recipe's own values came from" in best
