"""Optuna sweeps: space validation, rule rejection, pruning, several worker processes on one
study (SQLite, and PostgreSQL when a server can be started here), a SIGKILLed worker, notebook 05."""
import ast
import contextlib
import glob
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

import helpers
from helpers import sweep
from helpers.recipes import get_recipe

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "05_sweep.ipynb"
SANITIZE = ROOT / "tests" / "nbval_sanitize.cfg"
# tiny synthetic trials: 200 images per split, batches of 50, one thread per worker
TINY = ["--data", "synthetic", "--limit", "200", "--batch-size", "50", "--threads", "1"]
SPACE = {"lr": {"log": [0.1, 1.0]}, "label_smoothing": [0.0, 0.3]}


def cli(*args, root, check=True, timeout=300):
    """The sweep CLI in its own process, as a user (or a second machine) would start it."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-m", "helpers.sweep", *args, "--root", str(root)], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=timeout)
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


def space_file(tmp_path, space=SPACE):
    path = tmp_path / "space.json"
    path.write_text(json.dumps(space))
    return str(path)


def trials_of(root, study, storage=None):
    return sweep.load_study(study, storage, root).get_trials(deepcopy=False)


def assert_no_duplicate_or_lost(trials, n, root, study):
    """Trial numbers 0..M-1 once each, n <= M finished, each finished trial with its own run folder."""
    numbers = sorted(t.number for t in trials)
    assert numbers == list(range(len(trials)))
    done = [t for t in trials if t.state in sweep.DONE]
    assert len(done) == len(trials), [t.state for t in trials]
    # a worker may start one trial while the other is finishing the last: at most n + workers - 1
    assert n <= len(done) <= n + 1
    for t in done:
        history = json.loads((Path(t.user_attrs["run_dir"]) / "history.json").read_text())
        assert history["config"]["name"] == f"trial-{t.number:03d}"
    folders = sorted(p.name for p in (Path(root) / study).glob("trial-*"))
    assert folders == [f"trial-{t.number:03d}" for t in sorted(done, key=lambda t: t.number)]


# --------------------------------------------------------------------------- space

@pytest.mark.parametrize("spec, message", [
    ({"lrr": [0.1, 1.0]}, "unknown field 'lrr'"),
    ({"model_kwargs.widthz": {"choices": [[32, 64, 128]]}}, "model_kwargs.widthz"),
    ({"model_kwargs": {"act": "gelu"}}, "model_kwargs.NAME"),
    ({"lr": [1.0, 0.1]}, "low must be < high"),
    ({"lr": {"log": [0.0, 1.0]}}, "low > 0"),
    ({"label_smoothing": [0.0, 1.0]}, "label_smoothing must be in [0, 1)"),
    ({"translate": [0.5, 4]}, "integer field"),
    ({"model_kwargs.act": {"choices": ["relu", "swish"]}}, "act must be one of"),
    ({"lr": [0.1, 0.2, 0.3]}, "a range is [low, high]"),
    ({}, "non-empty"),
])
def test_space_errors_name_the_problem(spec, message):
    with pytest.raises(sweep.SweepError, match=r".*" + message.replace("[", r"\[").replace("(", r"\(")
                       .replace(")", r"\)")):
        sweep.load_space(spec, get_recipe("fast"))


def test_space_samples_and_merges_model_kwargs():
    space = sweep.load_space({"lr": {"log": [0.1, 1.0]}, "translate": [0, 4], "epochs": 2,
                              "model_kwargs.widths": {"choices": [[16, 32, 64], [32, 64, 128]]},
                              "model_kwargs.res_pairs": {"choices": [0, 1]}}, get_recipe("fast"))
    assert space.searched == ["lr", "translate", "model_kwargs.widths", "model_kwargs.res_pairs"]
    overrides = space.sample(optuna.create_study().ask())
    assert 0.1 <= overrides["lr"] <= 1.0 and isinstance(overrides["translate"], int) and overrides["epochs"] == 2
    # sampled kwargs land on top of the recipe's (act=gelu), not instead of them
    assert overrides["model_kwargs"]["act"] == "gelu" and overrides["model_kwargs"]["widths"] in ([16, 32, 64],
                                                                                                  [32, 64, 128])


def test_example_spaces_are_valid():
    for path in sweep.SPACES.glob("*.json"):
        assert sweep.load_space(path.stem, get_recipe("fast")).searched


# --------------------------------------------------------------------------- CLI input

def _argv(tmp_path, **flags):
    base = {"--space": space_file(tmp_path), "--trials": "2", "--study": "s", "--root": str(tmp_path / "sweeps"),
            **flags}
    return [*TINY, *(x for kv in base.items() for x in kv)]


@pytest.mark.parametrize("flags, message", [
    ({"--space": "nope"}, "space 'nope' not found"),
    ({"--lr": "0.3"}, "lr both fixed by a flag and listed in the space"),
    ({"--data": "folder"}, "--data folder needs --data-dir"),
    ({"--storage": "mysql://u@nowhere/db"}, "database driver is not installed"),
])
def test_bad_input_is_one_line_exit_2(tmp_path, capsys, flags, message):
    assert sweep.main(_argv(tmp_path, **flags)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and message in err
    assert not list((tmp_path / "sweeps").glob("*/trial-*"))   # nothing trained


def test_trials_must_be_positive(tmp_path, capsys):
    with pytest.raises(SystemExit) as exited:
        sweep.main(_argv(tmp_path, **{"--trials": "0"}))
    assert exited.value.code == 2 and "must be a positive integer" in capsys.readouterr().err


def test_rerun_with_other_settings_is_refused(tmp_path, capsys):
    root = tmp_path / "sweeps"
    common = [*TINY, "--epochs", "1", "--trials", "1", "--study", "s", "--root", str(root)]
    assert sweep.main([*common, "--space", space_file(tmp_path)]) == 0
    assert sweep.main([*common, "--space", space_file(tmp_path, {"lr": {"log": [0.2, 1.0]}})]) == 2
    assert "study 's' was created with other space" in capsys.readouterr().err
    # the same command again: nothing more to run, the study is kept
    assert sweep.main([*common, "--space", space_file(tmp_path)]) == 0
    assert "already holds 1 finished trials" in capsys.readouterr().err
    assert len(trials_of(root, "s")) == 1


# --------------------------------------------------------------------------- rules and pruning

def test_rule_breaking_sample_is_rejected_untrained(tmp_path):
    root = tmp_path / "sweeps"
    space = space_file(tmp_path, {"lr": [0.2, 0.4], "model_kwargs.dilated": {"choices": ["none", "block3"]}})
    args = sweep.get_parser().parse_args([*TINY, "--epochs", "1", "--space", space, "--trials", "3",
                                          "--study", "r", "--root", str(root)])
    recipe, space, settings = sweep._prepare(args)
    study = sweep.open_study("r", None, root, settings, "median", 3, heartbeat=None)
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
    assert sweep.counts(sweep.load_study("r", root=root))["rejected"] == len(rejected)


def leaders_then_one_real_trial(tmp_path, name: str, epochs: int):
    """A study holding three finished trials at 99 % after every epoch, then one real (far weaker)
    trial run by the sweep; returns (study, root)."""
    root = tmp_path / "sweeps"
    args = sweep.get_parser().parse_args([*TINY, "--epochs", str(epochs), "--space", space_file(tmp_path),
                                          "--trials", "4", "--study", name, "--root", str(root)])
    recipe, space, settings = sweep._prepare(args)
    study = sweep.open_study(name, None, root, settings, "median", 4, heartbeat=None)
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
    assert sweep.counts(study)["pruned"] == 1


def test_pruner_keeps_a_trial_that_finished_its_last_epoch(tmp_path):
    """Below the median after its last epoch: a finished result, recorded COMPLETE, not discarded."""
    study, _ = leaders_then_one_real_trial(tmp_path, "q", epochs=1)
    last = study.get_trials(deepcopy=False)[-1]
    assert last.state == TrialState.COMPLETE and last.value < 0.99 and "stopped" not in last.user_attrs


# --------------------------------------------------------------------------- workers

def test_two_worker_processes_share_one_sqlite_study(tmp_path):
    root = tmp_path / "sweeps"
    result = cli(*TINY, "--epochs", "2", "--space", space_file(tmp_path), "--trials", "6", "--study", "w",
                 "--workers", "2", root=root)
    print(result.stderr[-1500:])   # shown with -s: the workers' trial lines and the summary
    trials = trials_of(root, "w")
    assert_no_duplicate_or_lost(trials, 6, root, "w")
    assert len({t.user_attrs["worker"] for t in trials}) == 2   # both processes ran trials
    assert "plain acc" in result.stdout and (root / "w" / "plots" / "history.png").is_file()


def test_killed_worker_leaves_a_failed_trial_and_the_rerun_completes(tmp_path):
    root = tmp_path / "sweeps"
    args = [*TINY, "--epochs", "8", "--space", space_file(tmp_path), "--trials", "2", "--study", "k",
            "--heartbeat", "1", "--pruner", "none", "--root", str(root)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    worker = subprocess.Popen([sys.executable, "-m", "helpers.sweep", *args], cwd=ROOT, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:   # wait until the first trial has reported two epochs
            time.sleep(0.5)
            with contextlib.suppress(sweep.SweepError):   # until the worker has created the study
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
    cli(*args[:-2], root=root)
    trials = trials_of(root, "k")
    assert trials[0].state == TrialState.FAIL
    finished = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(finished) == 2
    retry = next(t for t in trials if t.user_attrs.get("resumed_from") == 0)
    assert retry.params == killed.params and len(retry.user_attrs["history"]) == 8
    log = (Path(retry.user_attrs["run_dir"]) / "train.log").read_text()
    # lost no finished epoch: the kill can land after an epoch's checkpoint and before its report to Optuna,
    # so the run folder may hold one epoch more than the study saw
    import re
    resumed = re.search(r"resumed from .* at epoch (\d+)", log)
    assert resumed and int(resumed.group(1)) in (epochs_done, epochs_done + 1), log
    assert not (root / "k" / "trial-000").exists()   # the folder moved to the retry


# --------------------------------------------------------------------------- PostgreSQL

def _initdb():
    found = shutil.which("initdb") or next(iter(sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))), None)
    return Path(found).resolve().parent if found else None   # the real bin folder, not a symlink's


class Server(str):
    """The server's URL, with restart() to restart the server (as a maintenance window would)."""


