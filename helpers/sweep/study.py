"""A sweep's study: where it is kept (a database), how it is opened, exported and read back, and its results.

Optuna keeps the study in a database: a SQLite file runs/sweeps/<study>/study.db by default, which the
worker processes of one machine share; any SQLAlchemy URL (postgresql://...) lets workers on several
machines join the same study. With the studies' folder on Google Drive, the SQLite file is worked on this
machine's disk and copied to Drive whole (working_db, pull_from_drive, push_to_drive): SQLite's locking
is not reliable on network and FUSE filesystems, and two processes writing a database there can corrupt
it. A finished study is also one JSON file (export_study); the published ones ship in helpers/studies/
and load_study falls back to them. Results: counts, describe (one line), table
(the best trials), best_run (the exact command that trains the best trial again), records (their
histories, for plots; the figures are in figures.py, study_figure).

What a study optimises (objective_metric, objective_line): the plain validation accuracy of a validation split
held out of the training split (its setting `val` is part of the study's identity; SWEEP_VAL by default), so
that choosing among trials never looks at the test set; each trial's test accuracy is recorded beside it,
never optimised. A study made with --val 0, and one made before validation splits existed, optimised test
accuracy, and says so wherever its numbers are shown.

Trial states, and why (user attribute "stopped"): COMPLETE trained to the end; PRUNED by the pruner
(lagging accuracy), by the rules (rejected before training) or for a diverging loss; FAIL when its worker
died (found by Optuna's heartbeat, or by without_heartbeat: the trial is retried once) or raised an error.
"""
from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import os
import re
import shlex
import shutil
import socket
import sqlite3
import tempfile
import time
import urllib.parse
import warnings
from pathlib import Path

import optuna
from optuna.trial import TrialState

from ..colab import DRIVE_DELAY, on_drive
from ..recipes import Recipe, Settings, get_recipe, split_fields
from ..record import Record
from ..rundir import atomic_write
from .space import SweepError

STUDIES = Path(__file__).resolve().parents[1] / "studies"  # published studies (export_study's JSON), found by name
SWEEPS = Path("runs/sweeps")                         # one folder per study, relative to the project root
DONE = (TrialState.COMPLETE, TrialState.PRUNED)      # trials that count toward --trials
# a study remembers what it searches; a re-run that changes one of these is another study
IDENTITY = ("recipe", "overrides", "space", "data", "limit", "seed", "pruner", "val")
# what a study made before an IDENTITY key existed had: before validation splits, every study tuned on the test
# set, as --val 0 does now (so `--val 0` continues such a study, and any other val is another study)
IDENTITY_BEFORE = {"val": 0}
# the validation split a sweep holds out unless --val says otherwise: a fraction, so that it scales with --limit
# (a 200-image test sweep and a full one both work without the flag); on CIFAR-10's 50,000 training images it is
# the customary 5,000 (about +-0.6 points of standard error at 80 %), leaving 45,000 to train on
SWEEP_VAL = 0.1
STORAGE_ENV = "CIFAR_SWEEP_STORAGE"
DB = "study.db"                                      # a study's SQLite file, in its folder


# --------------------------------------------------------------------------- names and storage

STUDY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def check_study_name(name) -> str:
    """A study name is a folder under --root and part of a database URL: letters, digits, '.', '_' and
    '-', starting with a letter or digit (no '/', '..', '?' or '#', which would escape --root or cut the URL)."""
    if not isinstance(name, str) or not STUDY_NAME.fullmatch(name):
        raise SweepError(f"study name {name!r}: use letters, digits, '.', '_' and '-' (starting with a letter or "
                         "digit), e.g. fast-lr-wd")
    return name


def study_dir(study: str, root=SWEEPS) -> Path:
    return Path(root) / check_study_name(study)


def _retry_callback():
    # the stale-trial callback's name depends on the Optuna release (>= 3.5 allowed); both re-enqueue the params
    cls = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None)
    if cls is not None:
        return "heartbeat_stale_trial_callback", cls(max_retry=1)
    return "failed_trial_callback", optuna.storages.RetryFailedTrialCallback(max_retry=1)


