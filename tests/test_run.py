"""helpers/run.py: Trial and Trainer run the epochs, keep the history, evaluate the EMA weights, resume to
the same history as an uninterrupted run, and stop on a non-finite loss without saving that epoch."""
import json
import math
import re

import pytest
import torch

from conftest import SMALL, SMALL_FAST, outcome
from helpers.checkpoint import CHECKPOINT, HISTORY
from helpers.data import channel_stats, load_splits
from helpers.loop import NonFiniteLossError, evaluate
from helpers.recipes import get_recipe
from helpers.record import Record, load_run
from helpers.run import Trial, train
from helpers.schedule import lr_schedule


# --------------------------------------------------------------------------- a run

def test_train_returns_record_with_history(tmp_path):
    record = train(out_dir=tmp_path / "run", **SMALL)
    assert [h["epoch"] for h in record.history] == [1, 2]
    for key in ("train_loss", "train_acc", "test_loss", "test_acc", "lr", "train_seconds", "peak_rss_mb"):
        assert all(math.isfinite(h[key]) for h in record.history), key
    saved = json.loads((tmp_path / "run" / HISTORY).read_text())
    assert saved["history"] == record.history and saved["config"]["recipe"]["epochs"] == 2
    model, config, history = load_run(tmp_path / "run")
    assert history == record.history and config["classes"][0] == "class0"
    assert Record.load(tmp_path / "run").final_acc == record.final_acc


def test_same_seed_same_history():
    a = train(**SMALL).history
    b = train(**SMALL).history
    assert outcome(a) == outcome(b)
    c = train(seed=1, **SMALL).history
    assert outcome(a) != outcome(c)


def test_ema_is_what_gets_evaluated_and_loaded(tmp_path):
    trial = Trial(out_dir=tmp_path / "run", **dict(SMALL, ema=0.9))
    record = trial.run()
    trainer = trial.trainer
    ema, raw = trainer.eval_model.state_dict(), trainer.model.state_dict()
    assert trainer.eval_model is not trainer.model and not torch.equal(ema["head.fc.weight"], raw["head.fc.weight"])
    acc = evaluate(trainer.eval_model, trainer.test_loader)["test_acc"]
    assert acc == pytest.approx(record.final_acc)
    model, _, _ = load_run(tmp_path / "run")
    assert all(torch.equal(v, ema[k]) for k, v in model.state_dict().items())


def test_lookahead_trains_and_is_stored_in_the_checkpoint(tmp_path):
    trial = Trial(out_dir=tmp_path / "run", **dict(SMALL, lookahead=3))
    trial.run()
    ckpt = torch.load(tmp_path / "run" / CHECKPOINT, weights_only=True)
    assert ckpt["lookahead"]["step"] == trial.trainer.lookahead.total
    # after the last step the weights are the slow copy
    assert all(torch.equal(ckpt["model"][k], v) for k, v in ckpt["lookahead"]["slow"].items())


def test_the_loop_in_pieces_is_fit(tmp_path):
    # notebook 03's loop: restore, then train_one_epoch / evaluate / save_epoch per epoch, as fit does
    trial = Trial(out_dir=tmp_path / "pieces", **SMALL)
    trainer = trial.setup()
    start = trainer.restore()
    for epoch in range(start + 1, trainer.recipe.epochs + 1):
        stats = trainer.train_one_epoch(epoch)
        stats |= trainer.evaluate()
        trainer.save_epoch(stats)
    whole = train(out_dir=tmp_path / "fit", **SMALL)
    assert outcome(trial.record().history) == outcome(whole.history)
    again = Trial(out_dir=tmp_path / "pieces", **SMALL).setup()
    assert again.restore() == 2  # a new session continues after the saved epochs
    with pytest.raises(ValueError, match="cannot follow epoch 2"):
        again.save_epoch(dict(stats, epoch=1))


# --------------------------------------------------------------------------- the validation split (val=)

def test_a_run_with_val_records_val_acc_per_epoch_beside_test_acc(tmp_path):
    lines = []
    trial = Trial(out_dir=tmp_path / "run", val=40, log=lines.append, **SMALL_FAST)   # fast: TTA 1
    record = trial.run()
    for h in record.history:
        assert {"test_loss", "test_acc", "tta_acc", "val_loss", "val_acc", "val_tta_acc"} <= set(h)
        assert all(math.isfinite(h[k]) for k in ("val_loss", "val_acc", "val_tta_acc"))
    trainer = trial.trainer
    assert len(trainer.val_loader.labels) == 40 and len(trainer.train_loader.labels) == 80
    # val_acc is the plain accuracy on the held-out images, test_acc still the test split's
    precision = trainer.settings.precision
    assert record.final_val_acc == evaluate(trainer.eval_model, trainer.val_loader, precision)["test_acc"]
    assert record.final_acc == evaluate(trainer.eval_model, trainer.test_loader, precision)["test_acc"]
    epoch_lines = [line for line in lines if line.startswith("epoch ")]
    assert len(epoch_lines) == 2 and all(re.search(r"test loss .* acc .*  val acc \d+\.\d\d% \(TTA", line)
                                         for line in epoch_lines)
    assert record.config["val"] == 40 and record.config["data_identity"]["val"] == 40
    assert Record.load(tmp_path / "run").history == record.history and "val acc" in record.table()


