"""What the notebooks call besides the rest of the package: parameter checks, run folders, Drive.

Every Colab notebook runs in its own runtime (its own machine): nothing on its disk reaches the
next notebook, only Google Drive does. So every notebook finds its run the same way,
`run_folder(recipe=..., model=..., seed=..., use_drive=...)`: runs/RECIPE-sSEED (with the model in
the name when it is not the recipe's), inside Drive when use_drive is on in Colab.
"""
from __future__ import annotations

import contextlib
import copy
import io
import os
import re
import shutil
from pathlib import Path

from .checkpoint import CheckpointError, read_history
from .colab import in_colab, project_folder
from .data import SOURCES, DataError, check_val, data_dir_problem, val_size
from .errors import UserError
from .recipes import PRECISIONS, RECIPES, Settings, get_recipe, recipe_name, split_fields
from .registry import (DRIVE_PREFIX, FACTORY, ModelError, build_model, example_file, file_label, is_file_spec,
                       model_problem, parse_file_spec, spec_name)

class ParameterError(UserError):
    """Bad notebook parameters (or pipeline options): every problem, one line each."""


def check_params(*, data=None, data_dir=None, recipe="seed", model=None, epochs=None, batch_size=None, precision=None,
                 limit=None, overrides=None, val=None, cli=False, trains=True, **_ignored):
    """Fail early, in the notebook's first cell, with one message naming every bad parameter.

    Returns the recipe the parameters resolve to: None means "the recipe's value", so changing
    only `recipe` switches model, epochs and batch size together. `model` may be your own
    FILE.py:NAME (helpers/registry.py). `overrides`: any other recipe or settings fields, e.g.
    {"lr": 0.1, "compile": "off"}. `val`: the validation split, as Trial takes it (None or 0: none).
    `cli=True` names the options as `python -m helpers.pipeline` spells them (--data-dir), for its own
    early check. `trains=False`: a notebook that only looks at the data (01), where a split smaller than one
    batch is no problem.
    """
    def name(key, value):
        return f"--{key.replace('_', '-')} {value}" if cli else f"{key}={value!r}"

    problems = []
    if data is not None and data not in SOURCES:  # None: a notebook that reads no data (02)
        problems.append(f"{name('data', data)}: use one of {', '.join(SOURCES)}")
    if data_dir is not None and not isinstance(data_dir, (str, os.PathLike)):
        problems.append(f"{name('data_dir', data_dir)}: must be a folder path (a string), or None")
    elif data == "folder" and not data_dir:
        problems.append(f"{name('data', 'folder')} needs {'--data-dir' if cli else 'data_dir'}: "
                        "a folder holding train/<class>/ and test/<class>/")
    elif data == "folder" and data_dir_problem(data_dir):
        problems.append(f"{name('data_dir', data_dir)} {data_dir_problem(data_dir)} (relative paths start at the "
                        "project root)")
    if recipe not in RECIPES:
        problems.append(f"{name('recipe', recipe)}: known recipes are {', '.join(sorted(RECIPES))}")
    if model is not None and model_problem(model):
        problems.append(f"{name('model', model)}: {model_problem(model)} (or None: the recipe's)")
    if precision is not None and precision not in PRECISIONS:
        problems.append(f"{name('precision', precision)}: use None (the recipe's) or one of {', '.join(PRECISIONS)}")
    for key, value, none in (("epochs", epochs, "the recipe's"), ("batch_size", batch_size, "the recipe's"),
                             ("limit", limit, "all images")):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            problems.append(f"{name(key, value)}: must be a positive integer" + ("" if cli else f", or None ({none})"))
    try:
        check_val(val)
    except DataError as e:
        problems.append(str(e))
    recipe_fields, setting_fields = {}, {}
    if not isinstance(overrides, (dict, type(None))):
        problems.append(f"overrides={overrides!r}: must be a dict of recipe or settings fields, e.g. {{'lr': 0.1}}")
    elif overrides:
        recipe_fields, setting_fields = split_fields(overrides)
        own = sorted(set(overrides) & {"model", "epochs", "batch_size", "precision", "device"})
        if own:
            problems.append(f"overrides {own}: set {'them' if len(own) > 1 else 'it'} with "
                            f"{'the options' if cli else 'the parameters'} of that name instead")
        try:
            Settings().override(**setting_fields).validate()
            get_recipe(recipe if recipe in RECIPES else "seed", **recipe_fields)
        except UserError as e:
            problems.append(f"overrides: {e}")
    r = None
    if not problems:
        r = get_recipe(recipe, model=model, epochs=epochs, batch_size=batch_size, **recipe_fields)
        try:  # a file that fails to import, a missing NAME, model arguments it does not take
            build_model(r.model, **r.model_kwargs)
        except ModelError as e:
            problems.append(f"{name('model', model)}: {e}")
        # the training loader drops the last partial batch, so a smaller split would train on nothing
        if trains and limit is not None and limit < r.batch_size:
            problems.append(f"{name('limit', limit)} keeps fewer training images than one batch of "
                            f"{r.batch_size} (recipe {recipe!r}): raise {'--limit' if cli else 'limit'} or set "
                            f"{'--batch-size' if cli else 'batch_size'} to at most {limit}")
        elif trains and limit is not None:
            try:  # the validation split is carved from the limited training split
                val_size(val, limit, r.batch_size)
            except DataError as e:
                problems.append(str(e))
    if problems:
        raise ParameterError(f"bad {'options' if cli else 'notebook parameters'}:\n  " + "\n  ".join(problems))
    print(f"parameters ok: {f'data={data} ' if data else ''}recipe={recipe} (recipes: {', '.join(sorted(RECIPES))}): "
          f"model={r.model} epochs={r.epochs} batch_size={r.batch_size} precision={precision or 'auto'} limit={limit}"
          + (f" val={val}" if check_val(val) is not None else "")
          + "".join(f" {k}={v!r}" for k, v in (overrides or {}).items()))
    return r


