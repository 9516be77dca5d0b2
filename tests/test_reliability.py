"""Issue 9: resume, caches and inputs that can never silently lose or corrupt a run.

One test (or parametrized case) per defect; docs/reliability.md maps each guarantee to its test.
"""
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import benchmark, train as train_cli
from helpers import data as D
from helpers.checkpoint import CHECKPOINT, CheckpointError, HISTORY, PREV_CHECKPOINT
from helpers.loop import NonFiniteLossError, evaluate, lr_schedule
from helpers.recipes import get_recipe
from helpers.record import Record, load_run
from helpers.run import Trainer, Trial, train
from helpers.train import main as train_main

SMALL = dict(recipe="fast", data="synthetic", limit=120, device="cpu", progress=False, batch_size=40, epochs=2)


def strip(history):
    return [{k: v for k, v in e.items() if "seconds" not in k and k != "peak_rss_mb"} for e in history]


def noise(seed):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (32, 32, 3), dtype=np.uint8))


def make_folder(root, n=4, classes=("cat", "dog")):
    """Random-noise images: every channel varies, so normalization and whitening are well defined."""
    for split in ("train", "test"):
        for i, c in enumerate(classes):
            d = root / split / c
            d.mkdir(parents=True, exist_ok=True)
            for k in range(n):
                noise(100 + 1000 * (split == "test") + 10 * i + k).save(d / f"{k}.png")
    return root


# --------------------------------------------------------------------------- resume refusals

@pytest.mark.parametrize("change, message", [
    (dict(limit=160), "images per split (--limit / limit=): checkpoint 120, now 160"),
    (dict(limit=None), "images per split (--limit / limit=): checkpoint 120, now None"),
    (dict(seed=1), "seed (--seed / seed=): checkpoint 0, now 1"),
    (dict(lr=0.2), "recipe field lr: checkpoint 0.89, now 0.2"),
    (dict(batch_size=30), "steps per epoch: checkpoint 3, now 4"),
])
def test_resume_refuses_other_settings_and_names_them(tmp_path, change, message):
    Trial(out_dir=tmp_path / "r", **SMALL).run(stop_after=1)
    files = {p.name: p.read_bytes() for p in (tmp_path / "r").iterdir()}
    with pytest.raises(CheckpointError) as e:
        Trial(out_dir=tmp_path / "r", **{**SMALL, **change}).run(resume=True)
    assert message in str(e.value)
    assert {p.name: p.read_bytes() for p in (tmp_path / "r").iterdir()} == files  # nothing touched
    # and the folder still resumes with the original settings
    assert len(Trial(out_dir=tmp_path / "r", **SMALL).run(resume=True).history) == 2


def test_resume_refuses_changed_folder_data(tmp_path):
    root = make_folder(tmp_path / "ds")
    run = dict(SMALL, data="folder", data_dir=root, limit=None, batch_size=4)
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


def test_old_checkpoint_without_data_identity_loads_and_checks_scheduler(tmp_path, capsys):
    root = make_folder(tmp_path / "ds")
    run = dict(SMALL, data="folder", data_dir=root, limit=None, batch_size=4)
    Trial(out_dir=tmp_path / "r", **run).run(stop_after=1)
    path = tmp_path / "r" / CHECKPOINT
    ckpt = torch.load(path, weights_only=True)
    for key in ("data_identity", "skipped_files"):
        del ckpt["config"][key]                          # as written before issue 9
    torch.save(ckpt, path)
    load_run(tmp_path / "r")                           # analysis still works
    for k in range(4, 8):                                # 12 images: 3 steps per epoch instead of 2
        noise(k).save(root / "train" / "dog" / f"{k}.png")
    with pytest.raises(CheckpointError, match="scheduler length: checkpoint 4 steps, now 6"):
        Trial(out_dir=tmp_path / "r", **run).run(resume=True)
    for k in range(4, 8):
        (root / "train" / "dog" / f"{k}.png").unlink()
    assert len(Trial(out_dir=tmp_path / "r", **run).run(resume=True).history) == 2
    assert "predates data fingerprints" in capsys.readouterr().out


# --------------------------------------------------------------------------- damaged checkpoints

