"""Time-to-accuracy benchmark: train a recipe, print one JSON line per seed.

    python -m helpers.benchmark --data-dir ../shared/data/cifar10-jpeg-dev --recipe fast --seeds 3

Trains on DIR/train, evaluates on DIR/test. `train_seconds` is training wall time only
(dataset decoding, model setup and the per-epoch evaluation are excluded); `test_acc` is
the final accuracy with the recipe's test-time augmentation.
"""
from __future__ import annotations

import contextlib
import json
import platform
import sys
from pathlib import Path

import torch

from .recipes import get_recipe
from .train import Trial, get_args_parser, peak_rss_mb


def get_parser():
    p = get_args_parser()
    p.prog = "python -m helpers.benchmark"
    p.description = __doc__.split("\n\n")[0]
    p.set_defaults(recipe="fast")
    p.add_argument("--seeds", type=int, default=1, help="run seeds 0..N-1 (one JSON line each)")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", type=_field_value,
                   help="override any recipe field, VALUE as JSON: --set alternate_flip=false "
                        "--set 'model_kwargs={\"bn_after_pool\": false}' (repeatable; for ablations)")
    p.add_argument("--out", help="also keep each seed's run (checkpoint.pt, history.json) in OUT/seed-N")
    return p


def _field_value(text: str):
    import argparse

    field, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected FIELD=VALUE, got {text!r}")
    try:
        return field, json.loads(value)
    except json.JSONDecodeError:
        return field, value  # a bare string such as precision=bf16


def seed_dir(out, seed: int) -> Path:
    """Where `--out OUT` keeps one seed's run."""
    return Path(out) / f"seed-{seed}"


def bench_one(args, seed: int) -> dict:
    out_dir = seed_dir(args.out, seed) if args.out else None
    trial = Trial(f"bench-{args.recipe}-{seed}", args.recipe, args.data, args.data_dir, args.limit, args.device,
                  seed, out_dir=out_dir, progress=False, threads=args.threads, **_overrides(args))
    trainer = trial.setup()
    record = trial.run()
    n_train = len(trainer.train_loader) * trainer.train_loader.batch_size  # images actually trained on per epoch
    train_seconds = sum(h["train_seconds"] for h in record.history)
    return dict(recipe=args.recipe, overrides=dict(args.set), model=trial.recipe.model, params=record.config["params"],
                epochs=len(record.history), seed=seed, train_seconds=round(train_seconds, 2),
                test_acc=round(record.final_acc, 4), img_per_s=round(n_train * len(record.history) / train_seconds, 1),
                peak_rss_mb=round(peak_rss_mb(), 1), device=_device_name(trainer.device),
                threads=torch.get_num_threads(), torch=str(torch.__version__), precision=trial.recipe.precision,
                data=args.data if args.data != "folder" else f"folder:{Path(args.data_dir).name}",
                first_epoch_80=record.first_epoch_reaching(0.80),
                acc_per_epoch=[round(h["test_acc"], 4) for h in record.history])


def _overrides(args) -> dict:
    return dict(model=args.model, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                precision=args.precision) | dict(args.set)


def _device_name(device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.machine()})"


def main(argv=None) -> int:
    p = get_parser()
    args = p.parse_args(argv)
    if args.seeds < 1:
        p.error(f"--seeds must be >= 1, got {args.seeds}")
    seeds = range(args.seed, args.seed + args.seeds)
    if args.data == "folder":
        if not args.data_dir:
            p.error("--data-dir DIR is required (a folder holding train/ and test/), or use --data synthetic")
        if not Path(args.data_dir).is_dir():
            p.error(f"--data-dir {args.data_dir} does not exist")
    if args.out:
        taken = sorted(str(d) for d in (seed_dir(args.out, s) for s in seeds) if d.exists())
        if taken:
            p.error(f"--out {args.out} already holds runs for {', '.join(taken)}; choose another --out")
    try:
        get_recipe(args.recipe, **_overrides(args))  # bad values fail here, before any data is read
        for seed in seeds:
            with contextlib.redirect_stdout(sys.stderr):  # progress lines to stderr: stdout is JSON only
                row = bench_one(args, seed)
            print(json.dumps(row), flush=True)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
