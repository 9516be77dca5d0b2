"""The sweep command (helpers/sweep/__main__.py): bad input is one line before any training, a re-run continues
its study, several worker processes share one study (SQLite, and PostgreSQL when a server can be started
here), a dead worker or a failing database does not lose the study, a study kept on Google Drive is never
written there by SQLite (only whole copies) and continues in another runtime. The pieces are tested apart:
tests/test_sweep_space.py, test_sweep_study.py (results, notebook 05), test_sweep_objective.py (one trial),
test_sweep_figures.py."""
import contextlib
import glob
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from conftest import PROJECT, TINY, space_file, sweep_cli, trials_of
from helpers import colab
from helpers.sweep import __main__ as sweep
from helpers.sweep import study as st


def assert_no_duplicate_or_lost(trials, n, root, study):
    """Trial numbers 0..M-1 once each, n <= M finished, each finished trial with its own run folder."""
    numbers = sorted(t.number for t in trials)
    assert numbers == list(range(len(trials)))
    done = [t for t in trials if t.state in st.DONE]
    assert len(done) == len(trials), [t.state for t in trials]
    # a worker may start one trial while the other is finishing the last: at most n + workers - 1
    assert n <= len(done) <= n + 1
    for t in done:
        history = json.loads((Path(t.user_attrs["run_dir"]) / "history.json").read_text())
        assert history["config"]["name"] == f"trial-{t.number:03d}"
    folders = sorted(p.name for p in (Path(root) / study).glob("trial-*"))
    assert folders == [f"trial-{t.number:03d}" for t in sorted(done, key=lambda t: t.number)]


# --------------------------------------------------------------------------- CLI input

def _argv(tmp_path, **flags):
    base = {"--space": space_file(tmp_path), "--trials": "2", "--study": "s", "--root": str(tmp_path / "sweeps"),
            **flags}
    return [*TINY, *(x for kv in base.items() for x in kv)]