def test_the_validation_split_is_the_same_for_every_seed_and_never_trained_on():
    def data(seed, val):
        trainer = Trial(seed=seed, val=val, **SMALL).setup()
        return trainer.train_loader, trainer.val_loader

    rows = lambda images: {bytes(im.flatten().tolist()) for im in images}  # noqa: E731  (each image, as bytes)
    for val, held in ((40, 40), (0.25, 30)):
        train0, val0 = data(0, val)
        train1, val1 = data(1, val)
        assert torch.equal(val0.images, val1.images) and torch.equal(train0.images, train1.images)
        assert len(val0.labels) == held and len(train0.labels) == 120 - held
        assert not rows(val0.images) & rows(train0.images)                  # disjoint from what is trained on
        counts = torch.bincount(val0.labels, minlength=10)
        assert counts.max() - counts.min() <= 1                                # class-balanced


def test_a_run_without_val_is_unchanged():
    """val=None (or 0) trains on the whole split exactly as before validation splits existed: the same
    images, batches and history, no val_* entry, nothing added to the config a resume compares."""
    one = dict(SMALL, epochs=1)
    plain = Trial(**one)
    history = plain.run().history
    whole = load_splits("synthetic", limit=120)[0]
    assert torch.equal(plain.trainer.train_loader.images, whole.images) and plain.trainer.val_loader is None
    assert plain.trainer.config["mean"] == channel_stats(whole.images)[0]
    for none in (None, 0):
        assert outcome(Trial(val=none, **one).run().history) == outcome(history)
    assert not [k for h in history for k in h if k.startswith("val")] and plain.record().final_val_acc is None
    assert "val" not in plain.trainer.config and not [k for k in plain.trainer.config["data_identity"] if "val" in k]


# --------------------------------------------------------------------------- resume

@pytest.mark.parametrize("ema, lookahead", [(0.0, 0), (0.9, 0), (0.0, 2)])
def test_resume_equals_uninterrupted(tmp_path, ema, lookahead):
    small = dict(SMALL, ema=ema, lookahead=lookahead)
    full = train(out_dir=tmp_path / "full", **small)
    first = Trial(out_dir=tmp_path / "split", **small).run(stop_after=1)  # "interrupted" after epoch 1
    assert len(first.history) == 1
    resumed = Trial(out_dir=tmp_path / "split", **small).run(resume=True)
    assert outcome(resumed.history) == outcome(full.history)
    a = torch.load(tmp_path / "full" / CHECKPOINT, weights_only=True)
    b = torch.load(tmp_path / "split" / CHECKPOINT, weights_only=True)
    for key in ("model", "ema") if ema else ("model",):
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key]), key


def test_a_cosine_run_resumed_after_epoch_1_is_the_run_never_interrupted(tmp_path):
    """The checkpoint's step count is where the schedule stands: a resumed run continues on the very rates."""
    run = dict(recipe="fast", data="synthetic", limit=120, batch_size=40, epochs=3, schedule="cosine", device="cpu",
               progress=False)
    full = train(out_dir=tmp_path / "full", **run)
    assert Trial(out_dir=tmp_path / "split", **run).run(stop_after=1).history[0]["lr"] == full.history[0]["lr"]
    resumed = Trial(out_dir=tmp_path / "split", **run).run(resume=True)
    assert outcome(resumed.history) == outcome(full.history)
    a = torch.load(tmp_path / "full" / CHECKPOINT, weights_only=True)
    b = torch.load(tmp_path / "split" / CHECKPOINT, weights_only=True)
    assert a["step"] == b["step"] == 9 and all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    cosine = lr_schedule(get_recipe("fast", epochs=3, schedule="cosine"), steps_per_epoch=3)["lr"]
    assert [h["lr"] for h in full.history] == cosine[2::3] != lr_schedule(get_recipe("fast", epochs=3), 3)["lr"][2::3]


# --------------------------------------------------------------------------- non-finite losses

def test_non_finite_loss_stops_and_keeps_last_checkpoint(tmp_path, monkeypatch):
    trial = Trial(out_dir=tmp_path / "run", **SMALL)
    trial.run(stop_after=1)
    before = (tmp_path / "run" / CHECKPOINT).read_bytes()
    monkeypatch.setattr("helpers.loop.loss_fn", lambda *a: torch.tensor(float("nan"), requires_grad=True))
    with pytest.raises(NonFiniteLossError, match="epoch 2.*last good checkpoint.*epoch 1"):
        Trial(out_dir=tmp_path / "run", **SMALL).run(resume=True)
    assert (tmp_path / "run" / CHECKPOINT).read_bytes() == before


def test_non_finite_test_loss_is_not_saved_as_an_epoch(tmp_path, monkeypatch):
    Trial(out_dir=tmp_path / "r", **SMALL_FAST).run(stop_after=1)
    before = (tmp_path / "r" / CHECKPOINT).read_bytes()
    real = evaluate
    monkeypatch.setattr("helpers.run.evaluate", lambda *a, **k: real(*a, **k) | dict(test_loss=float("nan")))
    with pytest.raises(NonFiniteLossError, match="test loss became nan at epoch 2.*last good checkpoint.*epoch 1"):
        Trial(out_dir=tmp_path / "r", **SMALL_FAST).run(resume=True)
    assert (tmp_path / "r" / CHECKPOINT).read_bytes() == before
    assert len(json.loads((tmp_path / "r" / HISTORY).read_text())["history"]) == 1
