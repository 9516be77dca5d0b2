"""Optuna sweeps over recipes: a search space, a pruned objective, workers sharing one study.

    python -m helpers.sweep --recipe fast --space fast-lr-wd-ls --trials 12 --study fast-lr-wd-ls \
        --data folder --data-dir ../shared/data/cifar10-jpeg-dev --workers 2

Optuna does the searching (TPE sampler), the early stopping (median or successive-halving
pruner on the per-epoch plain test accuracy) and the bookkeeping (a study in a database): a SQLite
file runs/sweeps/<study>/study.db by default, which the worker processes of one machine share;
any SQLAlchemy URL (--storage postgresql://...) lets workers on several machines join the same
study. Running the same command again continues the study. Each trial is a `Trial` of the
recipe with the sampled overrides, its run folder (checkpoint + history) in
runs/sweeps/<study>/trial-<number>/.

A search space is a small JSON file (helpers/spaces/*.json; `--space NAME` finds them there),
one key per recipe field, or `model_kwargs.NAME` for an argument of the model factory:

    {"lr": {"log": [0.1, 1.0]},                    log-uniform
     "label_smoothing": [0.0, 0.3],                uniform (integers for int fields)
     "model_kwargs.act": {"choices": ["relu", "gelu"]},
     "epochs": 3}                                  a fixed value ({"fixed": [..]} for a list)

Trial states, and why (user attribute "stopped"): COMPLETE trained to the end; PRUNED by
the pruner (lagging accuracy), by the rules (a sampled model that breaks an assignment rule
is rejected before training: never trained, the constraint report kept as attributes), or
for a diverging loss; FAIL when its worker died (found by Optuna's heartbeat on the next
start: the trial is retried once, resuming from its last checkpoint) or raised an error.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import re
import socket
import shlex
import subprocess
import sys
import time
import urllib.parse
import warnings
from dataclasses import dataclass, fields
from pathlib import Path

import optuna
from optuna.trial import TrialState

from .data import data_dir_problem
from .rundir import LOCK, atomic_write
from .recipes import RESOLVED_PER_DEVICE, Recipe, get_recipe
from .cli import get_args_parser, positive_int
from .loop import NonFiniteLossError
from .record import Record
from .run import Trial

SPACES = Path(__file__).resolve().parent / "spaces"   # example search spaces, found by name
STUDIES = Path(__file__).resolve().parent / "studies"  # published studies (export_study's JSON), found by name
ROOT = Path("runs/sweeps")                           # one folder per study, relative to the project root
DONE = (TrialState.COMPLETE, TrialState.PRUNED)      # trials that count toward --trials
# a study remembers what it searches; a re-run that changes one of these is another study
IDENTITY = ("recipe", "overrides", "space", "data", "limit", "seed", "pruner")

warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


class SweepError(ValueError):
    """A user mistake (bad space, mismatched re-run, unreachable storage): one line, exit 2."""


# --------------------------------------------------------------------------- search space

@dataclass
class Param:
    """One key of a search space: what Optuna samples (or the fixed value) for one field."""
    name: str            # "lr" or "model_kwargs.act"
    kind: str            # "fixed" | "float" | "int" | "choices"
    low: float = None
    high: float = None
    log: bool = False
    choices: list = None
    value: object = None  # the fixed value

    def candidates(self) -> list:
        """Values worth validating before any training: the ends of a range, every choice."""
        return {"fixed": [self.value], "choices": self.choices}.get(self.kind, [self.low, self.high])

    def suggest(self, trial: optuna.Trial):
        if self.kind == "fixed":
            return self.value
        if self.kind == "float":
            return trial.suggest_float(self.name, self.low, self.high, log=self.log)
        if self.kind == "int":
            return trial.suggest_int(self.name, self.low, self.high, log=self.log)
        # Optuna stores categorical values as plain scalars: lists (widths) travel as JSON text
        plain = all(c is None or isinstance(c, (bool, int, float, str)) for c in self.choices)
        if plain:
            return trial.suggest_categorical(self.name, self.choices)
        return json.loads(trial.suggest_categorical(self.name, [json.dumps(c) for c in self.choices]))


def _field_type(name: str) -> str:
    # Recipe's annotations are strings under `from __future__ import annotations`
    return {f.name: str(f.type) for f in fields(Recipe)}[name]


def _parse_param(key: str, spec, is_int: bool) -> Param:
    number = (int, float)
    if isinstance(spec, dict):
        if set(spec) == {"choices"} and isinstance(spec["choices"], list) and spec["choices"]:
            return Param(key, "choices", choices=spec["choices"])
        if set(spec) == {"fixed"}:
            return Param(key, "fixed", value=spec["fixed"])
        if set(spec) == {"log"}:
            lo, hi = _bounds(key, spec["log"])
            if lo <= 0:
                raise SweepError(f"space key {key!r}: a log range needs low > 0, got {lo}")
            return Param(key, "int" if is_int else "float", lo, hi, log=True)
        raise SweepError(f"space key {key!r}: expected {{\"log\": [low, high]}}, {{\"choices\": [...]}} or "
                         f"{{\"fixed\": value}}, got {json.dumps(spec)}")
    if isinstance(spec, list):
        lo, hi = _bounds(key, spec)
        if is_int and not all(isinstance(v, int) for v in (lo, hi)):
            raise SweepError(f"space key {key!r} is an integer field: give integer bounds, got {spec}")
        return Param(key, "int" if is_int else "float", lo, hi)
    if spec is None or isinstance(spec, (bool, str, *number)):
        return Param(key, "fixed", value=spec)
    raise SweepError(f"space key {key!r}: cannot read {spec!r}")


def _bounds(key, pair):
    if not (isinstance(pair, list) and len(pair) == 2
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in pair)):
        raise SweepError(f"space key {key!r}: a range is [low, high] of two numbers, got {json.dumps(pair)} "
                         "(use {\"choices\": [...]} for a list of options, {\"fixed\": value} for a fixed list)")
    if not pair[0] < pair[1]:
        raise SweepError(f"space key {key!r}: low must be < high, got {pair}")
    return pair[0], pair[1]


def _model_kwarg_is_int(model: str, kwarg: str) -> bool:
    import inspect

    from .model import fast_net
    from .registry import get_factory

    sig = inspect.signature(get_factory(model))  # a registered model or your FILE.py:NAME
    if kwarg not in sig.parameters and any(q.kind == q.VAR_KEYWORD for q in sig.parameters.values()):
        sig = inspect.signature(fast_net)  # `wide` forwards its keyword arguments to fast_net
    default = sig.parameters[kwarg].default if kwarg in sig.parameters else None
    return isinstance(default, int) and not isinstance(default, bool)


class Space:
    """A validated search space: `sample(trial)` gives the recipe overrides of one trial."""

    def __init__(self, spec: dict, recipe: Recipe, source: str = "space"):
        if not isinstance(spec, dict) or not spec:
            raise SweepError(f"{source}: a search space is a non-empty JSON object {{field: spec}}")
        self.spec, self.recipe, self.source = spec, recipe, source
        known = [f.name for f in fields(Recipe)]
        self.params: list[Param] = []
        for key, value in spec.items():
            if key == "model_kwargs":
                raise SweepError(f"{source}: search model arguments one by one, as \"model_kwargs.NAME\" keys")
            if key.startswith("model_kwargs."):
                models = self._models()
                self.params.append(_parse_param(key, value, _model_kwarg_is_int(models[0], key.split(".", 1)[1])))
            elif key in known:
                self.params.append(_parse_param(key, value, _field_type(key) == "int"))
            else:
                raise SweepError(f"{source}: unknown field {key!r}; search a recipe field "
                                 f"({', '.join(known)}) or model_kwargs.NAME")
        self._check_values()

    def _models(self) -> list:
        model = next((p for p in self.params if p.name == "model"), None)
        if "model" in self.spec and model is None:   # model kwargs listed before the model key
            model = _parse_param("model", self.spec["model"], False)
        return model.candidates() if model else [self.recipe.model]

    def _check_values(self):
        """Every range end and every choice must make a valid recipe and a buildable model."""
        from .registry import build_model

        for p in self.params:
            for value in p.candidates():
                if p.name.startswith("model_kwargs."):
                    kwarg = p.name.split(".", 1)[1]
                    for model in self._models():
                        try:
                            build_model(model, **{**self.recipe.model_kwargs, kwarg: value})
                        except (ValueError, TypeError) as e:
                            raise SweepError(f"{self.source}: {p.name}={json.dumps(value)}: {e}") from None
                else:
                    try:
                        self.recipe.override(**{p.name: value}).validate()
                    except (ValueError, TypeError) as e:
                        raise SweepError(f"{self.source}: {p.name}={json.dumps(value)}: {e}") from None

    @property
    def searched(self) -> list[str]:
        return [p.name for p in self.params if p.kind != "fixed"]

    def sample(self, trial: optuna.Trial) -> dict:
        """Recipe overrides for one trial; sampled model kwargs are merged onto the recipe's
        (a `model_kwargs` override replaces the whole dict)."""
        values = {p.name: p.suggest(trial) for p in self.params}
        overrides = {k: v for k, v in values.items() if not k.startswith("model_kwargs.")}
        kwargs = {k.split(".", 1)[1]: v for k, v in values.items() if k.startswith("model_kwargs.")}
        if kwargs:
            base = {} if overrides.get("model", self.recipe.model) != self.recipe.model else self.recipe.model_kwargs
            overrides["model_kwargs"] = {**base, **kwargs}
        return overrides


def load_space(space, recipe: Recipe) -> Space:
    """A Space from a dict, a JSON file, or the name of a file in helpers/spaces/."""
    if isinstance(space, dict):
        return Space(space, recipe)
    path = Path(space)
    if not path.is_file() and (SPACES / f"{space}.json").is_file():
        path = SPACES / f"{space}.json"
    if not path.is_file():
        names = ", ".join(sorted(p.stem for p in SPACES.glob("*.json")))
        raise SweepError(f"space {space!r} not found: give a JSON file or one of {names}")
    try:
        spec = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise SweepError(f"{path}: not valid JSON ({e})") from None
    return Space(spec, recipe, source=str(path))


# --------------------------------------------------------------------------- storage and study

STUDY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def check_study_name(name) -> str:
    """A study name is a folder under --root and part of a database URL: letters, digits, '.', '_' and
    '-', starting with a letter or digit (no '/', '..', '?' or '#', which would escape --root or cut the URL)."""
    if not isinstance(name, str) or not STUDY_NAME.fullmatch(name):
        raise SweepError(f"study name {name!r}: use letters, digits, '.', '_' and '-' (starting with a letter or "
                         "digit), e.g. fast-lr-wd")
    return name


def study_dir(study: str, root=ROOT) -> Path:
    return Path(root) / check_study_name(study)


def _retry_callback():
    # Optuna >= 4.? renamed the stale-trial callback; same behaviour: re-enqueue the trial's params
    cls = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None)
    if cls is not None:
        return "heartbeat_stale_trial_callback", cls(max_retry=1)
    return "failed_trial_callback", optuna.storages.RetryFailedTrialCallback(max_retry=1)


def make_storage(storage: str | None, study: str, root=ROOT, heartbeat: int | None = 60):
    """RDBStorage for a URL, or the study's own SQLite file; with a heartbeat, a trial whose
    worker stopped beating for 3 intervals is failed (and retried once) when a worker next starts one."""
    if storage is None:
        study_dir(study, root).mkdir(parents=True, exist_ok=True)
        storage = f"sqlite:///{study_dir(study, root) / 'study.db'}"
    storage = _with_driver(storage)
    # SQLite: wait for a busy writer instead of failing at once; servers: drop dead connections
    engine = {"connect_args": {"timeout": 60}} if storage.startswith("sqlite") else {"pool_pre_ping": True}
    kwargs = {}
    if heartbeat:
        name, callback = _retry_callback()
        kwargs = dict(heartbeat_interval=heartbeat, grace_period=3 * heartbeat, **{name: callback})
    for attempt in range(3):
        try:
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


STORAGE_ENV = "CIFAR_SWEEP_STORAGE"


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


def make_pruner(name: str):
    if name == "median":
        # once 3 trials have completed, compare at every epoch with their median there
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=0)
    if name == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise SweepError(f"unknown pruner {name!r}; choose median, halving or none")


def open_study(name: str, storage=None, root=ROOT, settings: dict | None = None, pruner="median",
               trials: int = 12, heartbeat: int | None = 60) -> optuna.Study:
    """Create the study or continue it; `settings` must match what it was created with."""
    sampler = optuna.samplers.TPESampler(n_startup_trials=max(3, min(10, trials // 3)), constant_liar=True)
    study = optuna.create_study(study_name=name, storage=make_storage(storage, name, root, heartbeat),
                                direction="maximize", sampler=sampler, pruner=make_pruner(pruner),
                                load_if_exists=True)
    if settings is not None:
        before = study.user_attrs.get("settings")
        if before is None:
            study.set_user_attr("settings", settings)
        else:
            changed = [k for k in IDENTITY if before.get(k) != settings.get(k)]
            if changed:
                raise SweepError(f"study {name!r} was created with other {', '.join(changed)} "
                                 f"({', '.join(f'{k}={json.dumps(before.get(k))}' for k in changed)}); "
                                 "re-run it with the same settings, or name a new --study")
    return study


def load_study(name: str, storage=None, root=ROOT, log=print) -> optuna.Study:
    """An existing study, for results (notebook 05): from `storage` (or CIFAR_SWEEP_STORAGE), else the
    study's SQLite file in `root`, else the published copy shipped with the package (helpers/studies/NAME.json)."""
    storage = resolve_storage(storage, log)
    if storage is None and not (study_dir(name, root) / "study.db").is_file():
        shipped = STUDIES / f"{name}.json"
        if shipped.is_file():
            log(f"no study {name!r} in {study_dir(name, root)}: showing the published one shipped with the "
                f"project (helpers/studies/{shipped.name}); run python -m helpers.sweep for a study of your own")
            return import_study(shipped)
        known = ", ".join(sorted(p.stem for p in STUDIES.glob("*.json")))
        raise SweepError(f"no study {name!r} in {study_dir(name, root)}: run python -m helpers.sweep --study {name} "
                         f"first, or show a published one ({known})")
    try:
        return optuna.load_study(study_name=name, storage=make_storage(storage, name, root, heartbeat=None))
    except KeyError:
        raise SweepError(f"storage holds no study named {name!r}") from None


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
    doc = dict(study=study.study_name, direction=study.direction.name, user_attrs=study.user_attrs,
               best=best_run(study), trials=trials)
    atomic_write(path, lambda f: f.write((json.dumps(doc, indent=1) + "\n").encode()))
    return path


