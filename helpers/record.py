"""A run read back: Record (a run's config and per-epoch history, what plots compare) and load_run /
test_loader_for (the trained network and the test split it was evaluated on, for analysis).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from .checkpoint import CHECKPOINT, HISTORY, read_checkpoint, read_history, sync_history, upgrade_config
from .colab import DRIVE_DELAY, on_drive
from .loader import Loader
from .errors import UserError
from .recipes import Recipe, recipe_name
from .registry import build_model, rebuild_spec


@dataclass
class Record:
    """A named run: its config and per-epoch history. Several records compare in plots."""
    name: str
    config: dict
    history: list = field(default_factory=list)

    def series(self, key: str) -> list:
        return [h[key] for h in self.history]

    @property
    def final_acc(self) -> float:
        """Plain single-view test accuracy after the last epoch."""
        return self.history[-1]["test_acc"] if self.history else float("nan")

    @property
    def final_tta_acc(self):
        """Test accuracy with the recipe's test-time augmentation after the last epoch (None without TTA)."""
        return self.history[-1].get("tta_acc") if self.history else None

    @property
    def final_val_acc(self):
        """Plain single-view accuracy on the validation split after the last epoch (None: the run had no
        validation split, Trial's val=)."""
        return self.history[-1].get("val_acc") if self.history else None

    @property
    def best_acc(self) -> float:
        return max(self.series("test_acc"), default=float("nan"))

    def first_epoch_reaching(self, acc: float):
        """The first epoch whose plain test accuracy reaches `acc` (None if none does)."""
        return next((h["epoch"] for h in self.history if h["test_acc"] >= acc), None)

    def table(self) -> str:
        """The history as a text table, one row per epoch; test accuracy plain, TTA in its own column, and
        the validation split's plain accuracy when the run held one out."""
        tta = bool(self.history) and all("tta_acc" in h for h in self.history)
        val = bool(self.history) and all("val_acc" in h for h in self.history)
        lines = [f"{'epoch':>5}{'train loss':>12}{'train acc':>11}{'test loss':>11}{'test acc':>10}"
                 + (f"{'TTA acc':>9}" if tta else "") + (f"{'val acc':>9}" if val else "") + f"{'lr':>9}{'train s':>9}"]
        for h in self.history:
            lines.append(f"{h['epoch']:>5}{h['train_loss']:>12.4f}{h['train_acc']:>11.2%}{h['test_loss']:>11.4f}"
                         f"{h['test_acc']:>10.2%}" + (f"{h['tta_acc']:>9.2%}" if tta else "")
                         + (f"{h['val_acc']:>9.2%}" if val else "") + f"{h['lr']:>9.4f}{h['train_seconds']:>9.1f}")
        reached = self.first_epoch_reaching(0.80)
        lines.append(f"final test accuracy (plain, single view) {self.final_acc:.2%}"
                     + (f"; with test-time augmentation {self.final_tta_acc:.2%}" if tta else "")
                     + (f"; validation accuracy {self.final_val_acc:.2%}" if val else "")
                     + (f"; 80 % first reached at epoch {reached}" if reached else "; 80 % not reached"))
        return "\n".join(lines)

    @classmethod
    def load(cls, path, name=None) -> "Record":
        """From a run folder (or its history.json); the config in the current format."""
        folder = Path(path).parent if Path(path).name == HISTORY else Path(path)
        try:
            config, history = read_history(folder)
        except FileNotFoundError:
            raise RunNotFoundError(f"{folder / HISTORY} not found: train first (notebook 03 or python -m "
                                   "helpers.train)") from None
        return cls(name or folder.name, config, history)


class RunNotFoundError(UserError):
    """No trained run where one was looked for; the message says how to make or find it."""


