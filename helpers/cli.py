"""The command-line layer every entry point shares: argument types, one parser of the training
flags with one set of defaults, and the cross-field checks, each in one place.

    python -m helpers.train / helpers.benchmark / helpers.sweep / helpers.pipeline
"""
from __future__ import annotations

import argparse
import json

import torch

from .data import SOURCES, DataError, check_val, data_dir_problem
from .device import DEVICE_HELP
from .recipes import COMPILE_MODES, KIND_WORDS, PRECISIONS, RECIPES, Recipe, Settings, field_types, has_type
from .registry import list_models, model_problem


def positive_int(s):
    """argparse type of every count flag (--epochs, --batch-size, --limit, --threads, --seeds)."""
    try:
        v = int(s)
    except ValueError:
        v = 0
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {s}")
    return v


def val_arg(text):
    """argparse type of --val: a number of images (5000) or a fraction of the training split (0.1); 0: none."""
    try:
        value = int(text)
    except ValueError:
        try:
            value = float(text)
        except ValueError:
            value = text  # check_val names what it needs
    try:
        check_val(value)
    except DataError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return value


def model_arg(text):
    """argparse type of --model: a registered name or your FILE.py:NAME."""
    problem = model_problem(text)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return text


def field_value(text: str):
    """argparse type of --set: FIELD=VALUE -> (field, value), VALUE parsed as JSON and checked against
    the type of the Recipe or Settings field it names.

    A bare word is a string (precision=bf16) only for string fields: lr=abc, epochs=1.5 or
    model_kwargs={"act": gelu} (unquoted string, invalid JSON) and unknown fields are refused here,
    in one line, instead of failing deep inside training.
    """
    field, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected FIELD=VALUE, got {text!r}")
    if field == "model":
        raise argparse.ArgumentTypeError("model=...: use --model NAME (or FILE.py:NAME)")
    types = field_types(Recipe) | field_types(Settings)
    if field not in types:
        known = f"recipe fields: {', '.join(field_types(Recipe))}; settings: {', '.join(field_types(Settings))}"
        raise argparse.ArgumentTypeError(f"{text!r}: no field {field!r}; {known}")
    kind = types[field]
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        if kind is not str:
            quotes = ", and strings inside need double quotes" if kind is dict else ""
            raise argparse.ArgumentTypeError(f"{text!r}: {value!r} is not valid JSON; "
                                             f"{field} needs {KIND_WORDS[kind]}{quotes}") from None
        parsed = value  # a bare string such as precision=bf16
    whole = isinstance(parsed, float) and parsed.is_integer()
    if not (has_type(parsed, kind) or (kind is int and whole)):
        raise argparse.ArgumentTypeError(f"{text!r}: {field} needs {KIND_WORDS[kind]}, got {parsed!r}")
    return field, (int(parsed) if kind is int else float(parsed) if kind is float else parsed)


def get_args_parser(prog: str, description: str, add_help=True) -> argparse.ArgumentParser:
    """The training flags every command shares (train, benchmark, sweep, pipeline), with one set of
    defaults; each command adds its own flags after these."""
    p = argparse.ArgumentParser(prog=prog, description=description, add_help=add_help)
    p.add_argument("--recipe", default="seed", choices=sorted(RECIPES),
                   help="named hyperparameter set (helpers/recipes.py); other flags override it "
                        "(default: %(default)s)")
    p.add_argument("--model", type=model_arg, help=f"a registered model ({', '.join(list_models())}) or your own "
                                                     "FILE.py:NAME (default: the recipe's)")
    p.add_argument("--data", choices=SOURCES,
                   help="cifar10: download via torchvision; folder: ImageFolder root with train/ and test/; "
                        "synthetic: generated images for smoke runs (default: cifar10, or folder when "
                        "--data-dir is given)")
    p.add_argument("--data-dir", help="folder with train/ and test/ (for --data folder)")
    p.add_argument("--epochs", type=positive_int, help="epochs (default: the recipe's)")
    p.add_argument("--batch-size", type=positive_int, help="batch size (default: the recipe's)")
    p.add_argument("--lr", type=float, help="peak learning rate (default: the recipe's)")
    p.add_argument("--limit", type=positive_int, help="use at most this many images per split (class-balanced)")
    p.add_argument("--seed", type=int, default=0,
                   help="random seed for init, batch order, augmentation, dropout (default: %(default)s)")
    p.add_argument("--val", type=val_arg, default=0, metavar="N|FRACTION",
                   help="validation split: hold out N training images, or a fraction (0.1) of the training split "
                        "(after --limit), class-balanced, the same images for every seed and sweep trial, never "
                        "trained on; each epoch also reports their accuracy (val_acc) beside the test accuracy. "
                        "Tune on it, report test accuracy. 0: none, train on the whole split (default: %(default)s)")
    s = p.add_argument_group("settings", "how the run executes on this machine: speed, never what is trained")
    s.add_argument("--device", default="auto", help=DEVICE_HELP + " (default: %(default)s)")
    s.add_argument("--precision", choices=PRECISIONS,
                   help="autocast precision; auto picks per device, see helpers/device.py (default: auto)")
    s.add_argument("--compile", choices=COMPILE_MODES,
                   help="torch.compile mode; auto compiles long CUDA runs only (default: auto)")
    s.add_argument("--threads", type=positive_int, help="CPU threads for torch (default: torch's choice)")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", type=field_value,
                   help="override any recipe or settings field, VALUE as JSON: --set label_smoothing=0.05 --set "
                        "'model_kwargs={\"bn_after_pool\": false}' (repeatable; wins over the flags above)")
    return p


def parse(p: argparse.ArgumentParser, argv=None, default_data: str | None = "cifar10") -> argparse.Namespace:
    """Parse, then the checks that involve several flags, each in this one place (a bad combination is
    one `error:` line and exit code 2); then --threads, which is process-wide and so the command's job.

    `default_data`: --data when neither --data nor --data-dir is given (None: the command decides later)."""
    args = p.parse_args(argv)
    if args.data_dir and args.data not in (None, "folder"):
        p.error(f"--data-dir is for --data folder, not --data {args.data}: drop one of them")
    if args.data is None:  # a data folder given is a data folder meant
        args.data = "folder" if args.data_dir else default_data
    if args.data == "folder":
        if not args.data_dir:
            p.error("--data folder needs --data-dir DIR (a folder holding train/ and test/), or use --data synthetic")
        if data_dir_problem(args.data_dir):
            p.error(f"--data-dir {args.data_dir} {data_dir_problem(args.data_dir)}")
    if args.lr is not None and not args.lr > 0:
        p.error(f"--lr must be > 0, got {args.lr}")
    if args.threads:
        torch.set_num_threads(args.threads)
    return args


def overrides(args: argparse.Namespace) -> dict:
    """The recipe and settings fields the flags set (None: the recipe's), --set last so that it wins;
    Trial and Recipe.override take them as they are."""
    flags = dict(model=args.model, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                 precision=args.precision, compile=args.compile, device=args.device)
    return {k: v for k, v in flags.items() if v is not None} | dict(args.set)
