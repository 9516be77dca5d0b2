"""Small conveniences the notebooks call: parameter checks, device-safe summary, Drive.

Kept here, not in the notebooks, so that the notebooks stay prose, parameters and calls.
"""
from __future__ import annotations

import sys
from pathlib import Path

from .data import SOURCES
from .model import build_model, list_models
from .recipes import PRECISIONS, RECIPES, get_recipe


def check_params(data, data_dir=None, model=None, epochs=None, limit=None, recipe="seed", precision=None,
                 batch_size=None, cli=False, **_ignored):
    """Fail early, in the notebook's first cell, with one message naming every bad parameter.

    Returns the recipe the parameters resolve to: None means "the recipe's value", so changing
    only `recipe` switches model, epochs, batch size and precision together. `cli=True` names the
    options as `python -m helpers.pipeline` spells them (--data-dir), for its own early check.
    """
    def name(key, value):
        return f"--{key.replace('_', '-')} {value}" if cli else f"{key}={value!r}"

    problems = []
    if data not in SOURCES:
        problems.append(f"{name('data', data)}: use one of {', '.join(SOURCES)}")
    if data == "folder" and not data_dir:
        problems.append(f"{name('data', 'folder')} needs {'--data-dir' if cli else 'data_dir'}: "
                        "a folder holding train/<class>/ and test/<class>/")
    elif data == "folder" and not Path(data_dir).is_dir():
        problems.append(f"{name('data_dir', data_dir)} does not exist (relative paths start at the project root)")
    if recipe not in RECIPES:
        problems.append(f"{name('recipe', recipe)}: known recipes are {', '.join(sorted(RECIPES))}")
    if model is not None and model not in list_models():
        problems.append(f"{name('model', model)}: known models are {', '.join(list_models())} (or None: the recipe's)")
    if precision is not None and precision not in PRECISIONS:
        problems.append(f"{name('precision', precision)}: use None (the recipe's) or one of {', '.join(PRECISIONS)}")
    for key, value, none in (("epochs", epochs, "the recipe's"), ("batch_size", batch_size, "the recipe's"),
                             ("limit", limit, "all images")):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            problems.append(f"{name(key, value)}: must be a positive integer" + ("" if cli else f", or None ({none})"))
    r = None
    if not problems:
        r = get_recipe(recipe, model=model, epochs=epochs, batch_size=batch_size, precision=precision)
        try:  # a recipe's model settings (e.g. fast's GELU) may not fit another model
            build_model(r.model, **r.model_kwargs)
        except ValueError as e:
            problems.append(f"{name('model', model)} with {name('recipe', recipe)}: {e}; keep model None "
                            "or pick the recipe made for that model")
        # the training loader drops the last partial batch, so a smaller split would train on nothing
        if limit is not None and limit < r.batch_size:
            problems.append(f"{name('limit', limit)} keeps fewer training images than one batch of "
                            f"{r.batch_size} (recipe {recipe!r}): raise {'--limit' if cli else 'limit'} or set "
                            f"{'--batch-size' if cli else 'batch_size'} to at most {limit}")
    if problems:
        raise ValueError(f"bad {'options' if cli else 'notebook parameters'}:\n  " + "\n  ".join(problems))
    print(f"parameters ok: data={data} recipe={recipe}: model={r.model} epochs={r.epochs} "
          f"batch_size={r.batch_size} precision={r.precision} limit={limit}")
    return r


def summary(model, input_size=(3, 32, 32)):
    """torchsummary on whatever device the model is on (torchsummary defaults to 'cuda')."""
    from torchsummary import summary as _summary

    device = next(model.parameters()).device
    _summary(model, input_size, device="cuda" if device.type == "cuda" else "cpu")


def in_colab() -> bool:
    return "google.colab" in sys.modules


def drive_folder(out_dir: str, use_drive: bool) -> str:
    """In Colab with use_drive, put the run folder on Google Drive so a disconnect loses nothing."""
    if not (use_drive and in_colab()):
        return out_dir
    from google.colab import drive  # type: ignore

    drive.mount("/content/drive")
    folder = Path("/content/drive/MyDrive/cifar10-small-cnn") / out_dir
    folder.mkdir(parents=True, exist_ok=True)
    print(f"run folder on Google Drive: {folder}")
    return str(folder)


def warn_if_no_gpu(device):
    if device.type != "cuda":
        print("WARNING: no GPU in this runtime: training runs on the CPU and is slow "
              "(minutes per epoch). In Colab: Runtime > Change runtime type > GPU, then run all again.")
