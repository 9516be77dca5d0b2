"""What survives a crash: the checkpoint written atomically after every epoch, history.json beside
it, and the checks that a resume continues the very run that wrote them.

A checkpoint is a dict: model, optimizer, step (the optimizer steps taken: where the run stands in its lr
schedule, helpers/schedule.py), ema, lookahead, scaler (when the recipe uses them), epoch, history and
config (recipe, seed, data identity, model identity ...).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from .errors import UserError
from .recipes import Recipe, recipe_name
from .rundir import atomic_write

CHECKPOINT = "checkpoint.pt"
PREV_CHECKPOINT = "checkpoint.prev.pt"  # the epoch before CHECKPOINT's, kept in case that one is damaged
HISTORY = "history.json"

# What a resumed run must share with the run that wrote the checkpoint, besides recipe and seed:
# config["data_identity"] key -> how a refusal names it. Steps per epoch decide the lr schedule's
# length; the rest decide which images it trains and is evaluated on.
DATA_IDENTITY = {
    "source": "data source (--data / data=)",
    "folder": "data folder (--data-dir / data_dir=, resolved)",
    "limit": "images per split (--limit / limit=)",
    "val": "validation split (--val / val=)",
    "train_images": "training images",
    "test_images": "test images",
    "train_fingerprint": "training images' contents (fingerprint)",
    "test_fingerprint": "test images' contents (fingerprint)",
    "val_fingerprint": "validation images' contents (fingerprint)",
    "steps_per_epoch": "steps per epoch",
}
# Keys a run writes only when it has them (run.Trial: a validation split): absent means none, so a checkpoint
# without them, whichever code wrote it, is a run without a validation split and is compared as one.
OPTIONAL_IDENTITY = ("val", "val_fingerprint")
# The config's layout: 2 keeps the per-device settings (precision, compile, channels_last) under
# config["settings"]; 1 (no "format" key) keeps them inside config["recipe"]. read_checkpoint and
# read_history upgrade 1 to 2, so a format-1 run resumes and is analysed like any other.
FORMAT = 2
PER_DEVICE = ("precision", "compile", "channels_last")


class CheckpointError(UserError):
    """A checkpoint that cannot be read or resumed; the message names the file and what to do."""


def save_checkpoint(out_dir: Path, ckpt: dict) -> None:
    """out_dir/checkpoint.pt (the previous one becomes checkpoint.prev.pt), then history.json.

    The new file is written completely first, under a temporary name of this process's own; then two
    renames, each atomic: a crash at any point leaves a readable checkpoint.pt or checkpoint.prev.pt
    (a resume starts from either). A full or read-only disk is one CheckpointError line.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / CHECKPOINT
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(ckpt, f)
        if path.exists():
            os.replace(path, out_dir / PREV_CHECKPOINT)
        os.replace(tmp, path)
        write_history(out_dir, ckpt["config"], ckpt["history"])
    except OSError as e:  # the last good epoch is still there
        tmp.unlink(missing_ok=True)
        epoch = ckpt["epoch"]
        kept = f"the previous checkpoint (epoch {epoch - 1}) is intact" if epoch > 1 else "no earlier epoch was saved"
        raise CheckpointError(f"could not write {path} ({e.strerror or e}): epoch {epoch} is lost and "
                              f"{kept}; free some space (or make the folder writable) and resume "
                              "(--resume / run the notebook again)") from None


def find_checkpoint(out_dir) -> Path | None:
    """The checkpoint a resume starts from: checkpoint.pt, else checkpoint.prev.pt (a save that died
    between its two renames), else None."""
    if not out_dir:
        return None
    found = [Path(out_dir) / name for name in (CHECKPOINT, PREV_CHECKPOINT)]
    return next((p for p in found if p.exists()), None)


def write_history(out_dir: Path, config: dict, history: list):
    atomic_write(Path(out_dir) / HISTORY, lambda f: f.write(json.dumps(
        dict(config=config, history=history), indent=1).encode()))


def sync_history(out_dir: Path, ckpt: dict, log=print):
    """Rewrite out_dir/history.json from the checkpoint when it says something else (or is missing)."""
    path = Path(out_dir) / HISTORY
    try:
        on_disk = read_history(out_dir)[1]
    except (OSError, CheckpointError):
        on_disk = None
    if on_disk == ckpt["history"]:
        return
    try:
        write_history(out_dir, ckpt["config"], ckpt["history"])
    except OSError as e:  # a read-only folder: analysis still works from the checkpoint
        log(f"note: {path} differs from the checkpoint but cannot be rewritten ({e})")
        return
    had = "missing or unreadable" if on_disk is None else f"{len(on_disk)} epochs"
    log(f"note: {path} ({had}) rebuilt from the checkpoint ({len(ckpt['history'])} epochs)")


