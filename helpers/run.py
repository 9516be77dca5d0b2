"""One named run: Trial builds the data, the network and a Trainer from a recipe; the Trainer runs
the epochs (helpers/loop.py's pieces), keeps their history and writes a checkpoint after each one
(helpers/checkpoint.py), so an interrupted run loses at most the epoch in progress and resumes
to the same history as a run that was never interrupted.

    record = train(recipe="seed", data="synthetic", epochs=1)
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import torch

from .checkpoint import (CHECKPOINT, FORMAT, PREV_CHECKPOINT, CheckpointError, check_resume, find_checkpoint,
                         read_checkpoint, save_checkpoint, sync_history)
from .colab import on_drive
from .constraints import check
from .data import SOURCES, channel_stats, check_val, load_splits, split_validation, val_size
from .augment import from_recipe
from .loader import Loader
from .device import (configure_backends, make_scaler, needs_warm_up, peak_rss_mb, pick_device, reset_peak_memory,
                     resolve_channels_last, resolve_compile, resolve_precision)
from .errors import UserError
from .explain import explain_recipe
from .loop import (CompileFailed, NonFiniteLossError, StepHooks, compile_model, evaluate, make_ema, make_lookahead,
                   make_optimizer, progress_default, image_size, set_whiten_bias, train_one_epoch, warm_up)
from .model import count_params
from .probe import check_network
from .record import Record
from .recipes import Recipe, Settings, get_recipe, split_fields
from .registry import build_model, file_source, keep_copy, model_identity, spec_name
from .rundir import RunExistsError, RunLock, check_writable
from .schedule import schedule
from .speed import IDLE


class Trainer:
    """Runs epochs, records history, writes a checkpoint after each epoch, resumes."""

    def __init__(self, model, recipe: Recipe, train_loader, test_loader, device, out_dir=None,
                 seed=0, progress=None, run_info=None, log=print, lock=None, settings: Settings | None = None,
                 val_loader=None):
        self.model, self.recipe, self.device, self.seed = model, recipe, device, seed
        # as resolved for `device` (Trial does that); a Trainer built by hand without them runs in fp32
        self.settings = settings or Settings(device=str(device), precision="fp32", compile="off", channels_last=False)
        self.train_loader, self.test_loader = train_loader, test_loader
        self.val_loader = val_loader  # the validation split (Trial's val=), evaluated beside the test split
        self.out_dir = Path(out_dir) if out_dir else None
        # one writer per run folder (helpers/rundir.py): taken by Trial.setup, or here in restore()
        self.lock = lock or (RunLock(self.out_dir, drive=on_drive(self.out_dir)) if self.out_dir else None)
        self.progress = progress_default() if progress is None else progress
        self.run_info = run_info or {}
        self.log = log
        self.optimizer = make_optimizer(model, recipe)
        self.schedule = schedule(recipe, len(train_loader))  # lr and momentum as a function of the step
        self.step = 0  # optimizer steps taken: where the run stands in its schedule
        self.ema = make_ema(model, recipe)
        self.lookahead = make_lookahead(model, recipe, len(train_loader))
        self.scaler = make_scaler(device, self.settings.precision)
        self.stopwatch = IDLE  # a speed.Stopwatch times each phase of the epochs (benchmark --profile)
        self.history: list[dict] = []

    @property
    def eval_model(self):
        """The weights that are evaluated: the moving average when the recipe keeps one."""
        return self.ema.module if self.ema is not None else self.model

    @property
    def epoch(self) -> int:
        """Epochs finished (and saved) so far."""
        return len(self.history)

    @property
    def config(self) -> dict:
        """What the run is: recipe, seed, settings, data, model identity ... (stored in every checkpoint)."""
        return dict(format=FORMAT, recipe=self.recipe.to_dict(), seed=self.seed, settings=self.settings.to_dict(),
                    **self.run_info)

    # ---- checkpoints
    def checkpoint(self) -> dict:
        return dict(model=self.model.state_dict(), optimizer=self.optimizer.state_dict(),
                    step=self.step, epoch=self.epoch, history=self.history,
                    ema=self.ema.module.state_dict() if self.ema is not None else None,
                    lookahead=self.lookahead.state_dict() if self.lookahead is not None else None,
                    scaler=self.scaler.state_dict() if self.scaler.is_enabled() else None,
                    config=self.config)

    def save(self):
        """checkpoint.pt (atomically; the previous one kept as checkpoint.prev.pt) and history.json."""
        if self.out_dir:
            save_checkpoint(self.out_dir, self.checkpoint())

    def load(self, path):
        """Restore a checkpoint's state, after checking it was written by this very run.

        Refuses (CheckpointError, nothing loaded or written) when the recipe, seed, data or
        steps per epoch differ, naming each difference.
        """
        ckpt = read_checkpoint(path, self.device)
        check_resume(path, ckpt, self.config, len(self.train_loader), self.log)
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.step = ckpt["step"]
        if self.ema is not None:
            self.ema.module.load_state_dict(ckpt["ema"])
            self.ema.n_averaged.fill_(1)  # > 0: the next update averages instead of copying
        if self.lookahead is not None:
            self.lookahead.load_state_dict(ckpt["lookahead"])
        if self.scaler.is_enabled() and ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])  # the loss scale it had reached: resume stays exact
        self.history = list(ckpt["history"])
        # the checkpoint is the source of truth: a crash between its write and history.json's
        # leaves history.json an epoch behind, repaired here
        sync_history(Path(path).parent, ckpt, self.log)
        self.log(f"resumed from {path} at epoch {self.epoch}")

    # ---- the epoch loop, in the pieces notebook 03 shows (fit runs them in the same order)
    def restore(self, resume=True) -> int:
        """Continue from the run folder's checkpoint if there is one; returns the epochs it holds (0: none).

        resume=False refuses to train over an existing checkpoint (RunExistsError, a FileExistsError).
        """
        if self.lock is not None:
            self.lock.acquire(self.log)  # before reading the checkpoint another run might be writing
        found = find_checkpoint(self.out_dir)
        if found:
            if not resume:
                raise RunExistsError(f"{found} already exists; pass resume=True (--resume) to continue "
                                     "that run, or choose another output folder")
            if found.name == PREV_CHECKPOINT:  # save() died between its two renames
                self.log(f"note: {found.with_name(CHECKPOINT)} is missing; resuming from the previous epoch's {found}")
            self.load(found)
        if self.epoch >= self.recipe.epochs and self.lock is not None:
            self.lock.release()  # nothing left to train: the folder is free
        return self.epoch

    def train_one_epoch(self, epoch: int) -> dict:
        """Train epoch `epoch` (1-based): its own seeds, so that dropout, batch order and augmentation
        depend only on (seed, epoch) and a resumed run repeats it exactly; the whitening bias
        schedule and the image size (progressive resizing); then the SGD steps along the lr schedule
        (the module's train_one_epoch)."""
        torch.manual_seed(self.seed * 100_003 + epoch)
        self.train_loader.set_epoch(epoch, self.seed)
        self.train_loader.size = image_size(self.recipe, epoch, self.train_loader.images.shape[-2])
        set_whiten_bias(self.model, self.recipe, epoch)
        hooks = StepHooks(self.settings.precision, self.scaler, self.lookahead, self.ema, self.stopwatch,
                          self.progress)
        try:
            stats = train_one_epoch(self.model, self.train_loader, self.optimizer, self.schedule, self.recipe,
                                    self.step, epoch, hooks)
        except NonFiniteLossError as e:
            raise self._stopped(e) from None
        self.step += len(self.train_loader)
        return dict(epoch=epoch, **stats)

    def evaluate(self) -> dict:
        """Test loss and plain single-view accuracy of the evaluated weights (the moving average when
        the recipe keeps one), and with the recipe's test-time augmentation tta_loss / tta_acc beside them.
        With a validation split, also val_loss and val_acc (plain) and val_tta_acc (with the recipe's TTA):
        what a sweep tunes on, so that the test split stays unseen by any choice."""
        t0 = time.perf_counter()
        self.stopwatch.start()
        stats = evaluate(self.eval_model, self.test_loader, self.settings.precision, self.recipe.tta)
        if self.val_loader is not None:
            val = evaluate(self.eval_model, self.val_loader, self.settings.precision, self.recipe.tta)
            stats |= dict(val_loss=val["test_loss"], val_acc=val["test_acc"])
            if "tta_acc" in val:
                stats["val_tta_acc"] = val["tta_acc"]
        self.stopwatch.lap("evaluation")
        return stats | dict(eval_seconds=time.perf_counter() - t0)

    def save_epoch(self, stats: dict) -> dict:
        """Keep a finished epoch: append it to the history, write checkpoint.pt (atomically) and
        history.json, log one line. A non-finite loss is never saved as an epoch."""
        if stats.get("epoch") != self.epoch + 1:
            raise ValueError(f"epoch {stats.get('epoch')} cannot follow epoch {self.epoch}: call restore() "
                             "first, then train the epochs in order")
        bad = next((k for k in ("train_loss", "test_loss", "val_loss") if k in stats and not math.isfinite(stats[k])),
                   None)
        if bad:
            raise self._stopped(NonFiniteLossError(f"{bad.replace('_', ' ')} became {stats[bad]} "
                                                   f"at epoch {stats['epoch']}"))
        stats = stats | dict(peak_rss_mb=peak_rss_mb())
        self.history.append(stats)
        try:
            self.stopwatch.start()
            self.save()
            self.stopwatch.lap("checkpoint")
        except CheckpointError:
            self.history.pop()  # not saved, so not an epoch of this run
            raise
        if self.epoch == self.recipe.epochs and self.lock is not None:
            self.lock.release()  # the run is complete: the folder is free for analysis or another run
        tta = f" (TTA {stats['tta_acc']:.2%})" if "tta_acc" in stats else ""
        val = ""
        if "val_acc" in stats:
            val = f"  val acc {stats['val_acc']:.2%}" + (f" (TTA {stats['val_tta_acc']:.2%})"
                                                          if "val_tta_acc" in stats else "")
        self.log(f"epoch {stats['epoch']:>3}/{self.recipe.epochs}  train loss {stats['train_loss']:.4f} "
                 f"acc {stats['train_acc']:.2%}  test loss {stats['test_loss']:.4f} acc {stats['test_acc']:.2%}{tta}"
                 f"{val}  lr {stats['lr']:.4f}  {stats['train_seconds']:.0f}s")
        return stats

    def _stopped(self, error: NonFiniteLossError) -> NonFiniteLossError:
        ckpt = self.out_dir / CHECKPOINT if self.out_dir else None
        kept = f"the last good checkpoint ({ckpt}, epoch {self.epoch}) is kept" if ckpt and ckpt.exists() \
            else "no checkpoint was written"
        return NonFiniteLossError(f"{error}: training stopped; {kept}. Try a lower lr or fp32 precision.")

    def fit(self, resume=False, stop_after=None, on_epoch=None) -> list[dict]:
        """Train until recipe.epochs (or `stop_after` more epochs); returns the history.

        `on_epoch(stats)` runs after each epoch's checkpoint is written (e.g. to report to a
        sweep's pruner); an exception it raises stops the run with that epoch kept.
        """
        try:
            self.restore(resume)
            last = self.recipe.epochs if stop_after is None else min(self.recipe.epochs, self.epoch + stop_after)
            for epoch in range(self.epoch + 1, last + 1):
                stats = self.train_one_epoch(epoch)
                stats |= self.evaluate()
                stats = self.save_epoch(stats)
                if on_epoch is not None:
                    on_epoch(stats)
        finally:
            if self.lock is not None:
                self.lock.release()
        return self.history


def recipe_table(trainer: Trainer) -> str:
    """The recipe as `trainer` will train it (explain.explain_recipe), read off its own recipe, settings,
    optimizer and loader: what notebook 03 prints before training."""
    return explain_recipe(trainer.recipe, trainer.settings, trainer.model, trainer.optimizer.param_groups,
                          len(trainer.train_loader), trainer.train_loader.images.shape[-2],
                          trainer.run_info.get("output", "output"))


class Trial:
    """One named run: builds data, model and Trainer from a recipe and settings, runs it, returns a Record.

    `recipe`: a name from RECIPES or a Recipe; `settings`: a Settings (how it runs on this machine).
    Fields of either may follow as keywords (epochs=5, precision="fp32", device="cpu"). `model`: None
    (the recipe's), a registered name, your own "FILE.py:NAME", or a Python callable returning an
    nn.Module. A model that breaks one of the assignment's rules is refused before any training
    (enforce_rules=False is for measuring what a rule costs). `log` gets every line the run reports
    (print by default; the benchmark sends them to stderr, a sweep to each trial's train.log).
    `val`: a validation split held out of the training split (after `limit`), class-balanced and the same
    for every seed: a number of images (5000) or a fraction (0.1); None or 0, the default: none, and the
    run trains on the whole training split. With one, every epoch also records val_loss and val_acc.
    Every argument is a keyword.
    """

    def __init__(self, *, name="run", recipe="seed", model=None, data="synthetic", data_dir=None, limit=None,
                 seed=0, out_dir=None, progress=None, enforce_rules=True, settings: Settings | None = None,
                 log=print, val=None, **overrides):
        if data not in SOURCES:
            raise UserError(f"unknown data source {data!r}; choose one of {', '.join(SOURCES)}")
        if data == "folder" and not data_dir:
            raise UserError("data='folder' needs data_dir (--data-dir DIR on the command line): "
                             "a folder holding train/ and test/")
        if limit is not None and limit <= 0:
            raise UserError(f"limit must be a positive number of images per split, or None; got {limit}")
        self.val = check_val(val)  # a bad value is one line now, before the network is built or data read
        recipe_changes, setting_changes = split_fields(overrides)
        if setting_changes.get("device") is not None:
            setting_changes["device"] = str(setting_changes["device"])  # a torch.device, as the notebooks pass it
        self.name = name
        self.factory = model if callable(model) else None  # a Python callable cannot live in a Recipe: its name does
        self.recipe = recipe if isinstance(recipe, Recipe) else get_recipe(recipe)
        self.recipe = self.recipe.override(model=spec_name(model) if model is not None else None, **recipe_changes)
        self.recipe = self.recipe.validate()
        if limit is not None:  # a validation split that leaves less than a batch: one line before any work
            val_size(self.val, limit, self.recipe.batch_size)
        self.settings = (settings or Settings()).override(**setting_changes).validate()
        self.data, self.data_dir, self.limit = data, data_dir, limit
        self.seed, self.out_dir, self.progress = seed, out_dir, progress
        self.enforce_rules, self.log = enforce_rules, log
        self.trainer: Trainer | None = None

    def setup(self) -> Trainer:
        if self.out_dir:  # a file, a parent that is a file, a read-only disk: one line, before any work
            check_writable(self.out_dir, create=False)
        self.lock = None
        try:
            return self._setup()
        except BaseException:
            if self.lock is not None:
                self.lock.release()  # nothing will train: the folder is free again
            raise

    def _setup(self) -> Trainer:
        requested = self.settings  # as asked; self.settings becomes the resolved ones
        device = self._pick_device()
        # the network first: a file that fails or a rule it breaks is one line before any data is read
        model, source = self._build_model()
        self._lock_folder()
        train_set, val_set, test_set = self._load_data()
        s = self._resolve_settings(device)
        mean, std, train_loader, test_loader, val_loader = self._make_loaders(train_set, test_set, val_set, device, s)
        s = self._resolve_compile(requested, s, device, len(train_loader))
        model = self._place_model(model, device, s, train_set, train_loader)
        output = self._check_network(model, device, train_set, train_loader)
        identity = self._keep_identity(model, source)
        s, timings = self._compile_or_warm_up(model, device, s, train_loader, test_loader)
        info = self._run_info(requested, device, model, mean, std, train_set, test_set, val_set, train_loader, output,
                              identity, timings)
        self.trainer = Trainer(model, self.recipe, train_loader, test_loader, device, self.out_dir, self.seed,
                               self.progress, info, log=self.log, lock=self.lock, settings=s, val_loader=val_loader)
        return self.trainer

    def _pick_device(self) -> torch.device:
        device = pick_device(self.settings.device, self.log)
        configure_backends(device)
        reset_peak_memory(device)  # the benchmark's peak_device_mb covers this run alone
        return device

    def _build_model(self):
        """The network, seeded, and checked against the rules; with its source file (None: not a file)."""
        r = self.recipe
        source = file_source(r.model)  # your FILE.py as built, kept in the run folder
        torch.manual_seed(self.seed)  # model init depends on the seed only
        model = build_model(self.factory or r.model, **r.model_kwargs)
        if self.enforce_rules:
            check(model).require(r.model)
        return model, source

    def _lock_folder(self):
        if self.out_dir:  # one run per folder: another one training there is one line, before data is read
            self.lock = RunLock(check_writable(self.out_dir), drive=on_drive(self.out_dir)).acquire()

    def _load_data(self):
        """(train_set, val_set, test_set); val_set is None without a validation split."""
        train_set, test_set = load_splits(self.data, self.data_dir, self.limit, log=self.log)
        # the validation split leaves the training split before anything is computed from it (normalisation,
        # the whitening init): nothing of it reaches training. None without one: train_set as it was
        train_set, val_set = split_validation(train_set, self.val, min_train=self.recipe.batch_size)
        return train_set, val_set, test_set

    def _resolve_settings(self, device) -> Settings:
        # per-device choices, made once and stored resolved (checkpoint config, history, benchmark); what was
        # asked is kept too: a resume on another device may re-resolve an "auto" (checkpoint.check_resume)
        requested = self.settings
        return requested.override(device=str(device), precision=resolve_precision(requested.precision, device),
                                  channels_last=resolve_channels_last(requested.channels_last, device))

    def _make_loaders(self, train_set, test_set, val_set, device, s: Settings):
        """(mean, std, train_loader, test_loader, val_loader): normalised by the training split's statistics."""
        r = self.recipe
        mean, std = channel_stats(train_set.images)
        common = dict(mean=mean, std=std, device=device, channels_last=s.channels_last)
        train_loader = Loader(train_set, r.batch_size, True, augmentations=from_recipe(r), seed=self.seed, **common)
        test_loader = Loader(test_set, 500, False, **common)
        val_loader = Loader(val_set, 500, False, **common) if val_set is not None else None
        return mean, std, train_loader, test_loader, val_loader

    def _resolve_compile(self, requested: Settings, s: Settings, device, steps_per_epoch: int) -> Settings:
        """Settings with compile resolved; from here on self.settings is the resolved one, and each
        change from what was asked (except the device) is logged in one line."""
        # torch.compile pays back only over many steps: decided now that the run's length is known
        self.settings = s = s.override(compile=resolve_compile(requested.compile, device,
                                                               self.recipe.epochs * steps_per_epoch))
        changed = [f"{k}: {v} -> {getattr(s, k)}" for k, v in requested.to_dict().items()
                   if k != "device" and getattr(s, k) != v]
        if changed:
            self.log("; ".join(changed))
        return s

    def _place_model(self, model, device, s: Settings, train_set, train_loader):
        """The network on `device`, its data-dependent init done, in the run's memory layout."""
        model = model.to(device)
        for m in model.modules():  # data-dependent init (PatchWhitening) from 5,000 training images
            if hasattr(m, "init_whitening"):
                m.init_whitening(train_loader.normalize(train_set.images[:5000].to(device)).contiguous())
        if s.channels_last:
            model = model.to(memory_format=torch.channels_last)
        return model

    def _check_network(self, model, device, train_set, train_loader):
        """The network's first pass at every image size the recipe feeds it: a network that cannot train is one
        line now, not a traceback from inside the first epoch; one that needs full-size images trains without
        progressive resizing (self.recipe changes then). Returns the output check_network reports."""
        sample = train_loader.normalize(train_set.images[:8].to(device))
        self.recipe, output = check_network(model, self.recipe, sample, len(train_set.classes), self.log)
        return output

    def _keep_identity(self, model, source) -> dict:
        """What network this run trains (checked on resume); a copy of its file in the run folder."""
        identity = model_identity(self.factory or self.recipe.model, model, source)
        keep_copy(self.out_dir, identity, source)
        return identity

    def _compile_or_warm_up(self, model, device, s: Settings, train_loader, test_loader):
        """One-time work on each shape (compiling, cuDNN autotuning) done now and reported apart, never inside
        train_seconds; a compile includes its warm-up. Returns the settings (compile "off" after a failed
        compile) and dict(compile_seconds, warmup_seconds, compile_error)."""
        r = self.recipe
        compile_seconds, warmup_seconds, compile_error = 0.0, 0.0, None
        if s.compile != "off":
            self.log(f"torch.compile ({s.compile}): compiling every graph now, before the clock starts")
            try:
                compile_seconds = compile_model(model, r, s, train_loader, test_loader)
                self.log(f"compiled in {compile_seconds:.1f} s")
            except CompileFailed as e:
                # compiling is a speed setting, never what is trained: its failure costs speed, not the run
                compile_error = str(e)
                self.settings = s = s.override(compile="off")
                self.log(f"torch.compile failed ({compile_error}); the run continues uncompiled (compile: off)")
        elif needs_warm_up(device):
            warmup_seconds = warm_up(model, r, s, train_loader, test_loader)
            self.log(f"warm-up (each graph once, before the clock starts): {warmup_seconds:.1f} s")
        return s, dict(compile_seconds=round(compile_seconds, 1), warmup_seconds=round(warmup_seconds, 1),
                       compile_error=compile_error)

    def _run_info(self, requested: Settings, device, model, mean, std, train_set, test_set, val_set, train_loader,
                  output, identity, timings) -> dict:
        """The run's config beyond recipe, seed and settings: what it was asked, its data and network."""
        info = dict(name=self.name, requested=requested.to_dict(), data=self.data,
                    data_dir=str(self.data_dir) if self.data_dir else None, limit=self.limit, mean=mean, std=std,
                    classes=train_set.classes,
                    params=count_params(model), device=str(device), torch=str(torch.__version__),
                    **timings, output=output, model_identity=identity)
        # what the run is trained and evaluated on: a resume must match it (checkpoint.check_resume)
        info["data_identity"] = dict(
            source=self.data, folder=str(Path(self.data_dir).resolve()) if self.data_dir else None,
            limit=self.limit, train_images=len(train_set), test_images=len(test_set),
            train_fingerprint=train_set.fingerprint(), test_fingerprint=test_set.fingerprint(),
            steps_per_epoch=len(train_loader))
        if val_set is not None:
            # written only with a validation split: a run without one keeps the config it always had, and a
            # checkpoint without these keys is a run without one (checkpoint.resume_differences)
            info |= dict(val=self.val, val_images=len(val_set))
            info["data_identity"] |= dict(val=self.val, val_images=len(val_set), val_fingerprint=val_set.fingerprint())
            self.log(f"validation split (val={self.val}): {len(val_set)} of the {len(train_set) + len(val_set)} "
                     f"training images held out, the same for every seed; {len(train_set)} left to train on")
        info["skipped_files"] = dict(train=train_set.skipped_files(), test=test_set.skipped_files())
        return info

    def record(self) -> Record:
        """The run so far: its config and history (after setup)."""
        return Record(self.name, self.trainer.config, list(self.trainer.history))

    def run(self, resume=False, stop_after=None, on_epoch=None) -> Record:
        trainer = self.trainer or self.setup()
        trainer.fit(resume=resume, stop_after=stop_after, on_epoch=on_epoch)
        return self.record()


def train(recipe="seed", data="synthetic", resume=False, name=None, **kwargs) -> Record:
    """Train one run and return its Record (see Trial for the arguments)."""
    name = name or (recipe if isinstance(recipe, str) else "run")
    return Trial(name=name, recipe=recipe, data=data, **kwargs).run(resume=resume)
