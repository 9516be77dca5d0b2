"""helpers/checkpoint.py: what survives a crash. A resume continues the very run that wrote the checkpoint or
is refused naming what differs; a damaged checkpoint is one line naming the fix; history.json follows the
checkpoint; a full disk loses only the epoch being written.

docs/reliability.md maps each guarantee to its test."""
import json
import os

import pytest
import torch

from conftest import SMALL, SMALL_FAST, make_folder, noise, outcome
from helpers.checkpoint import (CHECKPOINT, CheckpointError, HISTORY, PREV_CHECKPOINT, read_config,
                                read_history, resume_differences)
from helpers.errors import UserError
from helpers.record import Record, load_run
from helpers.recipes import RECIPES, get_recipe
from helpers.run import Trial, train
from helpers.train import main as train_main


# --------------------------------------------------------------------------- resume refusals

def test_existing_run_needs_resume_and_same_settings(tmp_path):
    train(out_dir=tmp_path / "run", **SMALL)
    with pytest.raises(FileExistsError, match="resume") as refused:
        train(out_dir=tmp_path / "run", **SMALL)
    assert isinstance(refused.value, UserError)  # one line in a notebook, not a traceback
    with pytest.raises(CheckpointError, match="recipe field epochs: checkpoint 2, now 3"):
        train(out_dir=tmp_path / "run", resume=True, **{**SMALL, "epochs": 3})


@pytest.mark.parametrize("change, message", [
    (dict(limit=160), "images per split (--limit / limit=): checkpoint 120, now 160"),
    (dict(limit=None), "images per split (--limit / limit=): checkpoint 120, now None"),
    (dict(seed=1), "seed (--seed / seed=): checkpoint 0, now 1"),
    (dict(lr=0.2), "recipe field lr: checkpoint 0.89, now 0.2"),
    (dict(batch_size=30), "steps per epoch: checkpoint 3, now 4"),
    # a checkpoint without a validation split (also one written before they existed) is a run without one
    (dict(val=40), "validation split (--val / val=): checkpoint None, now 40"),
])
def test_resume_refuses_other_settings_and_names_them(tmp_path, change, message):
    Trial(out_dir=tmp_path / "r", **SMALL_FAST).run(stop_after=1)
    files = {p.name: p.read_bytes() for p in (tmp_path / "r").iterdir()}
    with pytest.raises(CheckpointError) as e:
        Trial(out_dir=tmp_path / "r", **{**SMALL_FAST, **change}).run(resume=True)
    assert message in str(e.value)
    assert {p.name: p.read_bytes() for p in (tmp_path / "r").iterdir()} == files  # nothing touched
    # and the folder still resumes with the original settings
    assert len(Trial(out_dir=tmp_path / "r", **SMALL_FAST).run(resume=True).history) == 2


def test_a_resume_with_another_validation_split_is_refused_naming_it(tmp_path):
    Trial(out_dir=tmp_path / "r", val=40, **SMALL_FAST).run(stop_after=1)
    files = {p.name: p.read_bytes() for p in (tmp_path / "r").iterdir()}
    for other, message in ((None, "checkpoint 40, now None"), (0, "checkpoint 40, now None"),
                           (0.25, "checkpoint 40, now 0.25")):
        with pytest.raises(CheckpointError, match=r"cannot resume .*: validation split \(--val / val=\): " + message):
            Trial(out_dir=tmp_path / "r", val=other, **SMALL_FAST).run(resume=True)
    assert {p.name: p.read_bytes() for p in (tmp_path / "r").iterdir()} == files  # nothing touched
    resumed = Trial(out_dir=tmp_path / "r", val=40, **SMALL_FAST).run(resume=True)
    assert len(resumed.history) == 2 and all("val_acc" in h for h in resumed.history)


