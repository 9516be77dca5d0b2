import json
import math

import pytest
import torch

from helpers.checkpoint import CHECKPOINT, CheckpointError, HISTORY
from helpers.device import pick_device
from helpers.loop import (Lookahead, NonFiniteLossError, evaluate, loss_fn, lr_schedule, make_optimizer, make_scheduler,
                          predict, predict_views, recipe_table, select_examples, tta_views)
from helpers.record import Record, load_run
from helpers.run import Trial, train
from helpers.train import main as train_main
from helpers.data import Loader, channel_stats, load_split
from helpers.registry import build_model
from helpers.recipes import Recipe, get_recipe

SMALL = dict(data="synthetic", limit=120, device="cpu", progress=False, batch_size=40, epochs=2)


def test_loss_goes_down_on_synthetic_data():
    torch.manual_seed(0)
    ds = load_split("synthetic", "train", limit=200)
    mean, std = channel_stats(ds.images)
    x, y = next(iter(Loader(ds, 200, train=False, mean=mean, std=std)))
    model = build_model("seed", dropout=0.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for _ in range(15):
        loss = loss_fn(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_label_smoothing_matches_torch():
    logits = torch.randn(8, 10)
    y = torch.randint(0, 10, (8,))
    ours = loss_fn(logits.log_softmax(1), y, 0.1)
    assert torch.allclose(ours, torch.nn.functional.cross_entropy(logits, y, label_smoothing=0.1))


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
    strip = lambda h: [{k: v for k, v in e.items() if "seconds" not in k and k != "peak_rss_mb"} for e in h]  # noqa: E731
    assert strip(a) == strip(b)
    c = train(seed=1, **SMALL).history
    assert strip(a) != strip(c)


@pytest.mark.parametrize("ema, lookahead", [(0.0, 0), (0.9, 0), (0.0, 2)])
def test_resume_equals_uninterrupted(tmp_path, ema, lookahead):
    strip = lambda h: [{k: v for k, v in e.items() if "seconds" not in k and k != "peak_rss_mb"} for e in h]  # noqa: E731
    small = dict(SMALL, ema=ema, lookahead=lookahead)
    full = train(out_dir=tmp_path / "full", **small)
    first = Trial(out_dir=tmp_path / "split", **small).run(stop_after=1)  # "interrupted" after epoch 1
    assert len(first.history) == 1
    resumed = Trial(out_dir=tmp_path / "split", **small).run(resume=True)
    assert strip(resumed.history) == strip(full.history)
    a = torch.load(tmp_path / "full" / CHECKPOINT, weights_only=True)
    b = torch.load(tmp_path / "split" / CHECKPOINT, weights_only=True)
    for key in ("model", "ema") if ema else ("model",):
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key]), key


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


def test_bias_lr_scale_follows_the_schedule():
    model = build_model("fast")
    recipe = get_recipe("fast", bias_lr_scale=8.0)
    opt = make_optimizer(model, recipe)
    sched = make_scheduler(opt, recipe, steps_per_epoch=10)
    decay, no_decay = opt.param_groups
    assert all(p.ndim > 1 for p in decay["params"]) and all(p.ndim == 1 for p in no_decay["params"])
    assert decay["weight_decay"] > 0 and no_decay["weight_decay"] == 0
    for _ in range(7):
        assert no_decay["lr"] == pytest.approx(8 * decay["lr"])
        opt.step()
        sched.step()


def _schedule(recipe, key, steps_per_epoch=10):
    """The value of optimizer setting `key` at every step of the recipe's schedule."""
    opt = make_optimizer(build_model("fast"), recipe)
    sched = make_scheduler(opt, recipe, steps_per_epoch=steps_per_epoch)
    seen = []
    for _ in range(recipe.epochs * steps_per_epoch):
        seen.append(opt.param_groups[0][key])
        opt.step()
        sched.step()
    return seen


@pytest.mark.parametrize("momentum, momentum_max", [(0.85, 0.95), (0.9, 0.9)])
def test_momentum_follows_the_recipe(momentum, momentum_max):
    seen = _schedule(get_recipe("fast", momentum=momentum, momentum_max=momentum_max), "momentum")
    # highest at the start, lowest at the lr peak, back up at the end
    assert seen[0] == pytest.approx(momentum_max) and min(seen) == pytest.approx(momentum)
    assert seen[-1] == pytest.approx(momentum_max, abs=0.01)


