"""helpers/study.py: a study exported to JSON comes back whole, the published one stands in for a study
not on disk, the best trial comes with the exact command that trains it again; the study's figures
(helpers/plots.py) leave matplotlib as they found it; notebook 05 shows a study."""
import ast
import json
import shlex
import shutil
import subprocess
import sys

import optuna
import pytest

from conftest import PROJECT, TINY, space_file
from helpers import plots
from helpers import study as st
from helpers import sweep
from helpers.recipes import get_recipe

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


def test_figures_leave_matplotlib_as_they_found_it():
    import matplotlib

    study = st.load_study("fast-lr-wd-ls", root="/nonexistent")
    before = dict(matplotlib.rcParams)
    for name in plots.STUDY_PLOTS:
        plots.study_figure(study, name)
    assert {k: v for k, v in matplotlib.rcParams.items() if before[k] != v} == {}  # no ggplot style left


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
    lr = next(a for a in argv if a.startswith("lr="))
    assert float(lr[3:]) == study.best_trial.params["lr"]  # every digit, not the table's 3
    # the command, run again (into a new folder, one thread as the sweep's worker had), gives the same accuracy
    argv[argv.index("--out") + 1] = str(tmp_path / "again")
    monkeypatch.chdir(tmp_path)
    assert train_main([*argv[3:], "--threads", "1", "--batch-size", "50"]) == 0
    again = Record.load(tmp_path / "again")
    assert again.final_acc == study.best_value


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


def test_the_sweep_modules_import_only_downward():
    """space <- study <- objective <- sweep: none imports one after it (study never needs objective)."""
    order = ["space", "study", "objective", "sweep"]
    for i, name in enumerate(order):
        tree = ast.parse((PROJECT / "helpers" / f"{name}.py").read_text())
        imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.level == 1}
        imported |= {a.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.level == 1
                     and node.module is None for a in node.names}
        assert not imported & set(order[i + 1:]), (name, imported)
        assert "plots" not in imported or name == "sweep", name   # figures are plots.py's, drawn by the command
    plots_tree = ast.parse((PROJECT / "helpers" / "plots.py").read_text())   # beside study, not above it
    assert not {node.module for node in ast.walk(plots_tree) if isinstance(node, ast.ImportFrom)} & set(order)


def test_the_top_runs_figure_shows_the_records_of_the_best_trials():
    import matplotlib.pyplot as plt

    study = st.load_study("fast-lr-wd-ls", root="/nonexistent", log=lambda m: None)
    fig = plots.study_top_runs(study, top=3)
    shown = [line.get_label() for line in fig.axes[1].get_lines()]   # the test-accuracy panel
    assert shown == [r.name for r in st.records(study, 3)] and len(shown) == 3
    plt.close(fig)


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
        assert "study nb: " in text and "plain acc" in text
        cells = json.loads(executed.read_text())["cells"]
        figure_cells = [c for c in cells if "H.plots.study_figure(" in "".join(c["source"])]
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
