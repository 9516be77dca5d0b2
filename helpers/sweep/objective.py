"""A sweep's objective: one Optuna trial is one `Trial` run of the recipe with the sampled overrides.

Its run folder (checkpoint, history.json, and train.log with every line the run reports) is
<study folder>/trial-<number>/; after every epoch the plain accuracy on the validation split (the same
held-out training images in every trial) goes to Optuna's pruner, the test accuracy onto the trial beside
it (never optimised), and the whole history onto the trial, so results need only the study's database.
Only val=0 makes test accuracy the objective, as it was before validation splits existed. A sampled model that
breaks an assignment rule is rejected before training (pruned, its constraint report kept), a
diverging loss prunes the trial, and a retry of a trial whose worker died resumes its run folder.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import optuna

from ..checkpoint import HISTORY
from ..data import check_val
from ..loop import NonFiniteLossError
from ..recipes import Recipe, Settings
from ..record import Record
from ..run import Trial
from ..rundir import LOCK
from .space import Space
from .study import SWEEP_VAL, worker_id


def _retried_from(trial: optuna.Trial):
    """Number of the trial this one retries (its worker died, or lost its database), or None."""
    frozen = next(t for t in trial.study.get_trials(deepcopy=False) if t.number == trial.number)
    return frozen.system_attrs.get("failed_trial", frozen.user_attrs.get("retry_of"))


def _settings(settings) -> Settings:
    if isinstance(settings, Settings):
        return settings.validate()
    return Settings().override(**(settings or {})).validate()


class Objective:
    """Train one sampled recipe; report plain validation accuracy per epoch; return the final one. Test
    accuracy is kept beside it (the trial's user attribute "test_acc", and in its history), as is the
    recipe's TTA accuracy: recorded, never optimised.

    `val`: the validation split every trial holds out (Trial's val=; SWEEP_VAL by default); 0 or None
    reports and returns test accuracy instead, which tunes on the test set.

    `settings`: how every trial runs on this machine, a Settings or a dict of its fields (device,
    precision, compile, channels_last); never searched, and kept on each trial (user attribute
    "settings"). CPU threads are the process's (the sweep's --threads). `log` gets one line per epoch
    for the terminal (stderr by default); the run's own lines go to its train.log.
    """

    def __init__(self, recipe: Recipe, space: Space, folder: Path, data="synthetic", data_dir=None, limit=None,
                 settings: Settings | dict | None = None, seed=0, log=None, val=SWEEP_VAL):
        self.recipe, self.space, self.folder = recipe, space, Path(folder)
        self.data, self.data_dir, self.limit, self.seed = data, data_dir, limit, seed
        self.val = check_val(val)
        # the history entry Optuna and its pruner get
        self.metric = "val_acc" if self.val is not None else "test_acc"
        self.settings = _settings(settings)
        self.log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))

    def __call__(self, trial: optuna.Trial) -> float:
        from .. import constraints
        from ..registry import build_model

        overrides = self.space.sample(trial)
        trial.set_user_attr("worker", worker_id())
        trial.set_user_attr("overrides", overrides)
        trial.set_user_attr("settings", self.settings.to_dict())
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
        run_dir.mkdir(parents=True, exist_ok=True)
        # the run's lines (device, data, epochs, resume) go to the trial's log; the terminal gets one line per epoch
        with open(run_dir / "train.log", "a", buffering=1) as f:
            training = Trial(name=run_dir.name, recipe=recipe, data=self.data, data_dir=self.data_dir, limit=self.limit,
                        seed=self.seed, out_dir=run_dir, progress=False, settings=self.settings,
                        log=lambda line: print(line, file=f, flush=True), val=self.val)
            metric, name = self.metric, self.metric.replace("_acc", " acc")

            def on_epoch(stats):
                history = training.trainer.history   # all epochs, those of a resumed run included
                trial.set_user_attr("history", history)
                trial.set_user_attr("train_seconds", round(sum(h["train_seconds"] for h in history), 2))
                trial.set_user_attr("test_acc", stats["test_acc"])   # reported with the results, never optimised
                trial.report(stats[metric], stats["epoch"])
                beside = f", test acc {stats['test_acc']:.2%}" if metric != "test_acc" else ""
                self.log(f"[trial {trial.number}] epoch {stats['epoch']}/{recipe.epochs}: "
                         f"{name} {stats[metric]:.2%}{beside}  ({stats['train_seconds']:.0f}s)")
                # after the last epoch the trial is done: a result below the median is still a result
                if stats["epoch"] < recipe.epochs and trial.should_prune():
                    trial.set_user_attr("stopped", f"pruner at epoch {stats['epoch']}")
                    raise optuna.TrialPruned(f"{name} {stats[metric]:.2%} lags at epoch {stats['epoch']}")

            try:
                if resume:
                    training.setup()
                    for h in Record.load(run_dir).history:   # what the dead worker had reported
                        trial.report(h[metric], h["epoch"])
                record = training.run(resume=resume, on_epoch=on_epoch)
            except NonFiniteLossError as e:
                trial.set_user_attr("stopped", f"diverged: {e}")
                raise optuna.TrialPruned(str(e)) from None
        return record.final_val_acc if metric == "val_acc" else record.final_acc

    def _take_over(self, trial, run_dir: Path) -> bool:
        """A retry of a trial whose worker died continues from that trial's last checkpoint."""
        failed = _retried_from(trial)
        old = self.folder / f"trial-{failed:03d}" if failed is not None else None
        if old is None or not (old / HISTORY).is_file() or run_dir.exists():
            return False
        os.replace(old, run_dir)   # atomic: the folder belongs to one trial at a time
        # Optuna's heartbeat has declared its worker dead: that worker's lock goes with it (on another
        # host the lock's own staleness test would wait for STALE seconds)
        (run_dir / LOCK).unlink(missing_ok=True)
        trial.set_user_attr("resumed_from", failed)
        self.log(f"[trial {trial.number}] retries trial {failed} (its worker died or lost the database): "
                 "resuming its run folder")
        return True