@pytest.fixture(scope="module")
def postgres_url():
    """A throwaway PostgreSQL server on a private socket, or a skip saying why not."""
    if not any(importlib.util.find_spec(m) for m in ("psycopg", "psycopg2")):
        pytest.skip("no PostgreSQL driver: pip install 'psycopg[binary]' to run this test")
    bin_dir = _initdb()
    if bin_dir is None:
        pytest.skip("no PostgreSQL server binaries (initdb): apt-get install postgresql to run this test")
    folder = Path(tempfile.mkdtemp(prefix="sweep-pg-", dir="/tmp"))
    folder.chmod(0o755)
    as_user = []
    if os.geteuid() == 0:   # postgres refuses to run as root
        runuser = shutil.which("runuser") or shutil.which("runuser", path="/usr/sbin:/sbin")
        if runuser is None:
            pytest.skip("running as root and no runuser to start PostgreSQL as another user")
        shutil.chown(folder, "postgres")
        as_user = [runuser, "-u", "postgres", "--"]
    port = str(5400 + os.getpid() % 500)
    data = folder / "data"
    steps = [[str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync"],
             [str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(folder / "log"), "-w", "-t", "30",
              "-o", f"-k {folder} -p {port} -c listen_addresses=''", "start"],
             [str(bin_dir / "createdb"), "-h", str(folder), "-p", port, "-U", "postgres", "sweeps"]]
    try:
        for step in steps:
            try:
                done = subprocess.run(as_user + step, capture_output=True, text=True, timeout=60)
            except (OSError, subprocess.TimeoutExpired) as e:
                pytest.skip(f"could not start PostgreSQL ({Path(step[0]).name}): {e}")
            if done.returncode:
                pytest.skip(f"could not start PostgreSQL ({Path(step[0]).name}): {done.stderr.strip()[:200]}")
        server = Server(f"postgresql://postgres@/sweeps?host={folder}&port={port}")
        def restart(down=3.0):  # stop, stay down a few seconds (so that a worker's call lands in it), start
            pg_ctl = as_user + [str(bin_dir / "pg_ctl"), "-D", str(data), "-w", "-t", "30"]
            quiet = dict(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60, check=True)
            subprocess.run(pg_ctl + ["-m", "fast", "stop"], **quiet)
            time.sleep(down)
            subprocess.run(pg_ctl + ["-l", str(folder / "log"), "-o", f"-k {folder} -p {port} -c listen_addresses=''",
                                     "start"], **quiet)
        server.restart = restart
        yield server
    finally:
        subprocess.run(as_user + [str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True, timeout=60)
        shutil.rmtree(folder, ignore_errors=True)


def test_two_worker_processes_share_one_postgres_study(tmp_path, postgres_url):
    root = tmp_path / "sweeps"
    # two separate commands, as on two machines, each with one worker
    common = [*TINY, "--epochs", "2", "--space", space_file(tmp_path), "--trials", "6", "--study", "pg",
              "--storage", postgres_url, "--root", str(root)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-m", "helpers.sweep", *common], cwd=ROOT, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-2000:]
    trials = trials_of(root, "pg", postgres_url)
    assert_no_duplicate_or_lost(trials, 6, root, "pg")
    assert len({t.user_attrs["worker"] for t in trials}) == 2


# --------------------------------------------------------------------------- notebook 05

def test_a_study_exports_to_json_and_comes_back_whole(tmp_path):
    assert sweep.main([*TINY, "--epochs", "2", "--space", space_file(tmp_path), "--trials", "3", "--study", "x",
                       "--root", str(tmp_path), "--pruner", "none"]) == 0
    original = sweep.load_study("x", root=tmp_path)
    exported = tmp_path / "x" / "study.json"  # written by every sweep, next to its database
    back = sweep.import_study(exported)
    key = lambda t: (t.number, t.state, t.value, t.params, t.intermediate_values,  # noqa: E731
                     {k: v for k, v in t.user_attrs.items() if k != "run_dir"}, t.datetime_start, t.datetime_complete)
    assert [key(t) for t in back.get_trials()] == [key(t) for t in original.get_trials()]
    # no machine path in the file: run folders relative to it
    assert [t.user_attrs["run_dir"] for t in back.get_trials()] == ["trial-000", "trial-001", "trial-002"]
    assert sweep.summary(back) == sweep.summary(original) and sweep.table(back) == sweep.table(original)


def test_a_study_not_on_disk_falls_back_to_the_published_copy(tmp_path, capsys):
    published = sorted(p.stem for p in sweep.STUDIES.glob("*.json"))
    assert "fast-lr-wd-ls" in published
    s = sweep.load_study("fast-lr-wd-ls", root=tmp_path)
    assert "showing the published one shipped with the project" in capsys.readouterr().out
    assert sweep.counts(s)["complete"] >= 5 and all("history" in t.user_attrs for t in sweep.top_trials(s))
    with pytest.raises(sweep.SweepError, match=f"no study 'nope'.*or show a published one \\({published[0]}"):
        sweep.load_study("nope", root=tmp_path)


def test_figures_leave_matplotlib_as_they_found_it():
    import matplotlib

    study = sweep.load_study("fast-lr-wd-ls", root="/nonexistent")
    before = dict(matplotlib.rcParams)
    for name in sweep.PLOTS:
        sweep.figure(study, name)
    assert {k: v for k, v in matplotlib.rcParams.items() if before[k] != v} == {}  # no ggplot style left


def test_committed_notebook_structure():
    nb = json.loads(NOTEBOOK.read_text())
    source = lambda c: "".join(c["source"])  # noqa: E731
    first = source(nb["cells"][0])
    assert first.startswith("# 05 · ")
    assert f"https://colab.research.google.com/github/{helpers.REPO}/blob/main/notebooks/05_sweep.ipynb" in first
    assert nb["metadata"]["kernelspec"]["name"] == "python3"
    setup = next(source(c) for c in nb["cells"] if "google.colab" in source(c))
    assert f'REPO = "{helpers.REPO}"' in setup and "-e" not in setup.split()
    params = [c for c in nb["cells"] if "parameters" in c["metadata"].get("tags", [])]
    assert len(params) == 1
    tree = ast.parse(source(params[0]))
    names = {t.id for node in tree.body for t in node.targets}
    assert names == {"study", "storage", "root", "use_drive", "top", "images_dir"}
    for node in tree.body:   # plain literals only, so papermill can override them
        ast.literal_eval(node.value)
    text = NOTEBOOK.read_text()
    assert '"papermill"' not in text and "injected-parameters" not in text
    for fragment in ("/work/", "/home/", "/root/", "/tmp/", str(ROOT)):
        assert fragment not in text, fragment


def test_notebook_runs_on_a_tiny_study_and_passes_nbval(tmp_path):
    import papermill as pm

    root = ROOT / "runs" / "test-sweep-notebook"   # inside the project: the setup cell finds helpers from there
    shutil.rmtree(root, ignore_errors=True)
    try:
        assert sweep.main([*TINY, "--epochs", "2", "--space", space_file(tmp_path), "--trials", "4",
                           "--study", "nb", "--root", str(root)]) == 0
        executed = root / "05_sweep.ipynb"
        pm.execute_notebook(str(NOTEBOOK), str(executed), cwd=str(ROOT), kernel_name="python3", progress_bar=False,
                            parameters=dict(study="nb", root=str(root), top=3, images_dir=str(root / "images")))
        outputs = [o for c in json.loads(executed.read_text())["cells"] for o in c.get("outputs", [])]
        assert not [o for o in outputs if o["output_type"] == "error"]
        text = "".join("".join(o.get("text", "")) for o in outputs)
        assert "study nb: " in text and "plain acc" in text
        cells = json.loads(executed.read_text())["cells"]
        figure_cells = [c for c in cells if "H.sweep.figure(" in "".join(c["source"])]
        assert len(figure_cells) == 4 and all(  # every figure cell shows its figure
            any(o["output_type"] == "display_data" for o in c["outputs"]) for c in figure_cells)
        assert {p.name for p in (root / "images").glob("*.png")} == {
            "sweep_history.png", "sweep_epochs.png", "sweep_importances.png", "sweep_top_runs.png"}
        result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval-lax",
                                 "--nbval-sanitize-with", str(SANITIZE), str(executed)],
                                cwd=ROOT, capture_output=True, text=True)
        assert result.returncode == 0, result.stdout[-3000:]
    finally:
        shutil.rmtree(root, ignore_errors=True)


# --------------------------------------------------------------------------- from the best trial to a run

def test_the_best_trial_comes_with_the_exact_command_that_trains_it_again(tmp_path, capsys, monkeypatch):
    import shlex
    from helpers.record import Record
    from helpers.train import main as train_main
    root = tmp_path / "sweeps"
    space = space_file(tmp_path, {"lr": {"log": [0.2, 1.0]}, "label_smoothing": [0.0, 0.3]})
    assert sweep.main([*TINY, "--epochs", "1", "--space", space, "--trials", "2", "--study", "b",
                       "--root", str(root), "--set", "weight_decay=0.0003"]) == 0
    out = capsys.readouterr().out
    study = sweep.load_study("b", root=root)
    best = sweep.best_run(study)
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


def test_a_killed_worker_does_not_hide_the_others_results(tmp_path, capsys, monkeypatch):
    root = tmp_path / "sweeps"
    args = [*TINY, "--epochs", "1", "--space", space_file(tmp_path), "--trials", "2", "--study", "kw",
            "--root", str(root), "--workers", "2"]

    def one_worker_then_a_kill(parsed, argv):   # worker 0 finishes the study, worker 1 is SIGKILLed
        recipe, space, settings = sweep._prepare(parsed)
        study = sweep.open_study("kw", None, root, settings, "median", 2, heartbeat=None)
        sweep.work(parsed, study, recipe, space)
        print("error: worker 1 exited with code -9 (killed); the results of the trials that finished follow",
              file=sys.stderr)
        return 1
    monkeypatch.setattr(sweep, "spawn", one_worker_then_a_kill)
    assert sweep.main(args) == 1
    out = capsys.readouterr().out
    assert "2 complete" in out and "plain acc" in out and "train the best trial" in out


def test_a_trial_left_running_is_explained(tmp_path, capsys):
    root = tmp_path / "sweeps"
    args = [*TINY, "--epochs", "1", "--space", space_file(tmp_path), "--trials", "1", "--study", "lr",
            "--root", str(root), "--heartbeat", "30"]
    parsed = sweep.get_parser().parse_args(args)
    recipe, space, settings = sweep._prepare(parsed)
    with pytest.warns(UserWarning, match="Heartbeat"):  # Optuna: ask() outside optimize() beats no heart
        sweep.open_study("lr", None, root, settings, "median", 1, heartbeat=30).ask()  # a worker died mid-trial
    assert sweep.main(args) == 0
    err = capsys.readouterr().err
    assert "1 trial(s) still marked running" in err and "heartbeat is 90 s old" in err


@pytest.mark.parametrize("name", ["../escape", "/abs", "", "x?y*#", ".hidden", "a/b"])
def test_a_study_name_is_a_plain_name(name, tmp_path, capsys):
    with pytest.raises(SystemExit):
        sweep.main([*TINY, "--space", space_file(tmp_path), "--trials", "1", "--study", name,
                    "--root", str(tmp_path / "sweeps")])
    assert "use letters, digits, '.', '_' and '-'" in capsys.readouterr().err
    assert not (tmp_path / "escape").exists() and not (tmp_path / "sweeps").exists()
    with pytest.raises(sweep.SweepError):
        sweep.load_study(name, root=tmp_path / "sweeps")


def test_the_storage_url_comes_from_the_environment_or_a_file_and_never_reaches_a_command_line(
        tmp_path, monkeypatch, capsys):
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    monkeypatch.setenv(sweep.STORAGE_ENV, url)
    assert sweep.resolve_storage(None) == url
    (tmp_path / "url.txt").write_text(url + "\n")
    assert sweep.resolve_storage(f"@{tmp_path / 'url.txt'}") == url
    with pytest.raises(sweep.SweepError, match="cannot read a URL"):
        sweep.resolve_storage(f"@{tmp_path / 'none.txt'}")
    sweep.resolve_storage("postgresql://me:s3cret@db.example/sweeps")
    note = capsys.readouterr().out
    assert "s3cret" not in note and "~/.pgpass or PGPASSWORD" in note
    sweep.resolve_storage("postgresql://me@db.example/sweeps")   # no password: nothing to say
    assert capsys.readouterr().out == ""
    # workers started by --workers get the URL in their environment, not in their arguments
    started = []
    monkeypatch.setattr(sweep.subprocess, "Popen", lambda cmd, env: started.append((cmd, env)) or
                        type("P", (), {"wait": lambda self: 0})())
    args = sweep.get_parser().parse_args([*TINY, "--space", "x", "--trials", "2", "--study", "s", "--workers", "2",
                                          "--storage", "postgresql://me:s3cret@db/s"])
    assert sweep.spawn(args, ["--study", "s", "--storage", "postgresql://me:s3cret@db/s", "--workers", "2"]) == 0
    assert all("s3cret" not in " ".join(cmd) and env[sweep.STORAGE_ENV].endswith("@db/s") for cmd, env in started)


def test_a_postgres_restart_mid_study_is_survived(tmp_path, postgres_url):
    """The worker reconnects (with backoff) instead of dying with a 446-line traceback, and its trial
    does not stay RUNNING forever (it would count toward --trials and the study would never finish)."""
    root = tmp_path / "sweeps"
    # one trial long enough (about 0.1 s an epoch) that the restart lands in the middle of it
    args = [*TINY, "--epochs", "150", "--space", space_file(tmp_path), "--trials", "1", "--study", "pgr",
            "--storage", postgres_url, "--heartbeat", "2", "--pruner", "none", "--root", str(root)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    worker = subprocess.Popen([sys.executable, "-m", "helpers.sweep", *args], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:   # until the first trial has reported an epoch
            time.sleep(0.3)
            with contextlib.suppress(Exception):
                trials = trials_of(root, "pgr", postgres_url)
                if trials and len(trials[0].intermediate_values) >= 2:
                    break
        assert worker.poll() is None, "the trial ended before the restart: make it longer"
        postgres_url.restart()
        out, err = worker.communicate(timeout=300)
    finally:
        if worker.poll() is None:
            worker.kill()
    assert worker.returncode == 0, err[-3000:]
    # one line from the worker, then on; Optuna may log the objective's exception as a warning, but the
    # error it used to die of while handling it is gone
    assert "UnboundLocalError" not in err and "the study's database failed (" in err and "reconnected" in err
    trials = trials_of(root, "pgr", postgres_url)
    assert not [t.number for t in trials if t.state == TrialState.RUNNING]
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(done) == 1 and done[0].user_attrs.get("retry_of") == 0   # trial 0 failed, its retry finished


def test_a_trial_running_without_a_heartbeat_record_is_failed_and_retried(tmp_path, capsys):
    """Optuna's stale check skips trials that never got a heartbeat record (a worker that died before its
    first beat, a database restart): they counted as running forever, so the study never finished."""
    root = tmp_path / "sweeps"
    args = [*TINY, "--epochs", "1", "--space", space_file(tmp_path), "--trials", "2", "--study", "hb",
            "--root", str(root), "--heartbeat", "1"]
    parsed = sweep.get_parser().parse_args(args)
    recipe, space, settings = sweep._prepare(parsed)
    study = sweep.open_study("hb", None, root, settings, "median", 2, heartbeat=1)
    dists = {"lr": optuna.distributions.FloatDistribution(0.1, 1.0, log=True),
             "label_smoothing": optuna.distributions.FloatDistribution(0.0, 0.3)}
    with pytest.warns(UserWarning, match="Heartbeat"):
        orphan = study.ask(dists)   # RUNNING, and no heartbeat record: ask() is not optimize()
        beating = study.ask(dists)
    study._storage.record_heartbeat(beating._trial_id)
    time.sleep(0.2)
    assert [t.number for t in sweep._without_heartbeat(study, 0.1)] == [orphan.number]
    study.tell(beating, state=TrialState.FAIL)
    time.sleep(3.1)   # the grace period: 3 heartbeats of 1 s
    assert sweep.main(args) == 0
    assert f"trial {orphan.number} failed (running for over 3 s without a heartbeat" in capsys.readouterr().err
    trials = trials_of(root, "hb")
    assert trials[orphan.number].state == TrialState.FAIL
    assert len([t for t in trials if t.state == TrialState.COMPLETE]) == 2
    assert any(t.user_attrs.get("retry_of") == orphan.number for t in trials)


def test_a_worker_reconnects_when_the_database_fails(tmp_path, capsys, monkeypatch):
    root = tmp_path / "sweeps"
    args = [*TINY, "--epochs", "1", "--space", space_file(tmp_path), "--trials", "2", "--study", "rc",
            "--root", str(root)]
    real, calls = optuna.Study.optimize, []

    def fails_once(self, *a, **k):
        calls.append(1)
        if len(calls) == 1:
            try:
                raise optuna.exceptions.StorageInternalError("server closed the connection unexpectedly")
            except optuna.exceptions.StorageInternalError:
                raise UnboundLocalError("cannot access local variable 'updated_state'")  # what Optuna raises next
        return real(self, *a, **k)
    monkeypatch.setattr(optuna.Study, "optimize", fails_once)
    monkeypatch.setattr(sweep, "RECONNECT_DELAYS", (0,))
    assert sweep.main(args) == 0
    err = capsys.readouterr().err
    assert "the study's database failed (server closed the connection unexpectedly): reconnecting in 0 s" in err
    assert "reconnected" in err and len(calls) == 2
    assert len([t for t in trials_of(root, "rc") if t.state == TrialState.COMPLETE]) == 2