def test_resume_refuses_changed_folder_data(tmp_path):
    root = make_folder(tmp_path / "ds")
    run = dict(SMALL_FAST, data="folder", data_dir=root, limit=None, batch_size=4)
    Trial(out_dir=tmp_path / "r", **run).run(stop_after=1)
    resume = lambda **kw: Trial(out_dir=tmp_path / "r", **{**run, **kw}).run(resume=True)  # noqa: E731
    noise(1).save(root / "train" / "cat" / "9.png")                                   # one image more
    with pytest.raises(CheckpointError, match="training images: checkpoint 8, now 9"):
        resume()
    (root / "train" / "cat" / "9.png").unlink()
    original = (root / "train" / "cat" / "0.png").read_bytes()
    noise(2).save(root / "train" / "cat" / "0.png")                                   # same count, new pixels
    with pytest.raises(CheckpointError, match=r"training images' contents \(fingerprint\)"):
        resume()
    (root / "train" / "cat" / "0.png").write_bytes(original)                          # back as it was
    copy = make_folder(tmp_path / "copy")
    with pytest.raises(CheckpointError, match=r"data folder \(--data-dir / data_dir=, resolved\)"):
        resume(data_dir=copy)
    assert len(resume().history) == 2


def with_scheduler_state(ckpt: dict, steps_per_epoch: int) -> dict:
    """A checkpoint as written when torch's OneCycleLR held the schedule: its state in place of the step count."""
    old = {k: v for k, v in ckpt.items() if k != "step"}
    epochs = old["config"]["recipe"]["epochs"]
    old["scheduler"] = dict(total_steps=epochs * steps_per_epoch, last_epoch=ckpt["step"], _step_count=ckpt["step"] + 1,
                            anneal_strategy="linear", base_lrs=[0.089, 0.089], _last_lr=[0.5, 0.5])
    return old


def test_a_checkpoint_holding_onecyclelr_state_resumes_to_the_run_never_interrupted(tmp_path):
    straight = Trial(out_dir=tmp_path / "straight", **{**SMALL_FAST, "epochs": 3}).run()
    Trial(out_dir=tmp_path / "r", **{**SMALL_FAST, "epochs": 3}).run(stop_after=1)
    path = tmp_path / "r" / CHECKPOINT
    torch.save(with_scheduler_state(torch.load(path, weights_only=True), steps_per_epoch=3), path)
    resumed = Trial(out_dir=tmp_path / "r", **{**SMALL_FAST, "epochs": 3}).run(resume=True)
    assert outcome(resumed) == outcome(straight)
    a, b = (torch.load(tmp_path / run / CHECKPOINT, weights_only=True) for run in ("straight", "r"))
    assert a["step"] == b["step"] == 9 and all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_old_checkpoint_without_data_identity_loads_and_checks_steps_per_epoch(tmp_path, capsys):
    root = make_folder(tmp_path / "ds")
    run = dict(SMALL_FAST, data="folder", data_dir=root, limit=None, batch_size=4)
    Trial(out_dir=tmp_path / "r", **run).run(stop_after=1)
    path = tmp_path / "r" / CHECKPOINT
    ckpt = with_scheduler_state(torch.load(path, weights_only=True), steps_per_epoch=2)
    for key in ("data_identity", "skipped_files"):
        del ckpt["config"][key]                          # as written before data fingerprints existed
    torch.save(ckpt, path)
    load_run(tmp_path / "r")                           # analysis still works
    for k in range(4, 8):                                # 12 images: 3 steps per epoch instead of 2
        noise(k).save(root / "train" / "dog" / f"{k}.png")
    with pytest.raises(CheckpointError, match=r"steps per epoch: checkpoint 2 \(2 steps in 1 epoch\), now 3"):
        Trial(out_dir=tmp_path / "r", **run).run(resume=True)
    for k in range(4, 8):
        (root / "train" / "dog" / f"{k}.png").unlink()
    assert len(Trial(out_dir=tmp_path / "r", **run).run(resume=True).history) == 2
    assert "predates data fingerprints" in capsys.readouterr().out


def test_a_run_from_before_plain_accuracy_is_not_resumed(tmp_path):
    Trial(out_dir=tmp_path / "run", **dict(SMALL, recipe="fast", tta=1)).run(stop_after=1)
    ckpt = torch.load(tmp_path / "run" / CHECKPOINT, weights_only=True)
    for h in ckpt["history"]:  # as the previous version wrote it: one accuracy, with TTA, as test_acc
        h["test_acc"] = h.pop("tta_acc")
        h.pop("tta_loss")
    torch.save(ckpt, tmp_path / "run" / CHECKPOINT)
    with pytest.raises(CheckpointError, match="predates plain accuracy"):
        Trial(out_dir=tmp_path / "run", **dict(SMALL, recipe="fast", tta=1)).run(resume=True)