def import_study(path) -> optuna.Study:
    """An in-memory study rebuilt from export_study's file."""
    from datetime import datetime

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
        when = [datetime.fromisoformat(t[k]) if t[k] else None for k in ("datetime_start", "datetime_complete")]
        study.add_trial(optuna.trial.FrozenTrial(
            number=t["number"], state=TrialState[t["state"]], value=t["value"], datetime_start=when[0],
            datetime_complete=when[1], params=t["params"],
            distributions={k: optuna.distributions.json_to_distribution(d) for k, d in t["distributions"].items()},
            user_attrs=t["user_attrs"], system_attrs={},
            intermediate_values={int(k): v for k, v in t["intermediate_values"].items()}, trial_id=t["number"]))
    return study


# --------------------------------------------------------------------------- objective

def _retried_from(trial: optuna.Trial):
    """Number of the trial this one retries (its worker died, or lost its database), or None."""
    frozen = next(t for t in trial.study.get_trials(deepcopy=False) if t.number == trial.number)
    return frozen.system_attrs.get("failed_trial", frozen.user_attrs.get("retry_of"))


def _me() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _without_heartbeat(study: optuna.Study, older_than: float) -> list:
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


def _storage_failure(error: BaseException) -> bool:
    return bool(_storage_errors(error))