@pytest.mark.parametrize("flags, message", [
    ({"--space": "nope"}, "space 'nope' not found"),
    ({"--lr": "0.3"}, "lr both fixed by a flag and listed in the space"),
    ({"--storage": "mysql://u@nowhere/db"}, "database driver is not installed"),
    ({"--set": "precision=fp64"}, "precision must be one of"),
    ({"--set": "epochs=0"}, "epochs must be >= 1"),
    ({"--space": '{"lr": [0.1, 1.0], "precision": "fp32"}'}, "'precision' is a run setting"),
])
def test_bad_input_is_one_line_exit_2(tmp_path, capsys, flags, message):
    if flags.get("--space", "").startswith("{"):   # a space file of its own (_argv writes space.json)
        (tmp_path / "settings-space.json").write_text(flags["--space"])
        flags = {"--space": str(tmp_path / "settings-space.json")}
    assert sweep.main(_argv(tmp_path, **flags)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and message in err
    assert not list((tmp_path / "sweeps").glob("*/trial-*"))   # nothing trained


def test_the_shared_checks_refuse_a_data_folder_without_a_folder(tmp_path, capsys):
    """cli.parse's checks, the same as train's: argparse's error, exit 2, before any study or training."""
    with pytest.raises(SystemExit) as exited:
        sweep.main(_argv(tmp_path, **{"--data": "folder"}))
    assert exited.value.code == 2 and "--data folder needs --data-dir" in capsys.readouterr().err
    assert not (tmp_path / "sweeps").exists()   # nothing trained, no study made


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


def test_run_settings_reach_every_trial_but_are_not_what_the_study_searches(tmp_path, capsys):
    """--precision, --device and --set of a settings field go to the trials (their run config, the best
    command but its device); the study's identity holds the recipe fields only, so another precision
    continues the same study."""
    root = tmp_path / "sweeps"
    common = [*TINY, "--epochs", "1", "--trials", "1", "--study", "rs", "--root", str(root),
              "--space", space_file(tmp_path)]
    assert sweep.main([*common, "--precision", "fp32", "--device", "cpu", "--set", "channels_last=false"]) == 0
    study = st.load_study("rs", root=root)
    assert study.user_attrs["settings"]["overrides"] == {"epochs": 1, "batch_size": 50}
    trial = study.trials[0]
    assert trial.user_attrs["settings"] == dict(device="cpu", precision="fp32", compile="auto", channels_last=False)
    config = json.loads((Path(trial.user_attrs["run_dir"]) / "history.json").read_text())["config"]
    assert config["settings"]["precision"] == "fp32" and config["settings"]["channels_last"] is False
    command = st.best_run(study)["command"]
    assert "precision=" in command and "channels_last=false" in command and "device" not in command
    assert command in capsys.readouterr().out
    assert sweep.main([*common, "--precision", "bf16"]) == 0
    assert "already holds 1 finished trials" in capsys.readouterr().err


# --------------------------------------------------------------------------- workers

def test_two_worker_processes_share_one_sqlite_study(tmp_path):
    root = tmp_path / "sweeps"
    result = sweep_cli(*TINY, "--epochs", "2", "--space", space_file(tmp_path), "--trials", "6", "--study", "w",
                       "--workers", "2", root=root)
    print(result.stderr[-1500:])   # shown with -s: the workers' trial lines and the summary
    trials = trials_of(root, "w")
    assert_no_duplicate_or_lost(trials, 6, root, "w")
    assert len({t.user_attrs["worker"] for t in trials}) == 2   # both processes ran trials
    assert "val acc" in result.stdout and (root / "w" / "plots" / "history.png").is_file()


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
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(PROJECT)}
    procs = [subprocess.Popen([sys.executable, "-m", "helpers.sweep", *common], cwd=PROJECT, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-2000:]
    trials = trials_of(root, "pg", postgres_url)
    assert_no_duplicate_or_lost(trials, 6, root, "pg")
    assert len({t.user_attrs["worker"] for t in trials}) == 2


# --------------------------------------------------------------------------- dead workers, failing databases

def test_a_killed_worker_does_not_hide_the_others_results(tmp_path, capsys, monkeypatch):
    root = tmp_path / "sweeps"
    args = [*TINY, "--epochs", "1", "--space", space_file(tmp_path), "--trials", "2", "--study", "kw",
            "--root", str(root), "--workers", "2"]

    def one_worker_then_a_kill(parsed, argv):   # worker 0 finishes the study, worker 1 is SIGKILLed
        recipe, space, settings = sweep._prepare(parsed)
        study = st.open_study("kw", None, root, settings, "median", 2, heartbeat=None)
        sweep.work(parsed, study, recipe, space)
        print("error: worker 1 exited with code -9 (killed); the results of the trials that finished follow",
              file=sys.stderr)
        return 1
    monkeypatch.setattr(sweep, "spawn", one_worker_then_a_kill)
    assert sweep.main(args) == 1
    out = capsys.readouterr().out
    assert "2 complete" in out and "val acc" in out and "train the best trial" in out


def test_a_trial_left_running_is_explained(tmp_path, capsys):
    root = tmp_path / "sweeps"
    args = [*TINY, "--epochs", "1", "--space", space_file(tmp_path), "--trials", "1", "--study", "lr",
            "--root", str(root), "--heartbeat", "30"]
    parsed = sweep.get_parser().parse_args(args)
    recipe, space, settings = sweep._prepare(parsed)
    with pytest.warns(UserWarning, match="Heartbeat"):  # Optuna: ask() outside optimize() beats no heart
        st.open_study("lr", None, root, settings, "median", 1, heartbeat=30).ask()  # a worker died mid-trial
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
    with pytest.raises(st.SweepError):
        st.load_study(name, root=tmp_path / "sweeps")


def test_the_storage_url_comes_from_the_environment_or_a_file_and_never_reaches_a_command_line(
        tmp_path, monkeypatch, capsys):
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    monkeypatch.setenv(st.STORAGE_ENV, url)
    assert st.resolve_storage(None) == url
    (tmp_path / "url.txt").write_text(url + "\n")
    assert st.resolve_storage(f"@{tmp_path / 'url.txt'}") == url
    with pytest.raises(st.SweepError, match="cannot read a URL"):
        st.resolve_storage(f"@{tmp_path / 'none.txt'}")
    st.resolve_storage("postgresql://me:s3cret@db.example/sweeps")
    note = capsys.readouterr().out
    assert "s3cret" not in note and "~/.pgpass or PGPASSWORD" in note
    st.resolve_storage("postgresql://me@db.example/sweeps")   # no password: nothing to say
    assert capsys.readouterr().out == ""
    # workers started by --workers get the URL in their environment, not in their arguments
    started = []
    monkeypatch.setattr(sweep.subprocess, "Popen", lambda cmd, env: started.append((cmd, env)) or
                        type("P", (), {"wait": lambda self: 0})())
    args = sweep.get_parser().parse_args([*TINY, "--space", "x", "--trials", "2", "--study", "s", "--workers", "2",
                                          "--storage", "postgresql://me:s3cret@db/s"])
    assert sweep.spawn(args, ["--study", "s", "--storage", "postgresql://me:s3cret@db/s", "--workers", "2"]) == 0
    assert all("s3cret" not in " ".join(cmd) and env[st.STORAGE_ENV].endswith("@db/s") for cmd, env in started)


def test_a_postgres_restart_mid_study_is_survived(tmp_path, postgres_url):
    """The worker reconnects (with backoff) instead of dying with a 446-line traceback, and its trial
    does not stay RUNNING forever (it would count toward --trials and the study would never finish)."""
    root = tmp_path / "sweeps"
    # one trial long enough (about 0.1 s an epoch) that the restart lands in the middle of it
    args = [*TINY, "--epochs", "150", "--space", space_file(tmp_path), "--trials", "1", "--study", "pgr",
            "--storage", postgres_url, "--heartbeat", "2", "--pruner", "none", "--root", str(root)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(PROJECT)}
    worker = subprocess.Popen([sys.executable, "-m", "helpers.sweep", *args], cwd=PROJECT, env=env,
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
    # one line from the worker, then on; Optuna may log the objective's exception as a warning, but handling
    # it must raise nothing of its own (an UnboundLocalError there ends the worker)
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
    study = st.open_study("hb", None, root, settings, "median", 2, heartbeat=1)
    dists = {"lr": optuna.distributions.FloatDistribution(0.1, 1.0, log=True),
             "label_smoothing": optuna.distributions.FloatDistribution(0.0, 0.3)}
    with pytest.warns(UserWarning, match="Heartbeat"):
        orphan = study.ask(dists)   # RUNNING, and no heartbeat record: ask() is not optimize()
        beating = study.ask(dists)
    study._storage.record_heartbeat(beating._trial_id)
    time.sleep(0.2)
    assert [t.number for t in st.without_heartbeat(study, 0.1)] == [orphan.number]
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


# --------------------------------------------------------------------------- a root on Google Drive (Colab)

_seen = None   # (event, path) of what this process does while a test records it; None: not recording


def _audit(event, args):
    # audit hooks cannot be removed: this one stays installed for the session and records nothing between tests
    if _seen is not None and event in ("sqlite3.connect", "os.rename"):
        _seen.append((event, os.path.abspath(os.fsdecode(args[0] if event == "sqlite3.connect" else args[1]))))


@contextlib.contextmanager
def recording():
    """Every database SQLite connects to and every rename's target (os.replace raises "os.rename"), meanwhile."""
    global _seen
    if not getattr(recording, "hooked", False):
        sys.addaudithook(_audit)
        recording.hooked = True
    _seen = []
    try:
        yield _seen
    finally:
        _seen = None


@pytest.fixture
def drive_root(tmp_path, monkeypatch):
    """--root on a stand-in Google Drive; this runtime's local disk (tempfile's folder) is tmp_path/runtime-a."""
    monkeypatch.setenv("CIFAR_DRIVE_MOUNT", str(tmp_path / "drive"))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "runtime-a"))
    (tmp_path / "runtime-a").mkdir()
    (tmp_path / "drive" / "MyDrive").mkdir(parents=True)
    return tmp_path / "drive" / "MyDrive" / "sweeps"


