"""Time-to-accuracy benchmark: train a recipe, print one JSON line per seed.

    python -m helpers.benchmark --data-dir ../shared/data/cifar10-jpeg-dev --recipe fast --seeds 3

Trains on DIR/train, evaluates on DIR/test. `train_seconds` is training wall time only
(dataset decoding, model setup and the per-epoch evaluation are excluded); `test_acc` is
the final plain (single-view) test accuracy, `tta_acc` beside it the same with the recipe's
test-time augmentation (null when the recipe has none). `first_epoch_80`, `acc_per_epoch` and
`--target` use plain test accuracy. With `--val`, every seed holds out the same validation split
(the setting is `val`, null without one) and `val_acc` is its final plain accuracy (null without).

Against the machine's limit (helpers/speed.py): `gflop_per_image` is the forward + backward work of
one full-size training image (torch.utils.flop_counter), `gflop_per_s` what training achieved (smaller
images, under progressive resizing, counted at their own cost),
`peak_gflop_per_s` this device's large-matmul rate at the run's precision, timed in this process,
and `peak_fraction` their ratio. `--profile` adds where each epoch's time went.
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import torch

from .device import peak_memory_mb
from .cli import get_args_parser, overrides, parse, positive_int
from .device import peak_rss_mb
from .loop import NonFiniteLossError, image_sizes
from .registry import build_model
from .run import Trial
from .speed import Stopwatch, gflop_per_image, peak_gflop_per_s


def get_parser():
    p = get_args_parser("python -m helpers.benchmark", __doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=positive_int, default=1,
                   help="run N seeds, --seed .. --seed+N-1, one JSON line each (default: %(default)s)")
    p.add_argument("--target", type=_accuracy, default=None, metavar="ACC",
                   help="also report seconds_to_target: training seconds until the first epoch whose plain test "
                        "accuracy reaches ACC (a fraction, e.g. 0.908), null if none does")
    p.add_argument("--out", help="also keep each seed's run (checkpoint.pt, history.json) in OUT/seed-N")
    p.add_argument("--profile", action="store_true",
                   help="also time each phase of the epochs (data and augmentation, forward, backward, optimizer, "
                        "evaluation, checkpoint), synchronising the device at each boundary: a table on stderr and "
                        "`profile` in the JSON line (the synchronisation slows a GPU run a little)")
    p.add_argument("--allow-rule-breaking", action="store_true",
                   help="train a model that breaks an assignment rule (refused otherwise): only to measure "
                        "what a rule costs")
    return p


def _accuracy(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = None
    if value is None or not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be an accuracy between 0 and 1 (e.g. 0.908), got {text!r}")
    return value


def seed_dir(out, seed: int) -> Path:
    """Where `--out OUT` keeps one seed's run."""
    return Path(out) / f"seed-{seed}"