def list_runs(root) -> list[dict]:
    """The runs in `root`'s subfolders, as their history.json records them: folder, recipe (the named one it
    is, or is closest to), model, seed, epochs finished and the last plain test accuracy; sorted by folder."""
    runs = []
    for history in sorted(Path(root).glob(f"*/{HISTORY}")):
        try:
            config, epochs = read_history(history.parent)
            runs.append(dict(folder=history.parent, recipe=recipe_name(config["recipe"]).name,
                             model=config["recipe"]["model"], seed=config.get("seed"), epochs=len(epochs),
                             test_acc=epochs[-1]["test_acc"] if epochs else None))
        except (OSError, ValueError, KeyError, TypeError):  # CheckpointError is a ValueError
            continue  # being written, or not a run of this project's
    return runs


def other_seeds(run_dir) -> list[Path]:
    """The run folders beside `run_dir` that trained the same recipe and model with other seeds: what
    notebook 04 compares a run with when no other runs are named."""
    here = Path(run_dir)
    runs = list_runs(here.parent)   # read once: on Drive every history.json is a network read
    mine = next((r for r in runs if r["folder"] == here), None)
    if mine is None:
        return []
    return [r["folder"] for r in runs
            if r["folder"] != here and (r["recipe"], r["model"]) == (mine["recipe"], mine["model"]) and r["epochs"]]


def _missing_run(out_dir) -> str:
    """Why there is no run in out_dir, and what is there instead (the usual cause: another recipe, model or
    seed in the parameters; in Colab also Drive's delay)."""
    root = Path(out_dir).parent
    found = list_runs(root) if root.is_dir() else []
    text = f"no run in {out_dir} (no {CHECKPOINT} there)"
    if found:
        runs = "; ".join(f"{r['folder'].name} (recipe {r['recipe']}, model {r['model']}, seed {r['seed']}, "
                         f"{r['epochs']} epoch{'s' * (r['epochs'] != 1)} saved)" for r in found)
        text += (f". Runs in {root}: {runs}: set recipe, model and seed as notebook 03 had them (or out_dir to "
                 "one of these folders)")
    else:
        text += (f"; {root} holds no runs: train one first, with notebook 03 and the same recipe, model and seed "
                 "(in Colab: use_drive = True in both notebooks, since each runs on its own machine), or "
                 f"python -m helpers.train --out {out_dir}")
    if on_drive(out_dir):
        text += (f". Google Drive can take {DRIVE_DELAY} to show files written by another runtime: if notebook 03 "
                 "has just finished there, wait and run this cell again")
    return text


def load_run(out_dir, device="cpu", model=None):
    """(model, config, history) from a run folder's checkpoint, for analysis.

    The network is rebuilt as the run recorded it; your FILE.py:NAME from the run folder's copy
    when the file is not here (another Colab runtime) or has changed. `model`: the callable, for a
    run trained with a Python factory (Trial(model=...)).
    """
    path = Path(out_dir) / CHECKPOINT
    if not path.exists():
        raise RunNotFoundError(_missing_run(out_dir))
    ckpt = read_checkpoint(path, device)
    sync_history(path.parent, ckpt)  # history.json, which Record.load and plots read, follows the checkpoint
    recipe = Recipe.from_dict(ckpt["config"]["recipe"])
    identity = ckpt["config"].get("model_identity") or dict(spec=recipe.model)
    spec = model if model is not None else rebuild_spec(identity, path.parent)
    model = build_model(spec, **recipe.model_kwargs).to(device)
    # the moving average, when the run kept one, is the model that was evaluated
    model.load_state_dict(ckpt.get("ema") or ckpt["model"])
    if ckpt["config"]["settings"]["channels_last"]:  # the layout it was evaluated in: the same sums and predictions
        model = model.to(memory_format=torch.channels_last)
    return model.eval(), ckpt["config"], ckpt["history"]


def test_loader_for(config: dict, device="cpu", batch_size=500) -> Loader:
    """The test split a run was evaluated on, rebuilt from its checkpoint config (same normalisation,
    same memory layout)."""
    from .data import load_split

    test_set = load_split(config["data"], "test", config["data_dir"], config["limit"])
    channels_last = upgrade_config(config)["settings"]["channels_last"]
    return Loader(test_set, batch_size, False, config["mean"], config["std"], device, channels_last=channels_last)