class Objective:
    """Train one sampled recipe; report plain test accuracy per epoch; return the final one (the
    recipe's TTA accuracy is kept beside it in the trial's history, never optimized)."""

    def __init__(self, recipe: Recipe, space: Space, folder: Path, data="synthetic", data_dir=None, limit=None,
                 device="auto", seed=0, threads=None, log=None):
        self.recipe, self.space, self.folder = recipe, space, Path(folder)
        self.data, self.data_dir, self.limit, self.device, self.seed = data, data_dir, limit, device, seed
        self.threads = threads
        self.log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))

    def __call__(self, trial: optuna.Trial) -> float:
        from . import constraints
        from .registry import build_model

        overrides = self.space.sample(trial)
        trial.set_user_attr("worker", _me())
        trial.set_user_attr("overrides", overrides)
        try:  # two sampled fields can clash even when each range end is valid alone
            recipe = self.recipe.override(**overrides).validate()
            report = constraints.check(build_model(recipe.model, **recipe.model_kwargs))
        except ValueError as e:
            trial.set_user_attr("stopped", f"invalid recipe: {e}")
            raise optuna.TrialPruned(str(e)) from None
        trial.set_user_attr("recipe", recipe.to_dict())
        trial.set_user_attr("params", report.params)
        trial.set_user_attr("rules", {r.name: {"passed": r.passed, "evidence": r.evidence} for r in report.rules})
        trial.set_user_attr("rules_passed", report.passed)
        if not report.passed:   # never train a model the assignment would not accept
            broken = [r.name for r in report.rules if not r.passed]
            trial.set_user_attr("stopped", "rules: " + "; ".join(broken))
            raise optuna.TrialPruned(f"breaks {', '.join(broken)}")

        run_dir = self.folder / f"trial-{trial.number:03d}"
        trial.set_user_attr("run_dir", str(run_dir))
        resume = self._take_over(trial, run_dir)
        job = Trial(name=run_dir.name, recipe=recipe, data=self.data, data_dir=self.data_dir, limit=self.limit,
                    device=self.device, seed=self.seed, out_dir=run_dir, progress=False, threads=self.threads)

        def on_epoch(stats):
            history = job.trainer.history   # all epochs, those of a resumed run included
            trial.set_user_attr("history", history)
            trial.set_user_attr("train_seconds", round(sum(h["train_seconds"] for h in history), 2))
            trial.report(stats["test_acc"], stats["epoch"])
            self.log(f"[trial {trial.number}] epoch {stats['epoch']}/{recipe.epochs}: "
                     f"test acc {stats['test_acc']:.2%}  ({stats['train_seconds']:.0f}s)")
            # after the last epoch the trial is done: a result below the median is still a result
            if stats["epoch"] < recipe.epochs and trial.should_prune():
                trial.set_user_attr("stopped", f"pruner at epoch {stats['epoch']}")
                raise optuna.TrialPruned(f"test accuracy {stats['test_acc']:.2%} lags at epoch {stats['epoch']}")

        run_dir.mkdir(parents=True, exist_ok=True)
        # the trainer's epoch lines go to the trial's log; the terminal gets one line per epoch
        with open(run_dir / "train.log", "a", buffering=1) as f, contextlib.redirect_stdout(f):
            try:
                if resume:
                    job.setup()
                    for h in Record.load(run_dir).history:   # what the dead worker had reported
                        trial.report(h["test_acc"], h["epoch"])
                record = job.run(resume=resume, on_epoch=on_epoch)
            except NonFiniteLossError as e:
                trial.set_user_attr("stopped", f"diverged: {e}")
                raise optuna.TrialPruned(str(e)) from None
        return record.final_acc

    def _take_over(self, trial, run_dir: Path) -> bool:
        """A retry of a trial whose worker died continues from that trial's last checkpoint."""
        failed = _retried_from(trial)
        old = self.folder / f"trial-{failed:03d}" if failed is not None else None
        if old is None or not (old / "history.json").is_file() or run_dir.exists():
            return False
        os.replace(old, run_dir)   # atomic: the folder belongs to one trial at a time
        # Optuna's heartbeat has declared its worker dead: that worker's lock goes with it (on another
        # host the lock's own staleness test would wait for STALE seconds)
        (run_dir / LOCK).unlink(missing_ok=True)
        trial.set_user_attr("resumed_from", failed)
        self.log(f"[trial {trial.number}] retries trial {failed} (its worker died or lost the database): "
                 "resuming its run folder")
        return True


