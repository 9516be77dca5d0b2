"""Optuna sweeps over recipes: a search space, a pruned objective, workers sharing one study.

    python -m helpers.sweep --recipe fast --space fast-lr-wd-ls --trials 12 --study fast-lr-wd-ls \
        --data folder --data-dir ../shared/data/cifar10-jpeg-dev --workers 2

Optuna does the searching (TPE sampler), the early stopping (median or successive-halving
pruner on the per-epoch plain validation accuracy: --val, 10 % of the training split by default, held
out of every trial's training; test accuracy is recorded beside it, never optimised, and only --val 0
tunes on the test set) and the bookkeeping (a study in a database): a SQLite
file runs/sweeps/<study>/study.db by default, which the worker processes of one machine share;
any SQLAlchemy URL (--storage postgresql://...) lets workers on several machines join the same
study. Running the same command again continues the study. Each trial is a `Trial` of the
recipe with the sampled overrides, its run folder (checkpoint + history) in
runs/sweeps/<study>/trial-<number>/. With --root on Google Drive (Colab), the SQLite file is worked on
this machine's disk and copied to Drive after each finished trial and at the end, and the command
ends by flushing Drive, so that a notebook in another runtime finds the study.

This module is the command only; the pieces, each importing only those before it:
helpers/sweep/space.py (the search space), study.py (storage, the study, its results),
objective.py (one trial = one run), figures.py (the study's figures).
The training flags (recipe fields fixed for every trial, run settings such as --precision) are
the shared CLI's (helpers/cli.py); the run settings are not part of what a study searches.
"""
from __future__ import annotations

import argparse
import os
import sqlite3
import subprocess
import sys
import time
import warnings

import optuna
from optuna.trial import TrialState

from .. import colab
from ..cli import get_args_parser, overrides, parse, positive_int
from ..data import check_val, val_size
from ..errors import UserError
from ..recipes import Recipe, Settings, get_recipe, split_fields
from .objective import Objective
from .space import SPACES, Space, SweepError, load_space
from .study import (DB, DONE, STORAGE_ENV, SWEEP_VAL, SWEEPS, without_heartbeat, best_run, check_study_name, counts,
                    describe, drive_backed, export_study, fail_and_retry, failure_line, open_study, pull_from_drive,
                    push_to_drive, resolve_storage, storage_failure, study_dir, table, worker_id, working_db)

RECONNECT_DELAYS = (2, 4, 8, 16, 32, 60, 60)   # seconds between tries when the database fails (~3 min in all)


def get_parser() -> argparse.ArgumentParser:
    # --recipe, --data, --data-dir, --limit, --epochs, --set ... and the settings (--device, --threads ...) as train's
    p = get_args_parser("python -m helpers.sweep", __doc__.split("\n\n")[0])
    p.set_defaults(recipe="fast", val=SWEEP_VAL)
    for action in p._actions:  # in a sweep --val is also what is optimised, and 0 means tuning on the test set
        if action.dest == "val":
            action.help = ("validation split every trial holds out: N training images or a fraction (0.1) of the "
                           "training split (after --limit), class-balanced, the same images in every trial; its "
                           "plain accuracy is the objective and what the pruner compares, test accuracy is recorded "
                           "beside it, never optimised. --val 0 tunes on the test set instead, which biases the "
                           "best trials' test accuracy upward (the results say so) (default: %(default)s)")
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
    p.add_argument("--root", default=str(SWEEPS), help="folder of the studies' folders (default: runs/sweeps); on "
                   "Google Drive, the SQLite study is worked on this machine's disk and copied there")
    p.add_argument("--worker-index", type=int, help=argparse.SUPPRESS)  # set on the processes --workers starts
    return p


def _study_arg(text: str) -> str:
    try:
        return check_study_name(text)
    except SweepError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _identity(args, space: Space) -> dict:
    """What the study searches (the IDENTITY keys, stored with it): every recipe field a flag or --set
    fixes (--epochs, --lr, --set weight_decay=...) is part of it; run settings (--precision, --device ...) are not."""
    fixed, _ = split_fields(overrides(args))
    clash = sorted(set(fixed) & set(space.spec))
    if clash:
        raise SweepError(f"{', '.join(clash)} both fixed by a flag and listed in the space; keep one")
    # val: 0 for none (tuning on test accuracy), as studies made before validation splits count (IDENTITY_BEFORE)
    return dict(recipe=args.recipe, overrides=fixed, space=space.spec, data=args.data, limit=args.limit,
                seed=args.seed, pruner=args.pruner, data_dir=args.data_dir, val=check_val(args.val) or 0)