def as_format_1(config: dict) -> dict:
    """A config as runs before checkpoint format 2 stored it: the per-device settings inside the recipe."""
    old = {k: v for k, v in config.items() if k not in ("format", "settings")}
    moved = {k: config["settings"][k] for k in ("precision", "compile", "channels_last")}
    old["recipe"] = {**config["recipe"], **moved}
    return old


def test_a_run_written_before_the_settings_group_resumes_and_loads(tmp_path, capsys):
    """Format 1 (precision, compile, channels_last inside the recipe) is read as format 2: the run
    resumes to the history of a run never interrupted, and analysis loads it as before."""
    straight = Trial(out_dir=tmp_path / "straight", **SMALL_FAST).run()
    Trial(out_dir=tmp_path / "r", **SMALL_FAST).run(stop_after=1)
    ckpt = torch.load(tmp_path / "r" / CHECKPOINT, weights_only=True)
    ckpt["config"] = as_format_1(ckpt["config"])
    torch.save(ckpt, tmp_path / "r" / CHECKPOINT)
    history = json.loads((tmp_path / "r" / HISTORY).read_text())
    (tmp_path / "r" / HISTORY).write_text(json.dumps(dict(history, config=as_format_1(history["config"]))))
    model, config, _ = load_run(tmp_path / "r")
    assert config["format"] == 2 and config["settings"]["precision"] == straight.config["settings"]["precision"]
    assert "precision" not in config["recipe"]
    resumed = Trial(out_dir=tmp_path / "r", **SMALL_FAST).run(resume=True)
    assert outcome(resumed) == outcome(straight)


def test_a_format_1_history_is_read_upgraded(tmp_path):
    """The one reading API gives every reader (Record.load, list_runs, the pipeline, the notebooks) a format-1
    history.json's config in the current format, as read_checkpoint does a checkpoint's."""
    config = dict(format=2, recipe=RECIPES["fast"].to_dict(), seed=3, device="cpu",
                  settings=dict(device="cpu", precision="bf16", compile="off", channels_last=True))
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / HISTORY).write_text(json.dumps(dict(config=as_format_1(config), history=[dict(epoch=1)])))
    read, history = read_history(tmp_path / "r")
    assert read == config and history == [dict(epoch=1)]
    assert read_config(tmp_path / "r") == config


@pytest.mark.parametrize("damage", ["{}", "[]", '{"config": {}, "history": []}', "not json"])
def test_a_damaged_history_is_one_error_naming_the_fix_and_its_config_comes_from_the_checkpoint(tmp_path, damage):
    train(out_dir=tmp_path / "r", **SMALL_FAST)
    config = read_history(tmp_path / "r")[0]
    (tmp_path / "r" / HISTORY).write_text(damage)
    with pytest.raises(CheckpointError, match=r"history.json cannot be read .*rebuild it from the checkpoint"):
        read_history(tmp_path / "r")
    assert read_config(tmp_path / "r") == config
    (tmp_path / "r" / CHECKPOINT).unlink()
    assert read_config(tmp_path / "r") == config  # the checkpoint a resume starts from: the previous epoch's
    (tmp_path / "r" / PREV_CHECKPOINT).unlink()
    assert read_config(tmp_path / "r") is None  # nothing readable: a resume says what is wrong
    with pytest.raises(FileNotFoundError):
        read_history(tmp_path / "none")


def test_another_named_recipe_is_named_not_listed_field_by_field():
    fast, seed = get_recipe("fast", epochs=1).to_dict(), RECIPES["seed"].to_dict()
    assert resume_differences(dict(recipe=fast, seed=0), dict(recipe=seed, seed=1)) == [
        "recipe: checkpoint 'fast (epochs=1)', now 'seed'", "seed (--seed / seed=): checkpoint 0, now 1"]
    assert resume_differences(dict(recipe=fast, seed=0), dict(recipe=RECIPES["fast"].to_dict(), seed=0)) == [
        f"recipe field epochs: checkpoint 1, now {RECIPES['fast'].epochs}"]


def test_a_checkpoint_from_a_newer_version_is_refused_naming_both_formats(tmp_path):
    Trial(out_dir=tmp_path / "r", **SMALL).run(stop_after=1)
    ckpt = torch.load(tmp_path / "r" / CHECKPOINT, weights_only=True)
    ckpt["config"]["format"] = 99
    torch.save(ckpt, tmp_path / "r" / CHECKPOINT)
    with pytest.raises(CheckpointError, match="checkpoint format 99, by a newer version.*reads format 2 and older"):
        load_run(tmp_path / "r")
    with pytest.raises(CheckpointError, match="format 99"):
        Trial(out_dir=tmp_path / "r", **SMALL).run(resume=True)