def test_a_sweep_with_its_root_on_drive_never_opens_sqlite_there(tmp_path, drive_root, capsys):
    args = [*TINY, "--epochs", "1", "--space", space_file(tmp_path), "--trials", "2", "--study", "d",
            "--root", str(drive_root)]
    with recording() as seen:
        assert sweep.main(args) == 0
    local, on_drive = st.working_db("d", drive_root), drive_root / "d" / "study.db"
    opened = [path for event, path in seen if event == "sqlite3.connect"]
    assert str(local) in opened                      # the hook saw the sweep's own database ...
    assert [p for p in opened if colab.on_drive(p)] == []   # ... and none on Drive
    assert not colab.on_drive(local)
    # whole copies renamed into place: after each of the 2 finished trials, and at the end of the command
    assert [path for event, path in seen if event == "os.rename"].count(str(on_drive)) == 3
    out, err = capsys.readouterr()
    assert (f"study d is worked on this machine's disk ({local}), since SQLite's locking is not reliable on Google "
            f"Drive; copied to {on_drive} after each finished trial and at the end") in err
    assert f"study copied to Google Drive: {on_drive}" in out
    # no Colab here: the flush cannot happen, and the command says what to run instead
    assert ("Google Drive was not flushed" in err
            and "run `from google.colab import drive; drive.flush_and_unmount()` in this one" in err)
    assert len([t for t in trials_of(drive_root, "d") if t.state in st.DONE]) == 2
    assert (drive_root / "d" / "trial-000" / "history.json").is_file()   # the run folders stay on Drive