def run_name(recipe: str, seed: int, model=None) -> str:
    """A run's folder name: RECIPE-sSEED, or RECIPE-MODEL-sSEED when the model is not the recipe's own
    (so your network never meets the checkpoint of the recipe's)."""
    if model is None or model == getattr(RECIPES.get(recipe), "model", None):
        return f"{recipe}-s{seed}"
    label = file_label(model) if is_file_spec(model) else spec_name(model).removeprefix(FACTORY)
    return f"{recipe}-{label}-s{seed}"


def drive_path(path, use_drive: bool) -> str:
    """`path` as it is, or, in Colab with use_drive, the same path inside the project's Drive folder
    (mounting Drive first: Colab asks once per runtime for permission)."""
    path = str(path)
    if not in_colab() or Path(path).is_absolute():
        return path
    if not use_drive:
        print(f"note: use_drive is off, so {path} stays on this runtime's disk, which the other notebooks "
              "(each in a Colab runtime of its own) cannot see")
        return path
    return str(project_folder() / path)


def run_folder(*, recipe: str, seed: int, model=None, out_dir=None, use_drive: bool = False) -> str:
    """The run folder every notebook uses: out_dir, or runs/<run_name>; on Drive in Colab with use_drive."""
    problems = []
    if not isinstance(seed, int) or isinstance(seed, bool):
        problems.append(f"seed={seed!r}: must be a whole number (0, 1, ...)")
    if out_dir is not None and not isinstance(out_dir, (str, os.PathLike)):
        problems.append(f"out_dir={out_dir!r}: must be a folder path (a string), or None (runs/{recipe}-s...)")
    if not isinstance(use_drive, bool):
        problems.append(f"use_drive={use_drive!r}: must be True or False")
    if problems:
        raise ParameterError("bad notebook parameters:\n  " + "\n  ".join(problems))
    folder = drive_path(out_dir or f"runs/{run_name(recipe, seed, model)}", use_drive)
    print(f"run folder: {folder}")
    _note_other_run(folder, recipe, seed, model)
    return folder


def _note_other_run(folder, recipe, seed, model):
    """Say so when the folder already holds a run of another recipe, model or seed than the parameters
    name (an out_dir set by hand): notebook 04 analyses the run that is there, and 03 refuses to resume it."""
    try:
        config, _ = read_history(folder)
    except (OSError, CheckpointError):
        return  # no run yet, or a damaged history (notebook 03 rebuilds it from the checkpoint)
    there = dict(recipe=recipe_name(config["recipe"]).name, model=config["recipe"].get("model"),
                 seed=config.get("seed"))
    asked = dict(recipe=recipe, model=model or getattr(RECIPES.get(recipe), "model", None), seed=seed)
    differ = [f"{k}={there[k]!r} there, {asked[k]!r} here" for k in asked if there[k] != asked[k]]
    if differ:
        print(f"note: {folder} holds another run ({'; '.join(differ)}): notebook 04 analyses the run that is "
              "there, and notebook 03 refuses to resume it; set out_dir=None to use the parameters' own folder")


def provide_drive_model(model) -> None:
    """For model = "drive:FILE.py:NAME" with no FILE on Google Drive yet: copy the example network there and
    say how to edit it in Colab. Any other model: nothing (Drive is touched only when the model lives there)."""
    if not (is_file_spec(model) and model.startswith(DRIVE_PREFIX)):
        return
    path, _ = parse_file_spec(model)  # mounts Drive in Colab
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(example_file(), path)
    print(f"{path} was missing: the example network (mynet.py, class MyNet) is copied there. Edit it in Colab: the "
          f"folder icon on the left, then drive > MyDrive > {path.parent.name} > {path.name}; a double-click opens "
          "an editor, and your changes are saved to Drive. Then run this notebook again: notebooks 03 and 04 use "
          f"the same model = {model!r}, in runtimes of their own.")


def summary(model, input_size=(3, 32, 32)):
    """torchsummary's table, for a model on any device, with honest trainable counts.

    torchsummary feeds CPU or cuda:0 tensors, so it runs on a CPU copy. It files a layer's bias
    under its weight's trainability, so a frozen weight with a trained bias (the whitening layer,
    BatchNorm with a fixed scale) counts as untrainable: the totals below are counted per parameter.
    """
    from torchsummary import summary as _summary

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        _summary(copy.deepcopy(model).cpu(), input_size, device="cpu")
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    text = out.getvalue()
    for label, value in (("Total params", total), ("Trainable params", trainable),
                         ("Non-trainable params", total - trainable)):
        text = re.sub(rf"(?m)^{label}: [\d,]+$", f"{label}: {value:,}", text)
    print(text, end="")


def warn_if_no_gpu(device):
    if device.type == "mps":
        print("note: training runs on the Mac's GPU (Apple MPS) in fp32, NCHW layout: slower than a CUDA GPU, "
              "much faster than the CPU. Precision and layout on MPS are unmeasured (docs/devices.md).")
    if device.type == "cpu":
        print("WARNING: no GPU in this runtime: training runs on the CPU and is slow "
              "(minutes per epoch). In Colab: Runtime > Change runtime type > GPU, then run all again.")