# --------------------------------------------------------------------------- results

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


def summary(study: optuna.Study) -> str:
    c = counts(study)
    started = [t.datetime_start for t in study.get_trials(deepcopy=False) if t.datetime_start]
    ended = [t.datetime_complete for t in study.get_trials(deepcopy=False) if t.datetime_complete]
    wall = (max(ended) - min(started)).total_seconds() if started and ended else 0
    workers = {t.user_attrs.get("worker") for t in study.get_trials(deepcopy=False)} - {None}
    text = (f"study {study.study_name}: {c['complete']} complete, {c['pruned']} pruned early by the pruner, "
            f"{c['rejected']} rejected before training (rules), {c['diverged']} diverged, {c['failed']} failed")
    if c["running"] or c["waiting"]:
        text += f", {c['running']} running, {c['waiting']} waiting"
    return text + f"; {len(workers)} worker(s), {wall / 60:.1f} min from first start to last finish"


def top_trials(study: optuna.Study, top: int = 5) -> list:
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return sorted(done, key=lambda t: -t.value)[:top]


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    return json.dumps(v) if not isinstance(v, str) else v


def table(study: optuna.Study, top: int = 5) -> str:
    """The best completed trials: number, accuracy, sampled values, epochs, training time."""
    best = top_trials(study, top)
    if not best:
        return "no completed trials yet"
    keys = sorted({k for t in best for k in t.params})
    head = ["trial", "plain acc", *keys, "epochs", "train s"]
    rows = [[str(t.number), f"{t.value:.2%}", *[_fmt(t.params.get(k, "")) for k in keys],
             str(len(t.user_attrs.get("history", []))), f"{t.user_attrs.get('train_seconds', float('nan')):.0f}"]
            for t in best]
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    line = lambda r: "  ".join(c.rjust(w) for c, w in zip(r, widths))  # noqa: E731
    return "\n".join([line(head), line(["-" * w for w in widths]), *map(line, rows)])