def test_a_study_on_drive_continues_in_another_runtime_and_back(tmp_path, drive_root, monkeypatch, capsys):
    common = [*TINY, "--epochs", "1", "--space", space_file(tmp_path), "--study", "d", "--root", str(drive_root)]
    assert sweep.main([*common, "--trials", "1"]) == 0                        # runtime A
    first = {t.number: t.params for t in trials_of(drive_root, "d")}
    capsys.readouterr()
    # runtime B: a new machine, whose disk holds no copy; Colab's drive module there flushes
    flushed = []
    monkeypatch.setattr(colab, "_drive_module",
                        lambda: types.SimpleNamespace(flush_and_unmount=lambda: flushed.append(True)))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "runtime-b"))
    (tmp_path / "runtime-b").mkdir()
    assert not st.working_db("d", drive_root).is_file()
    assert sweep.main([*common, "--trials", "2"]) == 0
    out, err = capsys.readouterr()
    assert f"study d: copied from Google Drive ({drive_root / 'd' / 'study.db'}) to this machine's disk" in err
    assert flushed == [True] and "Google Drive flushed and unmounted" in out and "not flushed" not in err
    # back in runtime A, whose copy is now older than Drive's
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "runtime-a"))
    assert sweep.main([*common, "--trials", "3"]) == 0
    assert "study d: copied from Google Drive" in capsys.readouterr().err
    trials = trials_of(drive_root, "d")
    assert len([t for t in trials if t.state in st.DONE]) == 3
    assert {t.number: t.params for t in trials if t.number in first} == first   # the first runtime's trial
    # A's copy is now Drive's: a later command here copies nothing back
    assert not st.pull_from_drive("d", drive_root)