def read_history(run_dir) -> tuple[dict, list]:
    """A run folder's history.json: its config, in the current FORMAT (upgrade_config), and its per-epoch
    history. OSError when there is none; CheckpointError when it holds no run's history (damaged: a resume
    or load_run rebuilds it from the checkpoint) or comes from a newer version."""
    path = Path(run_dir) / HISTORY
    try:
        saved = json.loads(path.read_text())
        config, history = saved["config"], saved["history"]
        if not (isinstance(config, dict) and isinstance(config.get("recipe"), dict) and isinstance(history, list)):
            raise TypeError("no config and history")
    except (ValueError, KeyError, TypeError) as e:  # not JSON, or JSON of another shape
        raise CheckpointError(f"{path} cannot be read ({type(e).__name__}: damaged, or not a run's history): "
                              "resume the run (--resume / notebook 03) or load it (load_run / notebook 04), which "
                              "rebuild it from the checkpoint") from None
    return upgrade_config(config, path), history


def read_config(run_dir) -> dict | None:
    """A run folder's config, in the current FORMAT: history.json's, else (missing or damaged) that of the
    checkpoint a resume would start from; None when neither can be read (a resume says why)."""
    try:
        return read_history(run_dir)[0]
    except (OSError, CheckpointError):
        pass
    path = find_checkpoint(run_dir)
    try:
        return read_checkpoint(path)["config"] if path else None
    except CheckpointError:
        return None


def read_checkpoint(path, device="cpu") -> dict:
    """A checkpoint dict, or one CheckpointError naming the file and what to do.

    Never falls back to weights_only=False (which runs arbitrary pickled code).
    """
    path = Path(path)
    try:
        ckpt = upgrade_scheduler(torch.load(path, map_location=device, weights_only=True))
        missing = {"model", "optimizer", "step", "history", "config"} - set(ckpt)
        if missing:
            raise KeyError(f"no {', '.join(sorted(missing))}")
    except Exception as e:  # truncated, overwritten, not a checkpoint: torch's messages vary
        raise CheckpointError(f"checkpoint {path} cannot be read ({type(e).__name__}: truncated or corrupt); "
                              + _prev_hint(path)) from None
    ckpt["config"] = upgrade_config(ckpt["config"], path)
    return ckpt


def upgrade_config(config: dict, path="checkpoint") -> dict:
    """A stored config in the current FORMAT: format 1's per-device fields move from the recipe to the
    settings. A newer format than this code knows is refused, naming both."""
    version = config.get("format", 1)
    if version > FORMAT:
        raise CheckpointError(f"{path} was written in checkpoint format {version}, by a newer version of this "
                              f"project; this one reads format {FORMAT} and older: update the project (git pull)")
    if version == 1:
        recipe = dict(config["recipe"])
        moved = {k: recipe.pop(k) for k in PER_DEVICE if k in recipe}
        config = dict(config, format=FORMAT, recipe=recipe,
                      settings={"compile": "off", "device": config.get("device", "cpu"), **moved})
    return config


def upgrade_scheduler(ckpt: dict) -> dict:
    """A checkpoint with the step count: one written when torch's OneCycleLR held the schedule stored the
    scheduler's state instead, whose last_epoch is that count (it stepped once per optimizer step). Its
    total_steps is dropped: check_resume finds the run's length in the config and in the steps taken."""
    if "scheduler" not in ckpt:
        return ckpt
    ckpt = dict(ckpt)
    ckpt["step"] = ckpt.pop("scheduler")["last_epoch"]
    return ckpt


def _prev_hint(path: Path) -> str:
    prev = path.with_name(PREV_CHECKPOINT)
    if path.name != CHECKPOINT or not prev.exists():
        return "start the run again in a new folder (--out / out_dir=)"
    try:
        epoch = torch.load(prev, map_location="cpu", weights_only=True)["epoch"]
    except Exception:
        return f"the previous epoch's {prev} is damaged too: start the run again in a new folder"
    return (f"the previous epoch's checkpoint is intact (epoch {epoch}): to resume from it, "
            f"move it over the damaged one (mv {prev} {path}) and resume again")


