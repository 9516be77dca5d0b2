"""Issue 9: resume, caches and inputs that can never silently lose or corrupt a run.

One test (or parametrized case) per defect; docs/reliability.md maps each guarantee to its test.
"""
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import benchmark
from helpers import data as D
from helpers import train as T

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
    T.Trial(out_dir=tmp_path / "r", **SMALL).run(stop_after=1)
    files = {p.name: p.read_bytes() for p in (tmp_path / "r").iterdir()}
    with pytest.raises(T.CheckpointError) as e:
        T.Trial(out_dir=tmp_path / "r", **{**SMALL, **change}).run(resume=True)
    assert message in str(e.value)
    assert {p.name: p.read_bytes() for p in (tmp_path / "r").iterdir()} == files  # nothing touched
    # and the folder still resumes with the original settings
    assert len(T.Trial(out_dir=tmp_path / "r", **SMALL).run(resume=True).history) == 2


def test_resume_refuses_changed_folder_data(tmp_path):
    root = make_folder(tmp_path / "ds")
    run = dict(SMALL, data="folder", data_dir=root, limit=None, batch_size=4)
    T.Trial(out_dir=tmp_path / "r", **run).run(stop_after=1)
    resume = lambda **kw: T.Trial(out_dir=tmp_path / "r", **{**run, **kw}).run(resume=True)  # noqa: E731
    noise(1).save(root / "train" / "cat" / "9.png")                                   # one image more
    with pytest.raises(T.CheckpointError, match="training images: checkpoint 8, now 9"):
        resume()
    (root / "train" / "cat" / "9.png").unlink()
    original = (root / "train" / "cat" / "0.png").read_bytes()
    noise(2).save(root / "train" / "cat" / "0.png")                                   # same count, new pixels
    with pytest.raises(T.CheckpointError, match=r"training images' contents \(fingerprint\)"):
        resume()
    (root / "train" / "cat" / "0.png").write_bytes(original)                          # back as it was
    copy = make_folder(tmp_path / "copy")
    with pytest.raises(T.CheckpointError, match=r"data folder \(--data-dir / data_dir=, resolved\)"):
        resume(data_dir=copy)
    assert len(resume().history) == 2


def test_old_checkpoint_without_data_identity_loads_and_checks_scheduler(tmp_path, capsys):
    root = make_folder(tmp_path / "ds")
    run = dict(SMALL, data="folder", data_dir=root, limit=None, batch_size=4)
    T.Trial(out_dir=tmp_path / "r", **run).run(stop_after=1)
    path = tmp_path / "r" / T.CHECKPOINT
    ckpt = torch.load(path, weights_only=True)
    for key in ("data_identity", "skipped_files"):
        del ckpt["config"][key]                          # as written before issue 9
    torch.save(ckpt, path)
    T.load_run(tmp_path / "r")                           # analysis still works
    for k in range(4, 8):                                # 12 images: 3 steps per epoch instead of 2
        noise(k).save(root / "train" / "dog" / f"{k}.png")
    with pytest.raises(T.CheckpointError, match="scheduler length: checkpoint 4 steps, now 6"):
        T.Trial(out_dir=tmp_path / "r", **run).run(resume=True)
    for k in range(4, 8):
        (root / "train" / "dog" / f"{k}.png").unlink()
    assert len(T.Trial(out_dir=tmp_path / "r", **run).run(resume=True).history) == 2
    assert "predates data fingerprints" in capsys.readouterr().out


# --------------------------------------------------------------------------- damaged checkpoints