def test_corrupt_checkpoint_is_one_error_and_the_previous_epoch_is_kept(tmp_path, capsys):
    full = train(out_dir=tmp_path / "full", **{**SMALL, "epochs": 3})
    Trial(out_dir=tmp_path / "r", **{**SMALL, "epochs": 3}).run(stop_after=2)
    ckpt, prev = tmp_path / "r" / CHECKPOINT, tmp_path / "r" / PREV_CHECKPOINT
    assert torch.load(prev, weights_only=True)["epoch"] == 1 and torch.load(ckpt, weights_only=True)["epoch"] == 2
    os.truncate(ckpt, ckpt.stat().st_size // 2)
    with pytest.raises(CheckpointError, match=r"checkpoint .*checkpoint.pt cannot be read.*intact \(epoch 1\).*mv "):
        Trial(out_dir=tmp_path / "r", **{**SMALL, "epochs": 3}).run(resume=True)
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_run(tmp_path / "r")
    args = ["--recipe", "fast", "--data", "synthetic", "--limit", "120", "--batch-size", "40", "--epochs", "3",
            "--device", "cpu", "--out", str(tmp_path / "r"), "--resume"]
    capsys.readouterr()
    assert train_main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and "weights_only" not in err
    os.replace(prev, ckpt)                              # what the message says to do
    resumed = Trial(out_dir=tmp_path / "r", **{**SMALL, "epochs": 3}).run(resume=True)
    assert strip(resumed.history) == strip(full.history)


def test_crash_between_the_two_renames_resumes_from_prev(tmp_path):
    full = train(out_dir=tmp_path / "full", **SMALL)
    Trial(out_dir=tmp_path / "r", **SMALL).run(stop_after=1)
    os.replace(tmp_path / "r" / CHECKPOINT, tmp_path / "r" / PREV_CHECKPOINT)  # only prev is left
    with pytest.raises(FileExistsError, match="checkpoint.prev.pt"):
        Trial(out_dir=tmp_path / "r", **SMALL).run()
    resumed = Trial(out_dir=tmp_path / "r", **SMALL).run(resume=True)
    assert strip(resumed.history) == strip(full.history)


def test_history_json_is_rebuilt_from_the_checkpoint(tmp_path):
    train(out_dir=tmp_path / "r", **SMALL)
    hist = tmp_path / "r" / HISTORY
    behind = json.loads(hist.read_text())
    behind["history"] = behind["history"][:1]           # died between the two writes of the last epoch
    hist.write_text(json.dumps(behind))
    load_run(tmp_path / "r")                          # notebook 04's path
    assert len(Record.load(tmp_path / "r").history) == 2
    hist.write_text(json.dumps(behind))
    record = Trial(out_dir=tmp_path / "r", **SMALL).run(resume=True)  # already finished: nothing to train
    assert len(record.history) == 2 and json.loads(hist.read_text())["history"] == record.history


def test_non_finite_test_loss_is_not_saved_as_an_epoch(tmp_path, monkeypatch):
    Trial(out_dir=tmp_path / "r", **SMALL).run(stop_after=1)
    before = (tmp_path / "r" / CHECKPOINT).read_bytes()
    real = evaluate
    monkeypatch.setattr("helpers.run.evaluate", lambda *a, **k: real(*a, **k) | dict(test_loss=float("nan")))
    with pytest.raises(NonFiniteLossError, match="test loss became nan at epoch 2.*last good checkpoint.*epoch 1"):
        Trial(out_dir=tmp_path / "r", **SMALL).run(resume=True)
    assert (tmp_path / "r" / CHECKPOINT).read_bytes() == before
    assert len(json.loads((tmp_path / "r" / HISTORY).read_text())["history"]) == 1


# --------------------------------------------------------------------------- caches

def test_corrupt_cache_is_rebuilt_with_a_note(tmp_path, capsys):
    root = make_folder(tmp_path / "ds")
    first = D.load_split("folder", "train", root)
    (cache,) = D.default_cache_dir().glob("folder-train-*.pt")
    os.truncate(cache, cache.stat().st_size // 2)
    capsys.readouterr()
    again = D.load_split("folder", "train", root)
    assert torch.equal(again.images, first.images)
    out = capsys.readouterr().out
    assert "unreadable" in out and "decoding the images again" in out and out.count("\n") == 1
    assert D._read_cache(cache) is not None             # rewritten whole


def test_cache_follows_symlinked_class_folders_and_keeps_one_file(tmp_path):
    root = make_folder(tmp_path / "ds")
    elsewhere = tmp_path / "elsewhere" / "cat"
    elsewhere.parent.mkdir()
    (root / "train" / "cat").rename(elsewhere)
    (root / "train" / "cat").symlink_to(elsewhere, target_is_directory=True)
    first = D.load_split("folder", "train", root)
    Image.new("RGB", (32, 32), (255, 255, 255)).save(elsewhere / "0.png")   # replaced behind the link
    replaced = D.load_split("folder", "train", root)
    assert not torch.equal(replaced.images, first.images) and replaced.images[0].min() == 255
    Image.new("RGB", (32, 32)).save(elsewhere / "new.png")                  # added behind the link
    assert len(D.load_split("folder", "train", root)) == len(first) + 1
    assert len(list(D.default_cache_dir().glob("folder-train-*.pt"))) == 1  # older versions removed
    D.load_split("folder", "train", make_folder(tmp_path / "other"))        # another folder: its own slot
    assert len(list(D.default_cache_dir().glob("folder-train-*.pt"))) == 2


# --------------------------------------------------------------------------- bad images

def test_broken_symlinks_are_skipped_counted_and_named(tmp_path, capsys):
    root = make_folder(tmp_path / "ds")
    (root / "train" / "cat" / "loop.jpg").symlink_to(root / "train" / "cat" / "loop.jpg")   # ELOOP
    (root / "train" / "dog" / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")              # dangling
    split = D.load_split("folder", "train", root)
    assert len(split) == 8 and split.problems["skipped (unreadable)"] == 2
    assert sorted(os.path.basename(f) for f in split.skipped_files()) == ["gone.jpg", "loop.jpg"]
    out = capsys.readouterr().out
    assert "loop.jpg" in out and "gone.jpg" in out
    record = train(out_dir=tmp_path / "r", **dict(SMALL, data="folder", data_dir=root, limit=None,
                                                     batch_size=4, epochs=1))
    assert len(record.config["skipped_files"]["train"]) == 2
    saved = json.loads((tmp_path / "r" / HISTORY).read_text())["config"]["skipped_files"]
    assert sorted(os.path.basename(f) for f in saved["train"]) == ["gone.jpg", "loop.jpg"]


def test_sixteen_bit_png_is_scaled_not_clipped(tmp_path):
    root = make_folder(tmp_path / "ds")
    Image.fromarray(np.full((32, 32), 32768, np.uint16)).save(root / "train" / "cat" / "deep.png")
    train = D.load_split("folder", "train", root)
    deep = train.images[train.labels == 0][-1]
    assert deep.unique().tolist() == [128]               # 32768 / 257, not 255


def test_split_smaller_than_one_batch_says_so(tmp_path, capsys):
    with pytest.raises(D.DataError, match=r"20 images, fewer than one batch \(batch_size 40\).*--limit.*--batch-size"):
        Trial(**{**SMALL, "limit": 20}).setup()
    assert train_main(["--data", "synthetic", "--limit", "20", "--batch-size", "40", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "fewer than one batch" in err


def test_data_errors_name_the_cli_flag_and_the_python_argument(tmp_path):
    for call in (lambda: D.load_split("folder", "train"), lambda: D.load_split("folder", "train", tmp_path / "no"),
                 lambda: Trial(data="folder")):
        with pytest.raises(ValueError) as e:
            call()
        assert "--data-dir" in str(e.value) and "data_dir" in str(e.value).replace("--data-dir", "")


# --------------------------------------------------------------------------- CLI flags

COUNT_FLAGS = ["--epochs", "--batch-size", "--limit", "--threads"]


@pytest.mark.parametrize("main, flag", [(train_main, f) for f in COUNT_FLAGS]
                         + [(benchmark.main, f) for f in COUNT_FLAGS + ["--seeds"]],
                         ids=lambda v: v if isinstance(v, str) else v.__module__.split(".")[-1])
@pytest.mark.parametrize("value", ["0", "-2", "1.5"])
def test_every_count_flag_rejects_zero_negative_and_fractions(main, flag, value, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["--data", "synthetic", f"{flag}={value}", "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and f"argument {flag}: must be a positive integer, got {value}" in err
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("setting, message", [
    ('model_kwargs={"act": gelu}', "is not valid JSON; model_kwargs needs a dict (a JSON object)"),
    ("lr=abc", "lr needs a number"),
    ("epochs=1.5", "epochs needs a whole number, got 1.5"),
    ("flip=1", "flip needs true or false"),
])
def test_benchmark_set_checks_the_value_type(setting, message, capsys):
    with pytest.raises(SystemExit) as e:
        benchmark.main(["--data", "synthetic", "--set", setting])
    err = capsys.readouterr().err
    assert e.value.code == 2 and message in err and "Traceback" not in err


@pytest.mark.parametrize("module, prog, defaults", [
    (train_cli, "python -m helpers.train", ["(default: seed)", "(default: cifar10, or folder", "(default: auto)",
                                            "(default: 0)"]),
    (benchmark, "python -m helpers.benchmark", ["(default: seed)", "(default: cifar10, or folder", "(default: 1)"]),
])
def test_help_names_the_command_and_shows_defaults(module, prog, defaults, capsys):
    with pytest.raises(SystemExit):
        module.main(["--help"])
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert out.startswith(f"usage: {prog} ") and all(d in out for d in defaults)


# --------------------------------------------------------------------------- issue 20: one writer, full disks

def test_a_run_folder_in_use_is_refused_in_one_line_and_freed_when_done(tmp_path):
    import subprocess
    import sys
    from helpers import rundir
    run = tmp_path / "run"
    run.mkdir()
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])  # a live "training"
    try:
        (run / rundir.LOCK).write_text(json.dumps(dict(pid=other.pid, host=rundir.socket.gethostname(),
                                                       started="2026-11-30 10:00:00")))
        with pytest.raises(rundir.RunFolderError, match=f"in use by another run \\(process {other.pid} on") as e:
            Trial(out_dir=run, **SMALL).setup()
        assert "\n" not in str(e.value) and "choose another folder (--out / out_dir=)" in str(e.value)
        assert not (run / CHECKPOINT).exists()
    finally:
        other.kill()
        other.wait()
    # its process has ended: the lock is stale, taken over with a note; the finished run frees it
    record = Trial(out_dir=run, **SMALL).run()
    assert len(record.history) == 2 and not (run / rundir.LOCK).exists()


def test_a_lock_from_another_host_is_stale_only_when_its_heartbeat_stopped(tmp_path, capsys):
    from helpers import rundir
    (tmp_path / rundir.LOCK).write_text(json.dumps(dict(pid=1, host="colab-vm-a", started="then")))
    with pytest.raises(rundir.RunFolderError, match="colab-vm-a"):
        rundir.RunLock(tmp_path).acquire()            # touched just now: that runtime may still train
    old = os.path.getmtime(tmp_path / rundir.LOCK) - rundir.STALE - 1
    os.utime(tmp_path / rundir.LOCK, (old, old))       # a disconnected Colab runtime: no heartbeat since
    lock = rundir.RunLock(tmp_path).acquire()
    assert "taking over" in capsys.readouterr().out and lock.owner()["pid"] == os.getpid()
    lock.release()
    assert not (tmp_path / rundir.LOCK).exists()


@pytest.mark.parametrize("layout, message", [("file", "is a file, not a folder"),
                                             ("parent-file", "is a file; choose another folder")])
def test_an_unusable_out_folder_is_one_line_before_any_training(tmp_path, layout, message, capsys):
    (tmp_path / "x").write_text("not a folder")
    out = tmp_path / "x" if layout == "file" else tmp_path / "x" / "run"
    assert train_main(["--data", "synthetic", "--limit", "120", "--epochs", "1", "--out", str(out)]) == 2
    err = capsys.readouterr()
    assert message in err.err and len(err.err.strip().splitlines()) == 1 and "epoch" not in err.out


def test_an_unwritable_out_folder_is_one_line_before_any_training(tmp_path, monkeypatch):
    from pathlib import Path
    from helpers import rundir

    def read_only(self, data):
        raise OSError(30, "Read-only file system")
    monkeypatch.setattr(Path, "write_bytes", read_only)
    with pytest.raises(rundir.RunFolderError, match=r"cannot be written \(Read-only file system\)"):
        Trial(out_dir=tmp_path / "run", **SMALL).setup()


def test_a_full_disk_during_a_checkpoint_is_one_line_and_loses_only_that_epoch(tmp_path, monkeypatch):
    import errno
    run = tmp_path / "run"
    Trial(out_dir=run, **{**SMALL, "epochs": 3}).run(stop_after=1)
    real_save = torch.save

    def full(obj, f, *a, **k):
        f.write(b"x" * 1000)  # part of the file made it, then the disk filled up
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(CheckpointError) as e:
        Trial(out_dir=run, **{**SMALL, "epochs": 3}).run(resume=True)
    assert "No space left on device" in str(e.value) and "epoch 2 is lost" in str(e.value)
    assert "previous checkpoint (epoch 1) is intact" in str(e.value) and "\n" not in str(e.value)
    assert not list(run.glob("*.tmp")) and not (run / "run.lock").exists()
    monkeypatch.setattr(torch, "save", real_save)  # space again: the run resumes from epoch 1
    record = Trial(out_dir=run, **{**SMALL, "epochs": 3}).run(resume=True)
    assert [h["epoch"] for h in record.history] == [1, 2, 3]


def test_a_one_step_warm_up_trains(tmp_path):
    """5 steps with pct_start 0.2: a zero-length warm-up phase to OneCycleLR (ZeroDivisionError before)."""
    record = train(**{**SMALL, "limit": 250, "batch_size": 50, "epochs": 1})
    assert len(record.history) == 1
    rates = lr_schedule(get_recipe("fast", epochs=1), steps_per_epoch=5)["lr"]
    assert max(rates) == rates[1]  # the peak one step in


@pytest.mark.parametrize("how", ["parent is a file", "disk full mid-write"])
def test_an_unwritable_dataset_cache_falls_back_to_memory(tmp_path, monkeypatch, capsys, how):
    import errno
    folder = make_folder(tmp_path / "imgs")
    if how == "parent is a file":
        (tmp_path / "blocked").write_text("")
        cache = tmp_path / "blocked" / "cache"
    else:
        cache = tmp_path / "cache"

        def full(obj, f, *a, **k):
            f.write(b"x" * 1000)
            raise OSError(errno.ENOSPC, "No space left on device")
        monkeypatch.setattr(torch, "save", full)
    ds = D.load_split("folder", "train", data_dir=folder, cache_dir=cache)
    assert len(ds) == 8 and "cannot be written" in capsys.readouterr().out
    assert not list(tmp_path.rglob("*.tmp"))  # no partial file left in the cache


def test_a_chmod_changes_the_cache_key(tmp_path):
    """An image skipped for a permission error is decoded again once it is readable."""
    folder = make_folder(tmp_path / "imgs")
    files = D._list_folder(folder, "train")[1]
    before = D._cache_key("folder", folder, "train", files)
    os.chmod(files[0][0], 0o000)
    try:
        assert D._cache_key("folder", folder, "train", files) != before
    finally:
        os.chmod(files[0][0], 0o644)


def test_ctrl_c_during_training_is_one_line_naming_the_resume(tmp_path, monkeypatch, capsys):
    real = Trainer.train_one_epoch

    def interrupted_in_epoch_2(self, epoch):
        if epoch == 2:
            raise KeyboardInterrupt
        return real(self, epoch)
    monkeypatch.setattr(Trainer, "train_one_epoch", interrupted_in_epoch_2)
    argv = ["--data", "synthetic", "--limit", "120", "--batch-size", "40", "--epochs", "3",
            "--out", str(tmp_path / "r")]
    assert train_main(argv) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("interrupted: 1 epoch(s) saved in") and err[0].endswith("--resume")
    assert not (tmp_path / "r" / "run.lock").exists()  # the folder is free for the resume
    monkeypatch.setattr(Trainer, "train_one_epoch", real)
    assert train_main([*argv, "--resume"]) == 0
