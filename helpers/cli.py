"""The command-line layer every entry point shares: argument types, one parser of the training
flags with one set of defaults, and the cross-field checks, each in one place.

    python -m helpers.train / helpers.benchmark / helpers.sweep / helpers.pipeline
"""
from __future__ import annotations

import argparse
import json
from dataclasses import fields

from .data import SOURCES
from .device import DEVICE_HELP
from .recipes import COMPILE_MODES, PRECISIONS, RECIPES, Recipe
from .registry import model_problem


def positive_int(s):
    """argparse type of every count flag (--epochs, --batch-size, --limit, --threads, --seeds)."""
    try:
        v = int(s)
    except ValueError:
        v = 0
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {s}")
    return v


def model_arg(text):
    """argparse type of --model: a registered name or your FILE.py:NAME."""
    problem = model_problem(text)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return text


def field_value(text: str):
    """FIELD=VALUE -> (field, value), VALUE parsed as JSON and checked against the field's type.

    A bare word is a string (precision=bf16) only for string fields: lr=abc, epochs=1.5 or
    model_kwargs={"act": gelu} (unquoted string, invalid JSON) are refused here, in one line,
    instead of failing deep inside training. Unknown fields are left to Recipe.override's message.
    """
    field, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected FIELD=VALUE, got {text!r}")
    kind = {f.name: type(getattr(Recipe(), f.name)) for f in fields(Recipe)}.get(field)
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        if kind not in (None, str):
            quotes = ", and strings inside need double quotes" if kind is dict else ""
            raise argparse.ArgumentTypeError(f"{text!r}: {value!r} is not valid JSON; "
                                             f"{field} needs {_KIND_WORDS[kind]}{quotes}") from None
        parsed = value  # a bare string such as precision=bf16
    is_number = isinstance(parsed, (int, float)) and not isinstance(parsed, bool)
    ok = (kind is None or (kind is float and is_number) or (kind is int and is_number and parsed == int(parsed))
          or (kind not in (int, float) and isinstance(parsed, kind)))
    if not ok:
        raise argparse.ArgumentTypeError(f"{text!r}: {field} needs {_KIND_WORDS[kind]}, got {parsed!r}")
    return field, (int(parsed) if kind is int else float(parsed) if kind is float else parsed)


_KIND_WORDS = {int: "a whole number", float: "a number", bool: "true or false", str: "a string",
               dict: 'a JSON object such as {"act": "gelu"}'}


def get_args_parser(add_help=True) -> argparse.ArgumentParser:
    """Shared by the training CLI and the benchmark."""
    p = argparse.ArgumentParser(prog="python -m helpers.train", add_help=add_help,
                                description="Train a CIFAR-10 CNN under the assignment's constraints.")
    p.add_argument("--recipe", default="seed", choices=sorted(RECIPES),
                   help="named hyperparameter set (helpers/recipes.py); other flags override it "
                        "(default: %(default)s)")
    p.add_argument("--model", type=model_arg, help="a registered model (seed, fast, wide, air) or your own "
                                                     "FILE.py:NAME (default: the recipe's)")
    p.add_argument("--data", default="folder", choices=SOURCES,
                   help="cifar10: download via torchvision; folder: ImageFolder root with train/ and test/; "
                        "synthetic: generated images for smoke runs (default: %(default)s)")
    p.add_argument("--data-dir", help="folder with train/ and test/ (needed for --data folder)")
    p.add_argument("--epochs", type=positive_int, help="epochs (default: the recipe's)")
    p.add_argument("--batch-size", type=positive_int, help="batch size (default: the recipe's)")
    p.add_argument("--lr", type=float, help="peak learning rate (default: the recipe's)")
    p.add_argument("--precision", choices=PRECISIONS,
                   help="autocast precision; auto picks per device, see helpers/device.py (default: the recipe's)")
    p.add_argument("--compile", choices=COMPILE_MODES,
                   help="torch.compile mode; auto compiles long CUDA runs only (default: the recipe's)")
    p.add_argument("--limit", type=positive_int, help="use at most this many images per split (class-balanced)")
    p.add_argument("--device", default="auto", help=DEVICE_HELP + " (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0,
                   help="random seed for init, batch order, augmentation, dropout (default: %(default)s)")
    p.add_argument("--threads", type=positive_int, help="CPU threads for torch (default: torch's choice)")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", type=field_value,
                   help="override any recipe field, VALUE as JSON: --set label_smoothing=0.05 --set "
                        "'model_kwargs={\"bn_after_pool\": false}' (repeatable; wins over the flags above)")
    return p