def best_run(study: optuna.Study) -> dict | None:
    """The best completed trial as a run anyone can repeat: its recipe in full, and the exact
    `python -m helpers.train` command (every value that differs from the named recipe as --set, with
    all its digits) that trains it again. None before a trial has completed."""
    best = top_trials(study, 1)
    if not best or not best[0].user_attrs.get("recipe"):
        return None
    t, settings = best[0], study.user_attrs.get("settings", {})
    name = settings.get("recipe", "fast")
    recipe = Recipe.from_dict(t.user_attrs["recipe"]).to_dict()
    base = get_recipe(name).to_dict()
    argv = ["python", "-m", "helpers.train", "--recipe", name, "--data", settings.get("data") or "synthetic"]
    if settings.get("data_dir"):
        argv += ["--data-dir", settings["data_dir"]]
    if settings.get("limit"):
        argv += ["--limit", str(settings["limit"])]
    argv += ["--seed", str(settings.get("seed", 0))]
    if recipe["model"] != base["model"]:
        argv += ["--model", recipe["model"]]
    for k, v in recipe.items():
        if k not in ("model", *RESOLVED_PER_DEVICE) and v != base.get(k):
            argv += ["--set", f"{k}={json.dumps(v)}"]  # JSON keeps every digit of a float
    argv += ["--out", f"runs/{study.study_name}-trial-{t.number}"]
    return dict(trial=t.number, plain_acc=t.value, recipe=recipe, command=shlex.join(argv))