def _run_settings(args) -> Settings:
    """How every trial runs on this machine: the settings flags and --set's settings fields."""
    return Settings().override(**split_fields(overrides(args))[1]).validate()


def _prepare(args) -> tuple[Recipe, Space, dict]:
    base = get_recipe(args.recipe)
    space = load_space(args.space, base)
    identity = _identity(args, space)
    recipe = get_recipe(args.recipe, **identity["overrides"])
    _run_settings(args)   # a bad setting is one line now, not a failed trial later
    if args.limit:   # a validation split that leaves less than a batch: one line now, not every trial failing
        val_size(args.val, args.limit, recipe.batch_size)
    return recipe, space, identity


def _finished(study) -> int:
    return len(study.get_trials(deepcopy=False, states=DONE))


def work(args, study: optuna.Study, recipe: Recipe, space: Space):
    """One worker: run trials until the study holds --trials finished ones.

    When the study's database fails (a PostgreSQL restart), the worker waits and reconnects with growing
    delays, fails the trial it was running and queues its retry, and carries on."""
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    objective = Objective(recipe, space, study_dir(args.study, args.root), args.data, args.data_dir, args.limit,
                          _run_settings(args), args.seed, log, val=args.val)
    # a running trial counts, so that workers finishing at different times stop at --trials, not past it
    counted = (*DONE, TrialState.RUNNING)
    callbacks = [optuna.study.MaxTrialsCallback(args.trials, states=counted)]
    if drive_backed(args.storage, args.root):   # Drive holds the study as of the last finished trial
        callbacks.append(lambda study, trial: _to_drive(args, log))
    for delay in (*RECONNECT_DELAYS, None):
        try:
            optuna.storages.fail_stale_trials(study)   # dead workers' trials -> FAIL (and a retry), before counting
            grace = 3 * args.heartbeat
            fail_and_retry(study, without_heartbeat(study, grace), f"running for over {grace} s without a "
                           "heartbeat: its worker is gone", log)
            if len(study.get_trials(deepcopy=False, states=counted)) >= args.trials:
                return study
            study.optimize(objective, callbacks=callbacks, gc_after_trial=True)
            return study
        except Exception as e:
            if not storage_failure(e) and not isinstance(e, SweepError):
                raise
            if delay is None:
                raise SweepError(f"the study's database kept failing for {sum(RECONNECT_DELAYS)} s: "
                                 f"{failure_line(e)}; run the command again once it is back") from None
            log(f"the study's database failed ({failure_line(e)}): reconnecting in {delay} s")
            time.sleep(delay)
            try:
                study = open_study(args.study, args.storage, args.root, None, args.pruner, args.trials, args.heartbeat)
                mine = [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
                        if t.user_attrs.get("worker") == worker_id()]
                fail_and_retry(study, mine, "this worker lost the database while running it", log)
                log("reconnected")
            except Exception as again:  # still down: the next round waits longer
                if not storage_failure(again) and not isinstance(again, SweepError):
                    raise
    return study


def _say_objective(args):
    """One line on stderr: what the trials are chosen by. Tuning on the test set is said loudly: the best
    trials' test accuracy is then the maximum of many noisy test measurements, biased upward."""
    if check_val(args.val) is None:
        print(f"WARNING: --val 0: study {args.study} tunes on TEST accuracy (the objective and the pruner read the "
              "test split), so its best trials' test accuracy is biased upward by the choice and is not a result to "
              f"report; drop --val 0 to tune on a validation split ({SWEEP_VAL:g} of the training split by default)",
              file=sys.stderr)
    else:
        share = (f"{args.val:.0%} of the training split" if isinstance(args.val, float)
                 else f"{args.val} training images")
        print(f"study {args.study} tunes on validation accuracy: --val {args.val} holds out {share}, the same images "
              "in every trial; test accuracy is recorded beside it, never optimised", file=sys.stderr)


# --------------------------------------------------------------------------- a study on Google Drive

def _to_drive(args, log, last=False) -> bool:
    """Copy the study to Drive; a failure (Drive full or disconnected) is one line, and the sweep goes on:
    the study is whole on this machine's disk, and the next copy tries again."""
    try:
        push_to_drive(args.study, args.root)
        return True
    except (OSError, sqlite3.Error) as e:
        then = ("run the same command again once Drive is back, which copies it" if last
                else "the next finished trial copies it again")
        log(f"note: could not copy the study to {study_dir(args.study, args.root)} on Google Drive "
            f"({getattr(e, 'strerror', None) or e}); it is whole on this machine's disk, "
            f"{working_db(args.study, args.root)}: {then}")
        return False