def check_resume(path, ckpt: dict, now: dict, steps_per_epoch: int, log=print) -> None:
    """Refuse (CheckpointError, nothing loaded) a checkpoint that another run wrote, naming every
    difference; note what a resume may change (an "auto" precision on another device).

    The run's length in steps (epochs x steps per epoch: the lr schedule's) is the recipe's epochs and the
    data identity's steps per epoch; `steps_per_epoch` (this run's) is checked against the checkpoint's steps
    taken too, which is all a checkpoint without a data identity has to show it."""
    diffs = resume_differences(ckpt["config"], now)
    if now["recipe"]["tta"] and ckpt["history"] and "tta_acc" not in ckpt["history"][-1]:
        diffs.append("its history predates plain accuracy (its test_acc includes test-time augmentation)")
    epochs = len(ckpt["history"])
    if not diffs and epochs and ckpt["step"] != epochs * steps_per_epoch:
        diffs.append(f"steps per epoch: checkpoint {ckpt['step'] / epochs:g} ({ckpt['step']} steps in {epochs} "
                     f"epoch{'s' * (epochs != 1)}), now {steps_per_epoch}")
    if diffs:
        raise CheckpointError(f"cannot resume {path}: it was written with other settings: " + "; ".join(diffs)
                              + ". Resume with the checkpoint's settings, or start a new run in another "
                              "folder (--out / out_dir=)")
    before, after = ckpt["config"]["settings"].get("precision"), now["settings"]["precision"]
    if before != after:  # allowed only when asked as "auto" (resume_differences)
        log(f"note: epochs 1-{len(ckpt['history'])} trained in {before}; this device resolves precision "
            f"'auto' to {after}, so the run continues in {after}")
    if "data_identity" not in ckpt["config"]:
        log(f"note: {path} predates data fingerprints: only its data source, folder, limit and "
            "steps per epoch could be checked")


def resume_differences(saved: dict, now: dict) -> list[str]:
    """What differs between a checkpoint's config and this run's: one phrase per setting.

    The settings may change (torch.compile and the memory layout change speed, not what is trained),
    except a precision that was not asked as "auto": an "auto" one re-resolves on the device at hand
    (a Colab reconnect can land on another GPU type, or on a CPU)."""
    diffs = recipe_differences(saved["recipe"], now["recipe"])
    was, precision = saved.get("settings", {}).get("precision"), now.get("settings", {}).get("precision")
    if was != precision and (now.get("requested") or {}).get("precision") != "auto":
        diffs.append(f"precision: checkpoint {was!r}, now {precision!r}")
    if saved.get("seed") != now.get("seed"):
        diffs.append(f"seed (--seed / seed=): checkpoint {saved.get('seed')}, now {now.get('seed')}")
    old_model, new_model = saved.get("model_identity"), now.get("model_identity")
    if old_model and new_model and old_model.get("sha1") != new_model.get("sha1"):
        diffs.append(f"model file {new_model.get('file') or old_model.get('file')}: changed since the checkpoint "
                     f"(SHA-1 {str(old_model.get('sha1'))[:12]} there, {str(new_model.get('sha1'))[:12]} now)")
    elif old_model and new_model and old_model["architecture"] != new_model["architecture"]:
        diffs.append("model architecture (its parameter names and shapes) differs from the checkpoint's")
    before, after = saved.get("data_identity"), now.get("data_identity")
    if after is None:  # a Trainer built by hand, without a Trial: nothing known about its data
        return diffs
    if before is None:  # written before the data identity existed: what it did record
        before = dict(source=saved.get("data"), limit=saved.get("limit"),
                      folder=str(Path(saved["data_dir"]).resolve()) if saved.get("data_dir") else None)
    diffs += [f"{label}: checkpoint {before.get(k)!r}, now {after.get(k)!r}" for k, label in DATA_IDENTITY.items()
              if (k in before or k in OPTIONAL_IDENTITY) and before.get(k) != after.get(k)]
    return diffs


def recipe_differences(saved: dict, now: dict) -> list[str]:
    """A stored recipe against this run's: one phrase per field that differs, or, when they are (closest
    to) two different named recipes, one phrase naming both, with their changes, instead of a dozen fields."""
    there, here = recipe_name(saved), recipe_name(now)
    if there.name != here.name:
        return [f"recipe: checkpoint {str(there)!r}, now {str(here)!r}"]
    # from_dict fills fields added since the checkpoint was written with their defaults
    old = Recipe.from_dict(saved).to_dict()
    return [f"recipe field {k}: checkpoint {old.get(k)!r}, now {v!r}" for k, v in now.items() if old.get(k) != v]