# --------------------------------------------------------------------------- damaged checkpoints

def test_corrupt_checkpoint_is_one_error_and_the_previous_epoch_is_kept(tmp_path, capsys):
    full = train(out_dir=tmp_path / "full", **{**SMALL_FAST, "epochs": 3})
    Trial(out_dir=tmp_path / "r", **{**SMALL_FAST, "epochs": 3}).run(stop_after=2)
    ckpt, prev = tmp_path / "r" / CHECKPOINT, tmp_path / "r" / PREV_CHECKPOINT
    assert torch.load(prev, weights_only=True)["epoch"] == 1 and torch.load(ckpt, weights_only=True)["epoch"] == 2
    os.truncate(ckpt, ckpt.stat().st_size // 2)
    with pytest.raises(CheckpointError, match=r"checkpoint .*checkpoint.pt cannot be read.*intact \(epoch 1\).*mv "):
        Trial(out_dir=tmp_path / "r", **{**SMALL_FAST, "epochs": 3}).run(resume=True)
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_run(tmp_path / "r")
    args = ["--recipe", "fast", "--data", "synthetic", "--limit", "120", "--batch-size", "40", "--epochs", "3",
            "--device", "cpu", "--out", str(tmp_path / "r"), "--resume"]
    capsys.readouterr()
    assert train_main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and "weights_only" not in err
    os.replace(prev, ckpt)                              # what the message says to do
    resumed = Trial(out_dir=tmp_path / "r", **{**SMALL_FAST, "epochs": 3}).run(resume=True)
    assert outcome(resumed.history) == outcome(full.history)


def test_crash_between_the_two_renames_resumes_from_prev(tmp_path):
    full = train(out_dir=tmp_path / "full", **SMALL_FAST)
    Trial(out_dir=tmp_path / "r", **SMALL_FAST).run(stop_after=1)
    os.replace(tmp_path / "r" / CHECKPOINT, tmp_path / "r" / PREV_CHECKPOINT)  # only prev is left
    with pytest.raises(FileExistsError, match="checkpoint.prev.pt"):
        Trial(out_dir=tmp_path / "r", **SMALL_FAST).run()
    resumed = Trial(out_dir=tmp_path / "r", **SMALL_FAST).run(resume=True)
    assert outcome(resumed.history) == outcome(full.history)


def test_history_json_is_rebuilt_from_the_checkpoint(tmp_path):
    train(out_dir=tmp_path / "r", **SMALL_FAST)
    hist = tmp_path / "r" / HISTORY
    behind = json.loads(hist.read_text())
    behind["history"] = behind["history"][:1]           # died between the two writes of the last epoch
    hist.write_text(json.dumps(behind))
    load_run(tmp_path / "r")                          # notebook 04's path
    assert len(Record.load(tmp_path / "r").history) == 2
    hist.write_text(json.dumps(behind))
    record = Trial(out_dir=tmp_path / "r", **SMALL_FAST).run(resume=True)  # already finished: nothing to train
    assert len(record.history) == 2 and json.loads(hist.read_text())["history"] == record.history


def test_a_full_disk_during_a_checkpoint_is_one_line_and_loses_only_that_epoch(tmp_path, monkeypatch):
    import errno
    run = tmp_path / "run"
    Trial(out_dir=run, **{**SMALL_FAST, "epochs": 3}).run(stop_after=1)
    real_save = torch.save

    def full(obj, f, *a, **k):
        f.write(b"x" * 1000)  # part of the file made it, then the disk filled up
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(CheckpointError) as e:
        Trial(out_dir=run, **{**SMALL_FAST, "epochs": 3}).run(resume=True)
    assert "No space left on device" in str(e.value) and "epoch 2 is lost" in str(e.value)
    assert "previous checkpoint (epoch 1) is intact" in str(e.value) and "\n" not in str(e.value)
    assert not list(run.glob("*.tmp")) and not (run / "run.lock").exists()
    monkeypatch.setattr(torch, "save", real_save)  # space again: the run resumes from epoch 1
    record = Trial(out_dir=run, **{**SMALL_FAST, "epochs": 3}).run(resume=True)
    assert [h["epoch"] for h in record.history] == [1, 2, 3]