def records(study: optuna.Study, top: int = 3) -> list[Record]:
    """Records of the best trials, from the study itself (so also for trials run on other machines)."""
    out = []
    for t in top_trials(study, top):   # short names for legends: the table gives each trial's values
        out.append(Record(f"trial {t.number} ({t.value:.2%})", dict(recipe=t.user_attrs.get("recipe")),
                          t.user_attrs["history"]))
    return out


def _figure(ax):
    ax = ax.flat[0] if hasattr(ax, "flat") else ax
    fig = ax.figure
    fig.set_size_inches(7, 4)
    fig.tight_layout()
    return fig


def plot_history(study):
    """Accuracy of every finished trial in order, and the best so far (Optuna's plot)."""
    fig = _figure(optuna.visualization.matplotlib.plot_optimization_history(study))
    fig.axes[0].set_ylabel("plain test accuracy")
    return fig


def plot_importances(study):
    """How much of the accuracy's variation each searched field explains (Optuna's default evaluator)."""
    return _figure(optuna.visualization.matplotlib.plot_param_importances(study))


def plot_epochs(study):
    """Test accuracy per epoch of every trial: pruned ones stop early (Optuna's intermediate values)."""
    fig = _figure(optuna.visualization.matplotlib.plot_intermediate_values(study))
    ax = fig.axes[0]
    ax.set(xlabel="epoch", ylabel="plain test accuracy", title="Test accuracy per epoch (pruned trials stop early)")
    ax.xaxis.get_major_locator().set_params(integer=True)
    if ax.get_legend():
        ax.get_legend().remove()   # one entry per trial: too many to read
    return fig


def plot_top_runs(study, top=3):
    """Train and test accuracy per epoch of the best trials, side by side."""
    from .plots import summary_plot_for_runs

    return summary_plot_for_runs(records(study, top), "acc")


PLOTS = {"history": plot_history, "importances": plot_importances, "epochs": plot_epochs, "top_runs": plot_top_runs}


def figure(study, name: str, images_dir=None, prefix="sweep_", top=3):
    """One of the PLOTS, saved as IMAGES_DIR/<prefix><name>.png when images_dir is given; None
    (with the reason printed) when Optuna cannot draw it yet, e.g. importances of one trial."""
    import matplotlib.style

    from .plots import save

    draw = PLOTS[name] if name != "top_runs" else (lambda s: plot_top_runs(s, top))
    # Optuna's plots switch matplotlib to its ggplot style: put back what that style sets, and only that.
    # (Not rc_context: in a notebook whose first figure this is, it would also undo the inline
    # backend's set-up, and no later figure of the session would show.)
    styled = {k: matplotlib.rcParams[k] for k in matplotlib.style.library["ggplot"]}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")   # "experimental" notices and few-trials caveats
            fig = draw(study)
    except (ValueError, RuntimeError, KeyError) as e:
        print(f"{name} plot skipped: {e}", file=sys.stderr)
        return None
    finally:
        matplotlib.rcParams.update(styled)
    if images_dir:
        save(fig, Path(images_dir) / f"{prefix}{name}.png")
    return fig


def save_plots(study, folder, prefix="sweep_", top=3) -> list[Path]:
    """All the PLOTS as PNGs in `folder`."""
    import matplotlib.pyplot as plt

    paths = []
    for name in PLOTS:
        fig = figure(study, name, folder, prefix, top)
        if fig is not None:
            paths.append(Path(folder) / f"{prefix}{name}.png")
            plt.close(fig)
    return paths


# --------------------------------------------------------------------------- CLI