def _from_drive(args, log):
    """Before any worker opens the study: bring Drive's copy here when it is newer, and say where it is worked on."""
    local, drive = working_db(args.study, args.root), study_dir(args.study, args.root) / DB
    try:
        pulled = pull_from_drive(args.study, args.root)
    except OSError as e:
        raise SweepError(f"cannot copy the study from {drive} on Google Drive ({e.strerror or e}): check that Drive "
                         "is mounted (from google.colab import drive; drive.mount('/content/drive')) and run "
                         "the command again") from None
    if pulled:
        log(f"study {args.study}: copied from Google Drive ({drive}) to this machine's disk ({local}), where the "
            "sweep works on it (SQLite's locking is not reliable on Drive); copied back to Drive after each "
            "finished trial and at the end")
    else:
        log(f"study {args.study} is worked on this machine's disk ({local}), since SQLite's locking is not reliable "
            f"on Google Drive; copied to {drive} after each finished trial and at the end")


def _flush(log_out, log_err):
    """Push this runtime's Drive writes, so that notebook 05 in another runtime sees the study; or say how."""
    how = "from google.colab import drive; drive.flush_and_unmount()"
    try:
        if colab.flush_drive(log_out):
            return
        why = "no mounted Google Drive that this process can flush"
    except Exception as e:   # Colab's flush failing: the study is on the mount, only not pushed yet
        why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    log_err(f"note: Google Drive was not flushed ({why}): before opening the study in another runtime "
            f"(notebook 05), run `{how}` in this one")


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
    for i in range(args.workers):   # each worker sets its own torch threads (cli.parse applies --threads)
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
    args = parse(get_parser(), argv)   # the data and --lr checks (exit 2), and --threads
    # the heartbeat, stale-trial and retry machinery is "experimental" to Optuna: not news on every start
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    optuna.logging.set_verbosity(optuna.logging.INFO if args.worker_index is not None or args.workers == 1
                                 else optuna.logging.WARNING)
    note = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    drive = {}   # "here": the study is worked on this machine's disk, and Drive gets it back at the end
    rc, copied = 2, False
    try:
        rc = _sweep(args, argv, drive)
    finally:   # also after an error or Ctrl-C: the trials that finished reach Drive all the same
        if drive.get("here") and working_db(args.study, args.root).is_file():
            copied = _to_drive(args, note, last=True)
    if drive.get("here") and rc in (0, 1):   # the study is on Drive's mount: push it, for other runtimes
        if copied:
            print(f"study copied to Google Drive: {study_dir(args.study, args.root) / DB}")
        _flush(print, note)
    return rc


def _sweep(args, argv, drive: dict) -> int:
    """The command once its arguments are parsed: the study, its workers, its results. Sets drive["here"]
    once a study kept on Google Drive is worked on this machine's disk."""
    rc = 0
    try:
        args.storage = resolve_storage(args.storage, log=lambda m: print(m, file=sys.stderr)) \
            if args.worker_index is None else resolve_storage(args.storage, log=lambda m: None)
        recipe, space, identity = _prepare(args)
        if drive_backed(args.storage, args.root) and args.worker_index is None:
            # the command, not its workers: they start once the study is here, and copy it after their trials
            _from_drive(args, lambda msg: print(msg, file=sys.stderr, flush=True))
            drive["here"] = True
        # create (or check) the study once, before any worker starts
        study = open_study(args.study, args.storage, args.root, identity, args.pruner, args.trials, args.heartbeat)
        if args.worker_index is None:   # what the study optimises, once it is open, before any trial
            _say_objective(args)
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
    except UserError as e:   # SweepError, and a bad recipe or setting
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.worker_index is not None:
        return 0
    # the results, where people look: the table here, the plots next to the trials
    import matplotlib

    matplotlib.use("Agg")
    from .figures import save_study_plots

    print(describe(study))
    print(table(study, args.top))
    best = best_run(study)
    if best:
        accuracies = (f"val acc {best['val_acc']:.2%}, " if best["val_acc"] is not None else "") + \
            f"test acc {best['test_acc']:.2%}"
        print(f"train the best trial ({best['trial']}: {accuracies}) again:\n  {best['command']}")
    plots = save_study_plots(study, study_dir(args.study, args.root) / "plots", prefix="")
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
