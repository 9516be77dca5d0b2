"""Small conveniences the notebooks call: parameter checks, device-safe summary, Drive.

Kept here, not in the notebooks, so that the notebooks stay prose, parameters and calls.
"""
from __future__ import annotations

import sys
from pathlib import Path

from .data import SOURCES
from .model import list_models
from .recipes import RECIPES


def check_params(data, data_dir=None, model=None, epochs=1, limit=None, recipe=None, precision=None, **_ignored):
    """Fail early, in the notebook's first cell, with one message naming every bad parameter."""
    problems = []
    if data not in SOURCES:
        problems.append(f"data={data!r}: use one of {', '.join(SOURCES)}")
    if data == "folder" and not data_dir:
        problems.append("data='folder' needs data_dir: a folder holding train/<class>/ and test/<class>/")
    elif data == "folder" and not Path(data_dir).is_dir():
        problems.append(f"data_dir={data_dir!r} does not exist (relative paths start at the project root)")
    if model is not None and model not in list_models():
        problems.append(f"model={model!r}: known models are {', '.join(list_models())}")
    if recipe is not None and recipe not in RECIPES:
        problems.append(f"recipe={recipe!r}: known recipes are {', '.join(sorted(RECIPES))}")
    if precision not in (None, "fp32", "bf16"):
        problems.append(f"precision={precision!r}: use None (the recipe's), 'fp32' or 'bf16'")
    if not isinstance(epochs, int) or epochs < 1:
        problems.append(f"epochs={epochs!r}: must be a positive integer")
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        problems.append(f"limit={limit!r}: must be a positive integer (images per split) or None for all")
    if problems:
        raise ValueError("bad notebook parameters:\n  " + "\n  ".join(problems))
    print(f"parameters ok: data={data} model={model} epochs={epochs} limit={limit}")


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