def get_parser() -> argparse.ArgumentParser:
    p = get_args_parser()   # --recipe, --data, --data-dir, --limit, --device, --threads, --epochs ... as train does
    p.prog = "python -m helpers.sweep"
    p.description = __doc__.split("\n\n")[0]
    p.set_defaults(recipe="fast")
    p.add_argument("--space", required=True, help="search space: a JSON file, or a name in helpers/spaces/ "
                   f"({', '.join(sorted(s.stem for s in SPACES.glob('*.json')))})")
    p.add_argument("--trials", type=positive_int, required=True,
                   help="finish this many trials (complete or pruned), all workers together")
    p.add_argument("--study", required=True, type=_study_arg,
                   help="study name (letters, digits, . _ -); runs/sweeps/STUDY/ holds its trials' run folders")
    p.add_argument("--storage", help="SQLAlchemy URL shared by workers on several machines, e.g. "
                                     "postgresql://user@host/db with the password in ~/.pgpass or PGPASSWORD; "
                                     f"@FILE reads the URL from FILE (default: ${STORAGE_ENV}, else "
                                     "runs/sweeps/STUDY/study.db, SQLite)")
    p.add_argument("--workers", type=positive_int, default=1,
                   help="worker processes on this machine, each with cores/WORKERS threads unless --threads")
    p.add_argument("--pruner", default="median", choices=["median", "halving", "none"],
                   help="stop weak trials early: median of earlier trials at the same epoch, or successive halving")
    p.add_argument("--heartbeat", type=positive_int, default=60,
                   help="seconds between a worker's signs of life; a trial silent for 3 of them counts as failed")
    p.add_argument("--top", type=positive_int, default=5, help="rows of the best-trials table")
    p.add_argument("--root", default=str(ROOT), help="folder of the studies' folders (default: runs/sweeps)")
    p.add_argument("--worker-index", type=int, help=argparse.SUPPRESS)  # set on the processes --workers starts
    return p


def _study_arg(text: str) -> str:
    try:
        return check_study_name(text)
    except SweepError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _settings(args, space: Space) -> dict:
    # every training flag that names a recipe field (--epochs, --lr, --precision, --compile ...) fixes it
    overrides = {f.name: getattr(args, f.name) for f in fields(Recipe) if getattr(args, f.name, None) is not None}
    overrides |= dict(args.set)  # --set FIELD=VALUE fixes any other field the same way
    clash = sorted(set(overrides) & set(space.spec))
    if clash:
        raise SweepError(f"{', '.join(clash)} both fixed by a flag and listed in the space; keep one")
    return dict(recipe=args.recipe, overrides=overrides, space=space.spec, data=args.data, limit=args.limit,
                seed=args.seed, pruner=args.pruner, data_dir=args.data_dir)


def _prepare(args):
    if args.data == "folder":
        if not args.data_dir:
            raise SweepError("--data folder needs --data-dir DIR (a folder holding train/ and test/), "
                             "or use --data synthetic")
        if data_dir_problem(args.data_dir):
            raise SweepError(f"--data-dir {args.data_dir} {data_dir_problem(args.data_dir)}")
    if args.lr is not None and not args.lr > 0:
        raise SweepError(f"--lr must be > 0, got {args.lr}")
    base = get_recipe(args.recipe)
    space = load_space(args.space, base)
    settings = _settings(args, space)
    recipe = get_recipe(args.recipe, **settings["overrides"])
    return recipe, space, settings


def _finished(study) -> int:
    return len(study.get_trials(deepcopy=False, states=DONE))


RECONNECT_DELAYS = (2, 4, 8, 16, 32, 60, 60)   # seconds between tries when the database fails (~3 min in all)


def work(args, study: optuna.Study, recipe: Recipe, space: Space):
    """One worker: run trials until the study holds --trials finished ones.

    When the study's database fails (a PostgreSQL restart), the worker waits and reconnects with growing
    delays, fails the trial it was running and queues its retry, and carries on."""
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    objective = Objective(recipe, space, study_dir(args.study, args.root), args.data, args.data_dir, args.limit,
                          args.device, args.seed, args.threads)
    # a running trial counts, so that workers finishing at different times stop at --trials, not past it
    counted = (*DONE, TrialState.RUNNING)
    for delay in (*RECONNECT_DELAYS, None):
        try:
            optuna.storages.fail_stale_trials(study)   # dead workers' trials -> FAIL (and a retry), before counting
            grace = 3 * args.heartbeat
            fail_and_retry(study, _without_heartbeat(study, grace), f"running for over {grace} s without a "
                           "heartbeat: its worker is gone", log)
            if len(study.get_trials(deepcopy=False, states=counted)) >= args.trials:
                return study
            study.optimize(objective, callbacks=[optuna.study.MaxTrialsCallback(args.trials, states=counted)],
                           gc_after_trial=True)
            return study
        except Exception as e:
            if not _storage_failure(e) and not isinstance(e, SweepError):
                raise
            if delay is None:
                raise SweepError(f"the study's database kept failing for {sum(RECONNECT_DELAYS)} s: "
                                 f"{_first_line(e)}; run the command again once it is back") from None
            log(f"the study's database failed ({_first_line(e)}): reconnecting in {delay} s")
            time.sleep(delay)
            try:
                study = open_study(args.study, args.storage, args.root, None, args.pruner, args.trials, args.heartbeat)
                mine = [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
                        if t.user_attrs.get("worker") == _me()]
                fail_and_retry(study, mine, "this worker lost the database while running it", log)
                log("reconnected")
            except Exception as again:  # still down: the next round waits longer
                if not _storage_failure(again) and not isinstance(again, SweepError):
                    raise
    return study