def test_old_checkpoint_config_records_the_momentum_it_used():
    # before momentum_max existed the scheduler ignored `momentum` and cycled 0.85 <-> 0.95
    old = {**get_recipe("fast").to_dict(), "momentum": 0.9}
    del old["momentum_max"]
    assert Recipe.from_dict(old) == get_recipe("fast")


def test_tta_views_weights_and_shifts():
    x = torch.randn(2, 3, 8, 8)
    for level, count in ((0, 1), (1, 2), (2, 6)):
        views = tta_views(x, level)
        assert len(views) == count and sum(w for w, _ in views) == pytest.approx(1.0)
        assert all(v.shape == x.shape for _, v in views)
    shifted = [v for _, v in tta_views(x, 2)[2:]]
    assert torch.equal(shifted[0][..., 1:, 1:], x[..., :-1, :-1])   # moved down-right by one pixel
    assert torch.equal(shifted[2][..., :-1, :-1], x[..., 1:, 1:])   # moved up-left by one pixel
    assert torch.equal(shifted[1], shifted[0].flip(-1))
    # a model that ignores its input gives the same answer at every level
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 10, bias=True), torch.nn.LogSoftmax(1))
    torch.nn.init.zeros_(model[1].weight)
    loader = [(x, torch.tensor([0, 1]))]
    outs = [predict(model, loader, tta=level)[0] for level in (0, 1, 2)]
    assert torch.allclose(outs[0], outs[1], atol=1e-6) and torch.allclose(outs[0], outs[2], atol=1e-6)


def test_existing_run_needs_resume_and_same_settings(tmp_path):
    train(out_dir=tmp_path / "run", **SMALL)
    with pytest.raises(FileExistsError, match="resume"):
        train(out_dir=tmp_path / "run", **SMALL)
    with pytest.raises(CheckpointError, match="recipe field epochs: checkpoint 2, now 3"):
        train(out_dir=tmp_path / "run", resume=True, **{**SMALL, "epochs": 3})


def test_non_finite_loss_stops_and_keeps_last_checkpoint(tmp_path, monkeypatch):
    trial = Trial(out_dir=tmp_path / "run", **SMALL)
    trial.run(stop_after=1)
    before = (tmp_path / "run" / CHECKPOINT).read_bytes()
    monkeypatch.setattr("helpers.loop.loss_fn", lambda *a: torch.tensor(float("nan"), requires_grad=True))
    with pytest.raises(NonFiniteLossError, match="epoch 2.*last good checkpoint.*epoch 1"):
        Trial(out_dir=tmp_path / "run", **SMALL).run(resume=True)
    assert (tmp_path / "run" / CHECKPOINT).read_bytes() == before


def test_examples_split_correct_and_wrong():
    trial = Trial(**SMALL)
    trial.run()
    t = trial.trainer
    right, wrong = (select_examples(t.eval_model, t.test_loader, c, 200) for c in (True, False))
    assert len(right["true"]) + len(wrong["true"]) == 120
    assert torch.equal(right["true"], right["pred"]) and not (wrong["true"] == wrong["pred"]).any()
    assert right["images"].dtype == torch.uint8 and (right["confidence"].diff() <= 0).all()


def test_bf16_autocast_trains():
    trial = Trial(precision="bf16", **SMALL)
    trainer = trial.setup()
    conv = next(m for m in trainer.model.modules() if isinstance(m, torch.nn.Conv2d))
    dtypes = []
    conv.register_forward_hook(lambda m, i, out: dtypes.append(out.dtype))
    record = trial.run()
    assert math.isfinite(record.history[-1]["train_loss"])
    assert dtypes and set(dtypes) == {torch.bfloat16}  # training and evaluation both ran in bf16


def test_bad_settings_raise_clear_errors():
    with pytest.raises(ValueError, match="epochs must be >= 1"):
        get_recipe("seed", epochs=0)
    with pytest.raises(ValueError, match="unknown recipe"):
        get_recipe("turbo")
    with pytest.raises(ValueError, match="unknown model"):
        get_recipe("seed", model="vgg")
    with pytest.raises(ValueError, match="tta must be"):
        get_recipe("seed", tta=3)
    with pytest.raises(ValueError, match="ema must be"):
        get_recipe("seed", ema=1.0)
    with pytest.raises(ValueError, match="cutout must be"):
        get_recipe("seed", cutout=-1)
    with pytest.raises(ValueError, match="momentum must satisfy"):
        get_recipe("seed", momentum=0.95, momentum_max=0.9)
    with pytest.raises(ValueError, match="needs data_dir"):
        Trial(data="folder")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA"):
            pick_device("cuda")