def test_corrupt_checkpoint_is_one_error_and_the_previous_epoch_is_kept(tmp_path, capsys):
    full = T.train(out_dir=tmp_path / "full", **{**SMALL, "epochs": 3})
    T.Trial(out_dir=tmp_path / "r", **{**SMALL, "epochs": 3}).run(stop_after=2)
    ckpt, prev = tmp_path / "r" / T.CHECKPOINT, tmp_path / "r" / T.PREV_CHECKPOINT
    assert torch.load(prev, weights_only=True)["epoch"] == 1 and torch.load(ckpt, weights_only=True)["epoch"] == 2
    os.truncate(ckpt, ckpt.stat().st_size // 2)
    with pytest.raises(T.CheckpointError, match=r"checkpoint .*checkpoint.pt cannot be read.*intact \(epoch 1\).*mv "):
        T.Trial(out_dir=tmp_path / "r", **{**SMALL, "epochs": 3}).run(resume=True)
    with pytest.raises(T.CheckpointError, match="cannot be read"):
        T.load_run(tmp_path / "r")
    args = ["--recipe", "fast", "--data", "synthetic", "--limit", "120", "--batch-size", "40", "--epochs", "3",
            "--device", "cpu", "--out", str(tmp_path / "r"), "--resume"]
    capsys.readouterr()
    assert T.main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and "weights_only" not in err
    os.replace(prev, ckpt)                              # what the message says to do
    resumed = T.Trial(out_dir=tmp_path / "r", **{**SMALL, "epochs": 3}).run(resume=True)
    assert strip(resumed.history) == strip(full.history)


def test_crash_between_the_two_renames_resumes_from_prev(tmp_path):
    full = T.train(out_dir=tmp_path / "full", **SMALL)
    T.Trial(out_dir=tmp_path / "r", **SMALL).run(stop_after=1)
    os.replace(tmp_path / "r" / T.CHECKPOINT, tmp_path / "r" / T.PREV_CHECKPOINT)  # only prev is left
    with pytest.raises(FileExistsError, match="checkpoint.prev.pt"):
        T.Trial(out_dir=tmp_path / "r", **SMALL).run()
    resumed = T.Trial(out_dir=tmp_path / "r", **SMALL).run(resume=True)
    assert strip(resumed.history) == strip(full.history)


def test_history_json_is_rebuilt_from_the_checkpoint(tmp_path):
    T.train(out_dir=tmp_path / "r", **SMALL)
    hist = tmp_path / "r" / T.HISTORY
    behind = json.loads(hist.read_text())
    behind["history"] = behind["history"][:1]           # died between the two writes of the last epoch
    hist.write_text(json.dumps(behind))
    T.load_run(tmp_path / "r")                          # notebook 04's path
    assert len(T.Record.load(tmp_path / "r").history) == 2
    hist.write_text(json.dumps(behind))
    record = T.Trial(out_dir=tmp_path / "r", **SMALL).run(resume=True)  # already finished: nothing to train
    assert len(record.history) == 2 and json.loads(hist.read_text())["history"] == record.history


def test_non_finite_test_loss_is_not_saved_as_an_epoch(tmp_path, monkeypatch):
    T.Trial(out_dir=tmp_path / "r", **SMALL).run(stop_after=1)
    before = (tmp_path / "r" / T.CHECKPOINT).read_bytes()
    real = T.evaluate
    monkeypatch.setattr(T, "evaluate", lambda *a, **k: real(*a, **k) | dict(test_loss=float("nan")))
    with pytest.raises(T.NonFiniteLossError, match="test loss became nan at epoch 2.*last good checkpoint.*epoch 1"):
        T.Trial(out_dir=tmp_path / "r", **SMALL).run(resume=True)
    assert (tmp_path / "r" / T.CHECKPOINT).read_bytes() == before
    assert len(json.loads((tmp_path / "r" / T.HISTORY).read_text())["history"]) == 1


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
    train = D.load_split("folder", "train", root)
    assert len(train) == 8 and train.problems["skipped (unreadable)"] == 2
    assert sorted(os.path.basename(f) for f in train.skipped_files()) == ["gone.jpg", "loop.jpg"]
    out = capsys.readouterr().out
    assert "loop.jpg" in out and "gone.jpg" in out
    record = T.train(out_dir=tmp_path / "r", **dict(SMALL, data="folder", data_dir=root, limit=None,
                                                     batch_size=4, epochs=1))
    assert len(record.config["skipped_files"]["train"]) == 2
    saved = json.loads((tmp_path / "r" / T.HISTORY).read_text())["config"]["skipped_files"]
    assert sorted(os.path.basename(f) for f in saved["train"]) == ["gone.jpg", "loop.jpg"]


def test_sixteen_bit_png_is_scaled_not_clipped(tmp_path):
    root = make_folder(tmp_path / "ds")
    Image.fromarray(np.full((32, 32), 32768, np.uint16)).save(root / "train" / "cat" / "deep.png")
    train = D.load_split("folder", "train", root)
    deep = train.images[train.labels == 0][-1]
    assert deep.unique().tolist() == [128]               # 32768 / 257, not 255


def test_split_smaller_than_one_batch_says_so(tmp_path, capsys):
    with pytest.raises(D.DataError, match=r"20 images, fewer than one batch \(batch_size 40\).*--limit.*--batch-size"):
        T.Trial(**{**SMALL, "limit": 20}).setup()
    assert T.main(["--data", "synthetic", "--limit", "20", "--batch-size", "40", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "fewer than one batch" in err


def test_data_errors_name_the_cli_flag_and_the_python_argument(tmp_path):
    for call in (lambda: D.load_split("folder", "train"), lambda: D.load_split("folder", "train", tmp_path / "no"),
                 lambda: T.Trial(data="folder")):
        with pytest.raises(ValueError) as e:
            call()
        assert "--data-dir" in str(e.value) and "data_dir" in str(e.value).replace("--data-dir", "")


# --------------------------------------------------------------------------- CLI flags

COUNT_FLAGS = ["--epochs", "--batch-size", "--limit", "--threads"]


@pytest.mark.parametrize("main, flag", [(T.main, f) for f in COUNT_FLAGS]
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
    ('model_kwargs={"act": gelu}', "is not valid JSON; model_kwargs needs a JSON object"),
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
    (T, "python -m helpers.train", ["(default: seed)", "(default: folder)", "(default: auto)", "(default: 0)"]),
    (benchmark, "python -m helpers.benchmark", ["(default: fast)", "(default: folder)", "(default: 1)"]),
])
def test_help_names_the_command_and_shows_defaults(module, prog, defaults, capsys):
    with pytest.raises(SystemExit):
        module.main(["--help"])
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert out.startswith(f"usage: {prog} ") and all(d in out for d in defaults)