def bench_one(args, seed: int, peak: dict) -> dict:
    """One seed's JSON row. `peak`: this device's measured peak (filled by the first seed, then reused)."""
    out_dir = seed_dir(args.out, seed) if args.out else None
    trial = Trial(name=f"bench-{args.recipe}-{seed}", recipe=args.recipe, data=args.data, data_dir=args.data_dir,
                  limit=args.limit, seed=seed, out_dir=out_dir, progress=False, log=_to_stderr,
                  enforce_rules=not args.allow_rule_breaking, val=args.val, **overrides(args))
    trainer = trial.setup()
    if args.profile:
        trainer.stopwatch = Stopwatch(trainer.device)
    record = trial.run()
    if args.profile:
        _to_stderr(f"where the time went (seed {seed}, {len(record.history)} epochs):\n{trainer.stopwatch.table()}")
    n_train = len(trainer.train_loader) * trainer.train_loader.batch_size  # images actually trained on per epoch
    train_seconds = sum(h["train_seconds"] for h in record.history)
    # the work against the machine's limit: the FLOPs counted per run (a fraction of a second), the peak
    # timed once per process (two seconds)
    gflop, trained = training_gflop(trial, trainer.train_loader.images.shape[1:])
    if not peak:
        peak |= peak_gflop_per_s(trainer.device, trial.settings.precision)
    achieved = trained * n_train / train_seconds
    compile_seconds = record.config.get("compile_seconds", 0.0)
    elapsed = list(itertools.accumulate(h["train_seconds"] for h in record.history))  # after each epoch
    reached = record.first_epoch_reaching(args.target) if args.target else None
    return dict(recipe=args.recipe, overrides=dict(args.set), model=trial.recipe.model, params=record.config["params"],
                epochs=len(record.history), seed=seed, train_seconds=round(train_seconds, 2),
                test_acc=round(record.final_acc, 4),
                tta_acc=round(record.final_tta_acc, 4) if record.final_tta_acc is not None else None,
                tta=trial.recipe.tta, val=trial.val,
                val_acc=round(record.final_val_acc, 4) if record.final_val_acc is not None else None,
                img_per_s=round(n_train * len(record.history) / train_seconds, 1),
                gflop_per_image=round(gflop, 4), gflop_per_s=round(achieved, 1), **peak,
                peak_fraction=round(achieved / peak["peak_gflop_per_s"], 3),
                peak_rss_mb=round(peak_rss_mb(), 1), peak_device_mb=_rounded(peak_memory_mb(trainer.device), 1),
                device=_device_name(trainer.device),
                threads=torch.get_num_threads(), torch=str(torch.__version__), precision=trial.settings.precision,
                compile=trial.settings.compile, compile_seconds=compile_seconds,
                # an uncompiled GPU run's first pass over each shape, done before the clock (device.needs_warm_up)
                warmup_seconds=record.config.get("warmup_seconds", 0.0),
                # what a student waits for: a compile only pays when this sum drops (device.COMPILE_MIN_STEPS)
                train_plus_compile_seconds=round(train_seconds + compile_seconds, 2),
                data=args.data if args.data != "folder" else f"folder:{Path(args.data_dir).name}",
                first_epoch_80=record.first_epoch_reaching(0.80),
                acc_per_epoch=[round(h["test_acc"], 4) for h in record.history],
                seconds_per_epoch=[round(t, 1) for t in elapsed]) | (
        dict(target=args.target, seconds_to_target=round(elapsed[reached - 1], 1) if reached else None,
             seconds_to_target_plus_compile=round(elapsed[reached - 1] + compile_seconds, 1) if reached else None)
        if args.target else {}) | (
        dict(profile={k: round(v, 2) for k, v in trainer.stopwatch.seconds.items()}) if args.profile else {})


def training_gflop(trial, image_shape) -> tuple[float, float]:
    """(GFLOP per full-size image, GFLOP per image summed over the recipe's epochs). They differ under
    progressive resizing: smaller early images cost less, and counting them at full size would
    overstate the rate achieved."""
    model = build_model(trial.factory or trial.recipe.model, **trial.recipe.model_kwargs)
    channels, height, width = image_shape
    sizes = image_sizes(trial.recipe, height)
    per_size = {s: gflop_per_image(model, (channels, s, round(width * s / height))) for s in {height, *sizes}}
    return per_size[height], sum(per_size[s] for s in sizes)


def _rounded(value, digits):
    return None if value is None else round(value, digits)


def _to_stderr(line: str):  # the runs' own lines: stdout is the JSON lines only
    print(line, file=sys.stderr, flush=True)


def _device_name(device) -> str:
    from .device import describe

    return describe(device)


def main(argv=None) -> int:
    p = get_parser()
    args = parse(p, argv)
    seeds = range(args.seed, args.seed + args.seeds)
    if args.out:
        taken = sorted(str(d) for d in (seed_dir(args.out, s) for s in seeds) if d.exists())
        if taken:
            p.error(f"--out {args.out} already holds runs for {', '.join(taken)}; choose another --out")
    try:
        # bad values fail here, before data is read
        Trial(recipe=args.recipe, data="synthetic", limit=args.limit, val=args.val, **overrides(args))
        peak = {}
        for seed in seeds:
            print(json.dumps(bench_one(args, seed, peak)), flush=True)
    except (ValueError, NonFiniteLossError) as e:  # DataError and CheckpointError are ValueErrors
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