def make_storage(storage: str | None, study: str, root=SWEEPS, heartbeat: int | None = 60):
    """RDBStorage for a URL, or the study's own SQLite file (working_db: on this machine's disk when `root`
    is on Google Drive); with a heartbeat, a trial whose worker stopped beating for 3 intervals is failed
    (and retried once) when a worker next starts one."""
    if storage is None:
        study_dir(study, root).mkdir(parents=True, exist_ok=True)   # the trials' run folders go there
        storage = f"sqlite:///{working_db(study, root)}"
    storage = _with_driver(storage)
    # SQLite: wait for a busy writer instead of failing at once; servers: drop dead connections
    engine = {"connect_args": {"timeout": 60}} if storage.startswith("sqlite") else {"pool_pre_ping": True}
    kwargs = {}
    for attempt in range(3):
        try:
            with warnings.catch_warnings():  # the heartbeat and retry are "experimental" to Optuna: not news
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                if heartbeat:
                    name, callback = _retry_callback()
                    kwargs = dict(heartbeat_interval=heartbeat, grace_period=3 * heartbeat, **{name: callback})
                return optuna.storages.RDBStorage(storage, engine_kwargs=engine, **kwargs)
        except ImportError:
            raise SweepError(f"storage {storage.split(':')[0]}: its database driver is not installed "
                             "(PostgreSQL: pip install 'psycopg[binary]'; MySQL: pip install pymysql)") from None
        except Exception as e:  # sqlalchemy's errors: name the server's problem in one line
            if attempt < 2:
                # workers started together race to create the tables: the loser finds them made
                time.sleep(1 + attempt)
                continue
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise SweepError(f"cannot open storage {_safe_url(storage)}: {first}") from None


def resolve_storage(storage: str | None, log=print) -> str | None:
    """The storage URL: `storage` as given, "@FILE" for the URL in FILE's first line, or None for the
    CIFAR_SWEEP_STORAGE environment variable (unset: the study's own SQLite file).

    A URL with a password on a command line can be read by every user of the machine (`ps`), and in a
    notebook parameter it is saved with the notebook: PostgreSQL's own ~/.pgpass or PGPASSWORD (libpq
    reads both; the URL then holds no password), the variable or a file keep it out of both."""
    if storage is None:
        return os.environ.get(STORAGE_ENV) or None
    if storage.startswith("@"):
        try:
            return Path(storage[1:]).expanduser().read_text().strip().splitlines()[0]
        except (OSError, IndexError):
            raise SweepError(f"--storage {storage}: cannot read a URL from {storage[1:]}") from None
    if urllib.parse.urlsplit(storage).password:
        log(f"note: the password in {_safe_url(storage)} is visible to other users (ps) and is saved wherever this "
            f"command is: use ~/.pgpass or PGPASSWORD, or pass the URL in {STORAGE_ENV} or --storage @FILE")
    return storage


def _with_driver(url: str) -> str:
    """A plain postgresql:// URL uses whichever driver is installed: SQLAlchemy 2.1 means psycopg 3
    by it, older versions psycopg2."""
    import importlib.util

    if url.startswith("postgresql://"):
        for module, dialect in (("psycopg", "psycopg"), ("psycopg2", "psycopg2")):
            if importlib.util.find_spec(module):
                return url.replace("postgresql://", f"postgresql+{dialect}://", 1)
    return url


def _safe_url(url: str) -> str:
    """The URL without its password, for messages."""
    head, at, tail = url.rpartition("@")
    return (head.split(":")[0] + "://***@" + tail) if at and "://" in head else url


# --------------------------------------------------------------------------- SQLite studies kept on Google Drive
# SQLite's locking is not reliable on network and FUSE filesystems (SQLite's documentation says so), and
# Drive in Colab is one: two processes writing a study there can corrupt it. So while a sweep runs, its
# SQLite file lives on this machine's disk, and Drive gets whole copies of it, made consistent by SQLite's
# backup API and put in place by a rename; no SQLite connection is ever opened on Drive by a sweep.

def drive_backed(storage: str | None, root) -> bool:
    """Does this sweep keep its study as a SQLite file on Google Drive (the default storage, `root` on
    Drive)? A storage URL (PostgreSQL) is a server's business, wherever the run folders are."""
    return storage is None and on_drive(root)


def working_db(study: str, root=SWEEPS) -> Path:
    """The SQLite file a sweep writes: ROOT/STUDY/study.db, or, with `root` on Google Drive, a file on this
    machine's disk named after the Drive folder and the study, so every worker process of this machine
    (and every later command here) finds the same one."""
    if not on_drive(root):
        return study_dir(study, root) / DB
    digest = hashlib.sha256(os.path.abspath(study_dir(study, root)).encode()).hexdigest()[:12]
    folder = Path(tempfile.gettempdir()) / "cifar10-sweeps" / f"{check_study_name(study)}-{digest}"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / DB


