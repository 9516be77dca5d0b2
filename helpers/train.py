"""Train one run from the command line:

    python -m helpers.train --recipe fast --data-dir ../shared/data/cifar10-jpeg-dev --out runs/fast

Checkpoints are written atomically at the end of every epoch (helpers/checkpoint.py); --resume
continues an interrupted run. From Python, helpers.run.train / Trial do the same and return a Record.
"""
from __future__ import annotations

import shlex
import sys
from pathlib import Path

from .cli import get_args_parser
from .loop import NonFiniteLossError
from .run import Trial


def main(argv=None):
    p = get_args_parser()
    p.add_argument("--out", required=True, help="run folder: checkpoint.pt and history.json are written here")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    args = p.parse_args(argv)
    if args.data == "folder" and not args.data_dir:
        p.error("--data folder needs --data-dir DIR (a folder holding train/ and test/)")
    if args.lr is not None and not args.lr > 0:
        p.error(f"--lr must be > 0, got {args.lr}")
    if "model" in dict(args.set):
        p.error("--set model=...: use --model NAME (or FILE.py:NAME)")
    try:
        trial = Trial(name=Path(args.out).name, recipe=args.recipe, model=args.model, data=args.data,
                      data_dir=args.data_dir, limit=args.limit, device=args.device, seed=args.seed, out_dir=args.out,
                      threads=args.threads, **{**dict(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                                                    precision=args.precision, compile=args.compile), **dict(args.set)})
        record = trial.run(resume=args.resume)
    except (ValueError, FileExistsError, FileNotFoundError, NonFiniteLossError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: every finished epoch is in the checkpoint
        done = len(trial.trainer.history) if trial.trainer else 0
        again = shlex.join(["python", "-m", "helpers.train", *(sys.argv[1:] if argv is None else argv)])
        print(f"interrupted: {done} epoch(s) saved in {args.out}; to continue: "
              f"{again}{'' if args.resume else ' --resume'}", file=sys.stderr)
        return 130
    reached = record.first_epoch_reaching(0.80)
    tta = f" (with TTA {record.final_tta_acc:.2%})" if record.final_tta_acc is not None else ""
    print(f"final test accuracy (plain, single view) {record.final_acc:.2%}{tta}, best epoch {record.best_acc:.2%}; "
          + (f"80% first reached at epoch {reached}" if reached else "80% not reached") + f"; outputs in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