def _first_line(e: BaseException) -> str:
    """The database's own complaint in one line (not what Optuna raised while handling it)."""
    chain = _chain(e)
    root = (_storage_errors(e) or [c for c in chain if str(c).strip()] or chain)[0]
    text = str(getattr(root, "orig", None) or root).strip().splitlines()
    return _safe_url(text[0]) if text else type(root).__name__


def _without(argv: list, flag: str) -> list:
    """argv without `flag` and its value (as `flag VALUE` or `flag=VALUE`)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == flag:
            skip = True
        elif not a.startswith(flag + "="):
            out.append(a)
    return out


def spawn(args, argv) -> int:
    """Start --workers processes of this same command on this machine; wait for all of them."""
    threads = args.threads or max(1, (os.cpu_count() or 1) // args.workers)
    # the storage URL reaches the workers in their environment, never on their command lines (ps shows those)
    env = {**os.environ, **({STORAGE_ENV: args.storage} if args.storage else {})}
    argv = _without(argv, "--storage")
    procs = []
    for i in range(args.workers):
        cmd = [sys.executable, "-m", "helpers.sweep", *argv, "--worker-index", str(i), "--threads", str(threads)]
        procs.append(subprocess.Popen(cmd, env=env))
    try:
        codes = [p.wait() for p in procs]
    except KeyboardInterrupt:   # Ctrl-C reached the workers too: Optuna marks their trials FAIL
        for p in procs:
            p.wait()
        print("interrupted: run the same command again to continue the study", file=sys.stderr)
        return 130
    bad = [f"worker {i} exited with code {c}" + (" (killed)" if c < 0 else "") for i, c in enumerate(codes) if c]
    if bad:  # the others' trials are in the study all the same: main still shows them
        print("error: " + "; ".join(bad) + "; the results of the trials that finished follow", file=sys.stderr)
        return 1
    return 0


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = get_parser()
    args = p.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.INFO if args.worker_index is not None or args.workers == 1
                                 else optuna.logging.WARNING)
    rc = 0
    try:
        args.storage = resolve_storage(args.storage, log=lambda m: print(m, file=sys.stderr)) \
            if args.worker_index is None else resolve_storage(args.storage, log=lambda m: None)
        recipe, space, settings = _prepare(args)
        # create (or check) the study once, before any worker starts
        study = open_study(args.study, args.storage, args.root, settings, args.pruner, args.trials, args.heartbeat)
        if _finished(study) >= args.trials and args.worker_index is None:
            print(f"study {args.study} already holds {_finished(study)} finished trials (--trials {args.trials}); "
                  "raise --trials to run more", file=sys.stderr)
        elif args.workers > 1 and args.worker_index is None:
            t0 = time.perf_counter()
            rc = spawn(args, argv)
            print(f"{args.workers} workers done in {(time.perf_counter() - t0) / 60:.1f} min", file=sys.stderr)
            if rc == 130:  # interrupted: the user asked to stop
                return rc
        else:
            study = work(args, study, recipe, space)
    except SweepError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.worker_index is not None:
        return 0
    # the results, where people look: the table here, the plots next to the trials
    import matplotlib

    matplotlib.use("Agg")
    print(summary(study))
    print(table(study, args.top))
    best = best_run(study)
    if best:
        print(f"train the best trial ({best['trial']}, {best['plain_acc']:.2%} plain) again:\n  {best['command']}")
    plots = save_plots(study, study_dir(args.study, args.root) / "plots", prefix="")
    if plots:
        print(f"plots: {', '.join(str(p) for p in plots)}")
    # the study as one JSON file: to publish it, copy it to helpers/studies/ (notebook 05 finds it there)
    print(f"study exported to {export_study(study, study_dir(args.study, args.root) / 'study.json')}")
    running = counts(study)["running"]
    if running:
        print(f"note: {running} trial(s) still marked running. A worker that died leaves its trial so until "
              f"its heartbeat is {3 * args.heartbeat} s old; run this command again after that and the trial "
              "is failed and retried (from its checkpoint when --root is shared)", file=sys.stderr)
    return rc


if __name__ == "__main__":
    sys.exit(main())