@contextlib.contextmanager
def _copying(local: Path):
    """One copy between this machine and Drive at a time: the workers of one machine each copy after their
    trials, and an older snapshot must not replace a newer one on Drive. fcntl is POSIX's (Colab's);
    elsewhere copies are not serialized, and the command's own copy at its end is the newest anyway."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(local.with_name(f"{DB}.copy-lock"), "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _set_mtime(path: Path, mtime_ns: int):
    # both copies carry the time of the local file's last write: a copy is "older" only when the other
    # side has written since. A filesystem that refuses (Drive may) costs one needless copy back, no more
    with contextlib.suppress(OSError):
        os.utime(path, ns=(mtime_ns, mtime_ns))


def pull_from_drive(study: str, root) -> bool:
    """Copy the study from Drive (ROOT/STUDY/study.db) to its working file when that is missing (a new
    runtime) or older than Drive's copy (the study went on in another runtime). Returns whether it copied.
    Call it before any process opens the working file: the copy replaces it."""
    drive, local = study_dir(study, root) / DB, working_db(study, root)
    if not drive.is_file():
        return False
    with _copying(local):
        mtime = drive.stat().st_mtime_ns
        if local.is_file() and local.stat().st_mtime_ns >= mtime:
            return False
        # a journal left by a process that died belongs to the old file: SQLite would replay it onto this one
        for leftover in ("-journal", "-wal", "-shm"):
            local.with_name(DB + leftover).unlink(missing_ok=True)
        atomic_write(local, lambda f: _copy_bytes(drive, f))   # Drive's copy is whole: put there by a rename
        _set_mtime(local, mtime)
    return True


def push_to_drive(study: str, root) -> Path:
    """Copy the working file to Drive as ROOT/STUDY/study.db: a consistent snapshot (SQLite's backup API,
    into a file on this machine's disk), whose bytes go to a temporary name on Drive, renamed into place.
    Safe while workers write the study; raises OSError when Drive cannot be written."""
    drive, local = study_dir(study, root) / DB, working_db(study, root)
    snapshot = local.with_name(f"{DB}.{os.getpid()}.snapshot")
    with _copying(local):
        mtime = local.stat().st_mtime_ns   # before the snapshot: a write during it makes the local file newer
        try:
            with contextlib.closing(sqlite3.connect(local, timeout=60)) as source, \
                    contextlib.closing(sqlite3.connect(snapshot)) as copy:
                source.backup(copy)
            atomic_write(drive, lambda f: _copy_bytes(snapshot, f))
            _set_mtime(drive, mtime)
        finally:
            snapshot.unlink(missing_ok=True)
    return drive


def _copy_bytes(source: Path, f):
    with open(source, "rb") as src:
        shutil.copyfileobj(src, f, 1 << 20)


# --------------------------------------------------------------------------- opening, exporting

def make_pruner(name: str):
    if name == "median":
        # once 3 trials have completed, compare at every epoch with their median there
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=0)
    if name == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise SweepError(f"unknown pruner {name!r}; choose median, halving or none")


def open_study(name: str, storage=None, root=SWEEPS, settings: dict | None = None, pruner="median",
               trials: int = 12, heartbeat: int | None = 60) -> optuna.Study:
    """Create the study or continue it; `settings` (what it searches: the IDENTITY keys, stored as the
    study's user attribute "settings") must match what it was created with."""
    sampler = optuna.samplers.TPESampler(n_startup_trials=max(3, min(10, trials // 3)), constant_liar=True)
    study = optuna.create_study(study_name=name, storage=make_storage(storage, name, root, heartbeat),
                                direction="maximize", sampler=sampler, pruner=make_pruner(pruner),
                                load_if_exists=True)
    if settings is not None:
        before = study.user_attrs.get("settings")
        if before is None:
            study.set_user_attr("settings", settings)
        else:
            was = {k: before.get(k, IDENTITY_BEFORE.get(k)) for k in IDENTITY}
            changed = [k for k in IDENTITY if was[k] != settings.get(k)]
            if changed:
                raise SweepError(f"study {name!r} was created with other {', '.join(changed)} "
                                 f"({', '.join(f'{k}={json.dumps(was[k])}' for k in changed)}); "
                                 "re-run it with the same settings, or name a new --study")
    return study


def load_study(name: str, storage=None, root=SWEEPS, log=print) -> optuna.Study:
    """An existing study, for results (notebook 05): from `storage` (or CIFAR_SWEEP_STORAGE), else the
    study's SQLite file in `root` (on Drive too: the copy a sweep put there), else the published copy
    shipped with the package (helpers/studies/NAME.json)."""
    storage = resolve_storage(storage, log)
    path = study_dir(name, root) / DB
    if storage is None and not path.is_file():
        # Drive shows another runtime's files late: a sweep that ran elsewhere may not be visible yet
        late = (f" {root} is on Google Drive, which can take {DRIVE_DELAY} to show files written by another "
                "runtime: if the sweep ran in another one, rerun this cell in a minute" if on_drive(root) else "")
        shipped = STUDIES / f"{name}.json"
        if shipped.is_file():
            log(f"no study {name!r} in {study_dir(name, root)}: showing the published one shipped with the "
                f"project (helpers/studies/{shipped.name}); run python -m helpers.sweep for a study of your own"
                + (f".{late}" if late else ""))
            return import_study(shipped)
        published = ", ".join(sorted(p.stem for p in STUDIES.glob("*.json"))) or "none"
        raise SweepError(f"no study {name!r} in {study_dir(name, root)}; {_studies_in(root)}; published: "
                         f"{published}. Name one of these, or run python -m helpers.sweep --study {name} first."
                         + late)
    try:  # the file itself, also on Drive: reading results is one process, and no sweep writes it in place
        return optuna.load_study(study_name=name, storage=make_storage(storage or f"sqlite:///{path}", name, root,
                                                                       heartbeat=None))
    except KeyError:
        raise SweepError(f"storage holds no study named {name!r}") from None


def _studies_in(root) -> str:
    """The studies under `root`, with their trial counts where the file can be read, as a phrase."""
    root = Path(root)
    if not root.is_dir():
        return f"{root} does not exist"
    found = [db.parent.name if (n := _trial_count(db)) is None else f"{db.parent.name} ({n} trial{'s' * (n != 1)})"
             for db in sorted(root.glob(f"*/{DB}"))]
    return f"studies in {root}: {', '.join(found)}" if found else f"no studies in {root}"


def _trial_count(db: Path) -> int | None:
    """The trials in a study file, read-only (one query); None when it cannot be read (busy, damaged)."""
    try:
        with contextlib.closing(sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, timeout=1)) as c:
            return c.execute("SELECT COUNT(*) FROM trials").fetchone()[0]
    except sqlite3.Error:
        return None


def export_study(study: optuna.Study, path) -> Path:
    """The whole study as one JSON file (trials, their values per epoch, attributes, times): readable,
    diffable, and loadable anywhere by import_study without a database."""
    path = Path(path)

    def portable(attrs):  # a trial's run folder relative to the file's folder: no machine paths in it
        run_dir = attrs.get("run_dir")
        if not run_dir:
            return attrs
        return {**attrs, "run_dir": os.path.relpath(Path(run_dir).resolve(), path.parent.resolve())}

    trials = [dict(number=t.number, state=t.state.name, value=t.value, params=t.params,
                   distributions={k: optuna.distributions.distribution_to_json(d) for k, d in t.distributions.items()},
                   intermediate_values=t.intermediate_values, user_attrs=portable(t.user_attrs),
                   datetime_start=t.datetime_start.isoformat() if t.datetime_start else None,
                   datetime_complete=t.datetime_complete.isoformat() if t.datetime_complete else None)
              for t in study.get_trials(deepcopy=False)]
    # which number is which: the value Optuna maximised (objective_metric), and each trial's test accuracy beside it
    doc = dict(study=study.study_name, direction=study.direction.name, objective=objective_line(study),
               objective_metric=objective_metric(study), user_attrs=study.user_attrs, best=best_run(study),
               trials=trials)
    atomic_write(path, lambda f: f.write((json.dumps(doc, indent=1) + "\n").encode()))
    return path


def import_study(path) -> optuna.Study:
    """An in-memory study rebuilt from export_study's file."""
    doc = json.loads(Path(path).read_text())
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "new study created in memory" line
    try:
        study = optuna.create_study(study_name=doc["study"], direction=doc["direction"].lower())
    finally:
        optuna.logging.set_verbosity(verbosity)
    for k, v in doc["user_attrs"].items():
        study.set_user_attr(k, v)
    for t in doc["trials"]:
        when = [datetime.datetime.fromisoformat(t[k]) if t[k] else None
                for k in ("datetime_start", "datetime_complete")]
        study.add_trial(optuna.trial.FrozenTrial(
            number=t["number"], state=TrialState[t["state"]], value=t["value"], datetime_start=when[0],
            datetime_complete=when[1], params=t["params"],
            distributions={k: optuna.distributions.json_to_distribution(d) for k, d in t["distributions"].items()},
            user_attrs=t["user_attrs"], system_attrs={},
            intermediate_values={int(k): v for k, v in t["intermediate_values"].items()}, trial_id=t["number"]))
    return study


# --------------------------------------------------------------------------- workers that die, databases that fail

def worker_id() -> str:
    """This process, as a trial's "worker" attribute records it: host:pid."""
    return f"{socket.gethostname()}:{os.getpid()}"


def without_heartbeat(study: optuna.Study, older_than: float) -> list:
    """RUNNING trials started over `older_than` seconds ago that have no heartbeat record: their worker
    died before its first beat, or lost the database (a server restart). Optuna's own stale check skips
    trials without a record, so they would count as running forever and the study could never finish."""
    backend = getattr(study._storage, "_backend", study._storage)
    try:  # Optuna's heartbeat table: no public API lists which trials have a record
        from optuna.storages._rdb import models

        with backend.scoped_session() as session:
            beating = {tid for (tid,) in session.query(models.TrialHeartbeatModel.trial_id)}
    except Exception:
        return []
    now = datetime.datetime.now()
    return [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if t._trial_id not in beating and t.datetime_start
            and (now - t.datetime_start).total_seconds() > older_than]


def fail_and_retry(study: optuna.Study, trials: list, why: str, log=print) -> None:
    """Mark `trials` FAIL and queue one retry of each with the same values (which resumes from its run
    folder when --root is shared), saying so."""
    for t in trials:
        study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
        if t.params and "retry_of" not in t.user_attrs:
            study.enqueue_trial(t.params, user_attrs={"retry_of": t.number}, skip_if_exists=False)
        log(f"trial {t.number} failed ({why}); retried with the same values")


def _chain(error: BaseException | None) -> list:
    """The error, then what it was raised from or while handling, and so on."""
    chain = []
    while error is not None and all(error is not c for c in chain):
        chain.append(error)
        error = error.__cause__ or error.__context__
    return chain


def _storage_errors(error: BaseException) -> list:
    """The study's database failing, anywhere in the error's chain (Optuna raises its own errors while
    handling the database's), innermost first."""
    import sqlalchemy.exc

    chain = _chain(error)
    return ([c for c in reversed(chain) if isinstance(c, sqlalchemy.exc.DBAPIError)]
            + [c for c in chain if isinstance(c, optuna.exceptions.StorageInternalError)])


def storage_failure(error: BaseException) -> bool:
    """Whether `error` is the study's database failing (a server restart, a dropped connection)."""
    return bool(_storage_errors(error))


def failure_line(error: BaseException) -> str:
    """The database's own complaint in one line (not what Optuna raised while handling it), no password."""
    chain = _chain(error)
    root = (_storage_errors(error) or [c for c in chain if str(c).strip()] or chain)[0]
    text = str(getattr(root, "orig", None) or root).strip().splitlines()
    return _safe_url(text[0]) if text else type(root).__name__


# --------------------------------------------------------------------------- results

def objective_metric(study: optuna.Study) -> str:
    """The history entry a study's trials reported to Optuna and its pruner: "val_acc" for a study with a
    validation split, "test_acc" for one made with --val 0 or before validation splits existed."""
    return "val_acc" if (study.user_attrs.get("settings") or {}).get("val") else "test_acc"


def objective_line(study: optuna.Study, short: bool = False) -> str:
    """What the study optimised, in words, as its results say it: the table and study.json in full, describe
    `short` (without the explanation after the colon)."""
    settings = study.user_attrs.get("settings") or {}
    if settings.get("val"):
        what = f"validation accuracy (--val {settings['val']})"
        why = ("plain single view, on the same held-out training images in every trial; test acc is reported "
               "beside it, never optimised")
    elif "val" in settings:
        what = "TEST accuracy (--val 0: tuned on the test set)"
        why = ("the best trials' test acc is biased upward by the choice, not a result to report; tune on a "
               "validation split instead (drop --val 0)")
    else:
        what = "test accuracy (before validation splits existed)"
        why = "tuned on the test set, so the best trials' test acc is biased upward by the choice"
    return f"objective: {what}" + ("" if short else f": {why}")


def test_acc(trial) -> float:
    """A trial's final plain test accuracy: recorded beside the objective (user attribute "test_acc"), or its
    value when the study tuned on test accuracy; from its history for trials that predate the attribute."""
    if "test_acc" in trial.user_attrs:
        return trial.user_attrs["test_acc"]
    history = trial.user_attrs.get("history") or []
    return history[-1]["test_acc"] if history else trial.value


def counts(study: optuna.Study) -> dict:
    """Trials by outcome; pruned ones split by who stopped them."""
    out = dict(complete=0, pruned=0, rejected=0, diverged=0, failed=0, running=0, waiting=0)
    for t in study.get_trials(deepcopy=False):
        if t.state == TrialState.PRUNED:
            why = t.user_attrs.get("stopped", "")
            out["rejected" if why.startswith(("rules", "invalid")) else "diverged" if why.startswith("diverged")
                else "pruned"] += 1
        else:
            out[{TrialState.COMPLETE: "complete", TrialState.FAIL: "failed", TrialState.RUNNING: "running",
                 TrialState.WAITING: "waiting"}[t.state]] += 1
    return out


def most_at_once(study: optuna.Study) -> int:
    """The most trials that were running at the same moment, from their start and finish times: how many
    workers shared the machine (a study's worker count adds up every run of the command)."""
    events = sorted((t, step) for x in study.get_trials(deepcopy=False) if x.datetime_start and x.datetime_complete
                    for t, step in ((x.datetime_start, 1), (x.datetime_complete, -1)))
    running = most = 0
    for _, step in events:   # a finish sorts before a start at the same instant (-1 < 1): back to back is not overlap
        running += step
        most = max(most, running)
    return most


def describe(study: optuna.Study) -> str:
    """One line: trials by outcome, workers, wall time from the first start to the last finish, and what the
    study optimised."""
    c = counts(study)
    started = [t.datetime_start for t in study.get_trials(deepcopy=False) if t.datetime_start]
    ended = [t.datetime_complete for t in study.get_trials(deepcopy=False) if t.datetime_complete]
    wall = (max(ended) - min(started)).total_seconds() if started and ended else 0
    workers = {t.user_attrs.get("worker") for t in study.get_trials(deepcopy=False)} - {None}
    text = (f"study {study.study_name}: {c['complete']} complete, {c['pruned']} pruned early by the pruner, "
            f"{c['rejected']} rejected before training (rules), {c['diverged']} diverged, {c['failed']} failed")
    if c["running"] or c["waiting"]:
        text += f", {c['running']} running, {c['waiting']} waiting"
    return (text + f"; {len(workers)} worker(s), at most {most_at_once(study)} at once, {wall / 60:.1f} min "
            "from first start to last finish; "
            + objective_line(study, short=True))


def top_trials(study: optuna.Study, top: int = 5) -> list:
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return sorted(done, key=lambda t: -t.value)[:top]


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    return json.dumps(v) if not isinstance(v, str) else v


def table(study: optuna.Study, top: int = 5) -> str:
    """The best completed trials: number, accuracy, sampled values, epochs, training time; under a first line
    that says what was optimised. With a validation split, "val acc" (optimised) and "test acc" (reported,
    never optimised) side by side; a study tuned on test accuracy has "test acc" alone, its objective."""
    best = top_trials(study, top)
    if not best:
        return "no completed trials yet"
    keys = sorted({k for t in best for k in t.params})
    val = objective_metric(study) == "val_acc"
    head = ["trial", *(["val acc"] if val else []), "test acc", *keys, "epochs", "train s"]
    rows = [[str(t.number), *([f"{t.value:.2%}"] if val else []), f"{test_acc(t):.2%}",
             *[_fmt(t.params.get(k, "")) for k in keys],
             str(len(t.user_attrs.get("history", []))), f"{t.user_attrs.get('train_seconds', float('nan')):.0f}"]
            for t in best]
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    line = lambda r: "  ".join(c.rjust(w) for c, w in zip(r, widths))  # noqa: E731
    return "\n".join([objective_line(study), line(head), line(["-" * w for w in widths]), *map(line, rows)])


def best_run(study: optuna.Study) -> dict | None:
    """The best completed trial as a run anyone can repeat: its recipe in full, and the exact
    `python -m helpers.train` command (every value that differs from the named recipe as --set, with
    all its digits; the trial's run settings that differ from the defaults too, its device never: the
    command runs wherever it is typed; the study's --val, which decides the images trained on) that trains
    it again; `objective` names the number it was chosen by (val_acc or test_acc), with val_acc (None for
    a study tuned on test accuracy) and test_acc beside. None before a trial has completed."""
    best = top_trials(study, 1)
    if not best or not best[0].user_attrs.get("recipe"):
        return None
    t, identity = best[0], study.user_attrs.get("settings", {})
    name = identity.get("recipe", "fast")
    stored, legacy = split_fields(t.user_attrs["recipe"])  # trials of older studies kept precision in the recipe
    recipe = Recipe.from_dict(stored).to_dict()
    base = get_recipe(name).to_dict()
    argv = ["python", "-m", "helpers.train", "--recipe", name, "--data", identity.get("data") or "synthetic"]
    if identity.get("data_dir"):
        argv += ["--data-dir", identity["data_dir"]]
    if identity.get("limit"):
        argv += ["--limit", str(identity["limit"])]
    argv += ["--seed", str(identity.get("seed", 0))]
    if identity.get("val"):  # the same held-out images, so the same training images: the trial itself again
        argv += ["--val", str(identity["val"])]
    if recipe["model"] != base["model"]:
        argv += ["--model", recipe["model"]]
    changed = {k: v for k, v in recipe.items() if k != "model" and v != base.get(k)}
    defaults = Settings().to_dict()
    ran = {**legacy, **(t.user_attrs.get("settings") or {})}
    changed |= {k: v for k, v in ran.items() if k in defaults and k != "device" and v != defaults[k]}
    argv += [a for k, v in changed.items() for a in ("--set", f"{k}={json.dumps(v)}")]  # JSON: every digit
    argv += ["--out", f"runs/{study.study_name}-trial-{t.number}"]
    metric = objective_metric(study)
    return dict(trial=t.number, objective=metric, val_acc=t.value if metric == "val_acc" else None,
                test_acc=test_acc(t), recipe=recipe, command=shlex.join(argv))


def explain_study(study: optuna.Study) -> str:
    """What a study's table means where it could mislead: the best trial's values beside the recipe it searched
    from (and why they may differ), and its training times beside a run alone."""
    best = top_trials(study, 1)
    if not best:
        return "No trial has completed yet."
    t, settings = best[0], study.user_attrs.get("settings") or {}
    name = settings.get("recipe", "fast")
    base = get_recipe(name, **(settings.get("overrides") or {})).to_dict()
    metric = "validation" if objective_metric(study) == "val_acc" else "test"
    values = ", ".join(f"{k} {_fmt(v)} (the recipe: {_fmt(base.get(k))})" for k, v in sorted(t.params.items()))
    # where each shipped recipe's values came from is docs/experiments.md's table; only fast's came from a sweep
    origin = ("The `fast` recipe's own values came from an earlier sweep, tuned on the test split of its day "
              "(docs/experiments.md); " if name == "fast" else
              f"Where the `{name}` recipe's own values came from: docs/experiments.md; ")
    lines = [f"The best trial, {t.number}, chose {values}. {origin}this study's ranking is by "
             f"{metric} accuracy, one seed per trial, and trials of one recipe differ by a few tenths of a point "
             "from the seed alone: the best trial's values are a direction to test on more seeds, not a verdict."]
    if (at_once := most_at_once(study)) > 1:
        lines.append(f"`train s` is each trial's training time with up to {at_once} trials running at once, sharing "
                     "the machine: longer than the same run alone (the benchmark's times, README's, are one run at "
                     "a time), and not comparable with them.")
    if metric == "test":
        lines.append("This study chose by test accuracy (it predates validation splits): its best test accuracy "
                     "is biased upward by the choice.")
    return "\n".join(lines)


def records(study: optuna.Study, top: int = 3) -> list[Record]:
    """Records of the best trials, from the study itself (so also for trials run on other machines)."""
    out = []
    split = "val" if objective_metric(study) == "val_acc" else "test"
    for t in top_trials(study, top):   # short names for legends: the table gives each trial's values
        out.append(Record(f"trial {t.number} ({split} {t.value:.2%})", dict(recipe=t.user_attrs.get("recipe")),
                          t.user_attrs["history"]))
    return out
