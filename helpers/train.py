"""Train one run from the command line:

    python -m helpers.train --recipe fast --data-dir ../shared/data/cifar10-jpeg-dev --out runs/fast

Checkpoints are written atomically at the end of every epoch (helpers/checkpoint.py); --resume
continues an interrupted run. From Python, helpers.run.train / Trial do the same and return a Record.
"""
from __future__ import annotations

import shlex
import sys
from pathlib import Path

from .cli import get_args_parser, overrides, parse
from .loop import NonFiniteLossError
from .run import Trial


def main(argv=None):
    p = get_args_parser("python -m helpers.train", "Train a CIFAR-10 CNN under the assignment's constraints.")
    p.add_argument("--out", required=True, help="run folder: checkpoint.pt and history.json are written here")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    args = parse(p, argv)
    trial = None
    try:
        trial = Trial(name=Path(args.out).name, recipe=args.recipe, data=args.data, data_dir=args.data_dir,
                      limit=args.limit, seed=args.seed, out_dir=args.out, val=args.val, **overrides(args))
        record = trial.run(resume=args.resume)
    except (ValueError, FileExistsError, FileNotFoundError, NonFiniteLossError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: every finished epoch is in the checkpoint
        done = len(trial.trainer.history) if trial and trial.trainer else 0
        again = shlex.join(["python", "-m", "helpers.train", *(sys.argv[1:] if argv is None else argv)])
        print(f"interrupted: {done} epoch(s) saved in {args.out}; to continue: "
              f"{again}{'' if args.resume else ' --resume'}", file=sys.stderr)
        return 130
    reached = record.first_epoch_reaching(0.80)
    tta = f" (with TTA {record.final_tta_acc:.2%})" if record.final_tta_acc is not None else ""
    val = "" if record.final_val_acc is None else f"validation accuracy {record.final_val_acc:.2%} (--val {args.val}); "
    print(f"final test accuracy (plain, single view) {record.final_acc:.2%}{tta}, best epoch {record.best_acc:.2%}; "
          + val + (f"80% first reached at epoch {reached}" if reached else "80% not reached")
          + f"; outputs in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