@pytest.mark.parametrize("argv, message", [
    (["--epochs", "0"], "positive integer"),
    (["--data", "folder"], "--data-dir"),
    (["--lr", "-1", "--data", "synthetic"], "--lr must be > 0"),
    (["--model", "nope"], "unknown model 'nope'; use one of air, fast, seed, wide, or your own FILE.py:NAME"),
])
def test_cli_rejects_bad_flags_before_work(argv, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        train_main(argv + ["--out", str(tmp_path / "x")])
    assert e.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_cli_runs_and_resumes(tmp_path, capsys):
    args = ["--data", "synthetic", "--limit", "80", "--epochs", "1", "--batch-size", "40", "--out", str(tmp_path / "r")]
    assert train_main(args) == 0
    assert train_main(args) == 2 and "--resume" in capsys.readouterr().err
    assert train_main(args + ["--resume"]) == 0


@pytest.mark.parametrize("field, value, message", [
    ("epochs", 1.5, "epochs must be a whole number, got 1.5"),
    ("lr", "abc", "lr must be a number"),
    ("flip", 1, "flip must be true or false"),
    ("batch_size", True, "batch_size must be a whole number"),
    ("model_kwargs", "gelu", "model_kwargs must be a dict"),
])
def test_recipe_rejects_wrong_types_from_python_too(field, value, message):
    with pytest.raises(ValueError, match=message):
        Trial(**{**SMALL, field: value})


def test_a_constant_colour_channel_still_trains():
    # std 0 in one channel would divide by zero when normalising and break the whitening init
    ds = load_split("synthetic", "train", limit=120)
    ds.images[:, 2] = 128
    mean, std = channel_stats(ds.images)
    assert min(std) > 0
    x, _ = next(iter(Loader(ds, 40, train=False, mean=mean, std=std)))
    net = build_model("fast")
    net.prep.init_whitening(x)
    assert torch.isfinite(net(x)).all()


def _steps(model, lookahead, n):
    # n SGD-like steps that move every weight, each followed by a lookahead update
    for _ in range(n):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(1.0)
        lookahead.update(model)


def test_lookahead_leaves_early_steps_alone_and_ends_on_the_slow_copy():
    model = torch.nn.Linear(2, 1, bias=False)
    torch.nn.init.zeros_(model.weight)
    la = Lookahead(model, every=1, total_steps=1000)
    _steps(model, la, 10)  # decay = 0.95 * (t / 1000)^3: about 1e-6, so the weights keep their pace
    assert model.weight.flatten().tolist() == pytest.approx([10.0, 10.0], abs=1e-3)

    model = torch.nn.Linear(2, 1, bias=False)
    torch.nn.init.zeros_(model.weight)
    la = Lookahead(model, every=5, total_steps=12)
    _steps(model, la, 11)
    slow = la.slow["weight"].clone()
    _steps(model, la, 1)  # the last step: the weights become the slow copy, not 12
    assert torch.equal(model.weight.detach(), slow) and model.weight[0, 0] < 11


def test_lookahead_trains_and_is_stored_in_the_checkpoint(tmp_path):
    trial = Trial(out_dir=tmp_path / "run", **dict(SMALL, lookahead=3))
    trial.run()
    ckpt = torch.load(tmp_path / "run" / CHECKPOINT, weights_only=True)
    assert ckpt["lookahead"]["step"] == trial.trainer.lookahead.total
    # after the last step the weights are the slow copy
    assert all(torch.equal(ckpt["model"][k], v) for k, v in ckpt["lookahead"]["slow"].items())


def test_whitening_bias_trains_only_for_its_epochs():
    from helpers.model import PatchWhitening

    trainer = Trial(**dict(SMALL, recipe="fast", epochs=2, whiten_bias_epochs=1)).setup()
    bias = next(m for m in trainer.model.modules() if isinstance(m, PatchWhitening)).conv.bias
    head = trainer.model.head.fc.weight
    before = bias.detach().clone()
    trainer.fit(stop_after=1)
    after_one, head_one = bias.detach().clone(), head.detach().clone()
    trainer.fit()
    assert not torch.equal(before, after_one)                                    # trained in epoch 1
    assert torch.equal(after_one, bias) and not torch.equal(head_one, head)      # frozen in epoch 2 only


@pytest.mark.parametrize("start, end", [(0.1, 0.001), (0.2, 0.07)])
def test_lr_starts_and_ends_at_the_recipe_fractions(start, end):
    seen = _schedule(get_recipe("fast", lr_start=start, lr_end=end, lr=2.0), "lr")
    assert seen[0] == pytest.approx(2.0 * start) and seen[-1] == pytest.approx(2.0 * end)
    assert max(seen) == pytest.approx(2.0)


@pytest.mark.parametrize("field, value", [("lr_start", 0.0), ("lr_end", 0.5), ("lookahead", -1),
                                          ("whiten_bias_epochs", -2)])
def test_new_schedule_fields_are_validated(field, value):
    with pytest.raises(ValueError, match=field):
        get_recipe("fast", **{field: value})


def test_plain_accuracy_is_never_the_tta_one():
    # a "model" that looks at the left half of the image only: the mirror view changes its answer
    class LeftHalf(torch.nn.Module):
        def forward(self, x):
            left = x[..., : x.shape[-1] // 2].mean((1, 2, 3))
            return (torch.stack([left, -left], 1) * 10).log_softmax(1)

    torch.manual_seed(0)
    x = torch.randn(64, 3, 8, 8)
    y = (x[..., :4].mean((1, 2, 3)) <= 0).long()  # what the left half says: plain accuracy is 100 %
    stats = evaluate(LeftHalf(), [(x, y)], tta=1)
    assert stats["test_acc"] == 1.0 and stats["tta_acc"] < 0.9
    assert evaluate(LeftHalf(), [(x, y)])["test_acc"] == 1.0 and "tta_acc" not in evaluate(LeftHalf(), [(x, y)])
    plain, with_tta, labels = predict_views(LeftHalf(), [(x, y)], tta=2)
    assert torch.equal(plain, predict(LeftHalf(), [(x, y)])[0]) and not torch.equal(plain, with_tta)


def test_history_and_record_keep_plain_and_tta_apart(tmp_path):
    record = train(out_dir=tmp_path / "run", **dict(SMALL, recipe="fast", tta=1))
    last = record.history[-1]
    assert {"test_acc", "tta_acc", "test_loss", "tta_loss"} <= set(last)
    assert record.final_acc == last["test_acc"] and record.final_tta_acc == last["tta_acc"]
    table = record.table()
    assert "TTA acc" in table and "final test accuracy (plain, single view)" in table
    assert train(**dict(SMALL, epochs=1)).final_tta_acc is None  # seed has no TTA


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
    strip = lambda h: [{k: v for k, v in e.items() if "seconds" not in k and k != "peak_rss_mb"} for e in h]  # noqa: E731
    assert strip(trial.record().history) == strip(whole.history)
    again = Trial(out_dir=tmp_path / "pieces", **SMALL).setup()
    assert again.restore() == 2  # a new session continues after the saved epochs
    with pytest.raises(ValueError, match="cannot follow epoch 2"):
        again.save_epoch(dict(stats, epoch=1))


def test_lr_schedule_is_the_trainers():
    recipe = get_recipe("best")
    seen = lr_schedule(recipe, steps_per_epoch=10)
    assert seen["lr"] == _schedule(recipe, "lr")  # the optimizer and scheduler a run steps through
    assert seen["bias_lr"] == pytest.approx([lr * recipe.bias_lr_scale for lr in seen["lr"]])
    assert seen["momentum"] == _schedule(recipe, "momentum") and len(seen["lr"]) == recipe.epochs * 10


def test_recipe_table_reads_the_run():
    trainer = Trial(**dict(SMALL, recipe="best", batch_size=40)).setup()
    table = recipe_table(trainer)
    groups = trainer.optimizer.param_groups
    assert f"{sum(p.numel() for p in groups[0]['params']):,} values): peak lr 1.5" in table
    assert "(x64)" in table and "lookahead every 5 steps" in table and "label smoothing 0.2" in table
    assert "first 3 epochs" in table and "+ mirror and 1 px shifts (6 views)" in table and "3 steps per epoch" in table


def test_a_run_from_before_plain_accuracy_is_not_resumed(tmp_path):
    Trial(out_dir=tmp_path / "run", **dict(SMALL, recipe="fast", tta=1)).run(stop_after=1)
    ckpt = torch.load(tmp_path / "run" / CHECKPOINT, weights_only=True)
    for h in ckpt["history"]:  # as the previous version wrote it: one accuracy, with TTA, as test_acc
        h["test_acc"] = h.pop("tta_acc")
        h.pop("tta_loss")
    torch.save(ckpt, tmp_path / "run" / CHECKPOINT)
    with pytest.raises(CheckpointError, match="predates plain accuracy"):
        Trial(out_dir=tmp_path / "run", **dict(SMALL, recipe="fast", tta=1)).run(resume=True)
