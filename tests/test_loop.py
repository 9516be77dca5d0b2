"""helpers/loop.py, the training step: loss, optimizer groups and the schedule's rates in them, Lookahead, the
whitening-bias toggle, autocast, prediction with and without test-time augmentation, the compile warm-up."""
import json
import math

import pytest
import torch
import torch.nn as nn

from conftest import SMALL, SMALL_FAST, outcome
from helpers.checkpoint import CHECKPOINT
from helpers.data import channel_stats, load_split
from helpers.loader import Loader
from helpers.loop import (Lookahead, evaluate, loss_fn, make_optimizer, predict, predict_views, select_examples,
                          tta_views)
from helpers.record import load_run
from helpers.recipes import get_recipe
from helpers.registry import build_model
from helpers.run import Trial, train
from helpers.schedule import lr_schedule


# --------------------------------------------------------------------------- loss

def test_loss_goes_down_on_synthetic_data():
    torch.manual_seed(0)
    ds = load_split("synthetic", "train", limit=100)
    mean, std = channel_stats(ds.images)
    x, y = next(iter(Loader(ds, 100, train=False, mean=mean, std=std)))
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


def plain_torch_net(log_softmax: bool):
    """A network as a torch user writes it: nn.Sequential ending in nn.Linear (logits), or with a
    LogSoftmax after it."""
    layers = [torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.BatchNorm2d(16), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
              torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.BatchNorm2d(32), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
              torch.nn.Conv2d(32, 32, 3, padding=2, dilation=2), torch.nn.BatchNorm2d(32), torch.nn.ReLU(),
              torch.nn.MaxPool2d(2), torch.nn.Flatten(), torch.nn.Linear(32 * 4 * 4, 10)]
    return torch.nn.Sequential(*layers, *([torch.nn.LogSoftmax(1)] if log_softmax else []))


def test_a_logits_network_trains_as_well_as_a_log_softmax_one():
    """PyTorch's convention (logits) and the original solution's (log-probabilities) train alike: the same
    network, the same seed, either head, ends within a point (nll_loss on logits would train -logit[y]).
    Its probabilities are probabilities either way (what TTA averages and notebook 04 shows)."""
    runs = {}
    for head in (False, True):
        trial = Trial(**dict(SMALL, limit=400, epochs=4, model=lambda h=head: plain_torch_net(h), enforce_rules=False))
        record = trial.run()
        assert all(h["train_loss"] > 0 for h in record.history)  # a cross-entropy: never below 0
        probs = predict(trial.trainer.eval_model, trial.trainer.test_loader)[0].exp()
        assert torch.allclose(probs.sum(1), torch.ones(len(probs)), atol=1e-4)
        runs[head] = record.final_acc
    assert runs[True] > 0.5 and abs(runs[False] - runs[True]) <= 0.01, runs


def test_label_smoothing_matches_torch():
    logits = torch.randn(8, 10)
    y = torch.randint(0, 10, (8,))
    ours = loss_fn(logits.log_softmax(1), y, 0.1)
    assert torch.allclose(ours, torch.nn.functional.cross_entropy(logits, y, label_smoothing=0.1))


# --------------------------------------------------------------------------- optimizer and schedule

def test_optimizer_groups_split_weights_from_the_rest():
    opt = make_optimizer(build_model("fast"), get_recipe("fast", muon_lr=0))  # SGD alone (Muon: tests/test_muon.py)
    decay, no_decay = opt.param_groups
    assert all(p.ndim > 1 for p in decay["params"]) and all(p.ndim == 1 for p in no_decay["params"])
    assert decay["weight_decay"] > 0 and no_decay["weight_decay"] == 0


def test_each_step_trains_at_the_schedules_rates():
    """What the optimizer holds at every step of a run (every group's lr, the momentum) is lr_schedule's,
    bias_lr_scale and Muon's own peak (best's conv filters) included, under either schedule."""
    for schedule in ("one_cycle", "cosine"):
        trainer = Trial(**dict(SMALL, recipe="best", schedule=schedule)).setup()
        seen, muon_lrs, step = [], [], trainer.optimizer.step

        def recording_step(*args, **kwargs):
            weights, rest, filters = trainer.optimizer.param_groups
            seen.append((weights["lr"], rest["lr"], weights["momentum"], rest["momentum"]))
            muon_lrs.append(filters["lr"])
            return step(*args, **kwargs)

        trainer.optimizer.step = recording_step
        trainer.fit()
        want = lr_schedule(trainer.recipe, steps_per_epoch=len(trainer.train_loader))
        assert seen == list(zip(want["lr"], want["bias_lr"], want["momentum"], want["momentum"])), schedule
        assert want["bias_lr"][0] == pytest.approx(64 * want["lr"][0])
        r = trainer.recipe
        assert muon_lrs == pytest.approx([lr * r.muon_lr / r.lr for lr in want["lr"]]), schedule


@pytest.mark.parametrize("schedule", ["one_cycle", "cosine"])
@pytest.mark.parametrize("momentum, momentum_max", [(0.85, 0.95), (0.9, 0.9)])
def test_momentum_follows_the_recipe(schedule, momentum, momentum_max):
    seen = lr_schedule(get_recipe("fast", momentum=momentum, momentum_max=momentum_max, schedule=schedule), 10)
    # highest at the start, lowest at the lr peak, back up at the end
    seen = seen["momentum"]
    assert seen[0] == pytest.approx(momentum_max) and min(seen) == pytest.approx(momentum)
    assert seen[-1] == pytest.approx(momentum_max, abs=0.01)


@pytest.mark.parametrize("schedule", ["one_cycle", "cosine"])
@pytest.mark.parametrize("start, end", [(0.1, 0.001), (0.2, 0.07)])
def test_lr_starts_and_ends_at_the_recipe_fractions(schedule, start, end):
    seen = lr_schedule(get_recipe("fast", lr_start=start, lr_end=end, lr=2.0, schedule=schedule), 10)["lr"]
    assert seen[0] == pytest.approx(2.0 * start) and seen[-1] == pytest.approx(2.0 * end)
    assert max(seen) == pytest.approx(2.0)


def test_a_one_step_warm_up_trains(tmp_path):
    """5 steps with pct_start 0.2: a zero-length warm-up phase to OneCycleLR (ZeroDivisionError before)."""
    record = train(**{**SMALL_FAST, "limit": 250, "batch_size": 50, "epochs": 1})
    assert len(record.history) == 1
    rates = lr_schedule(get_recipe("fast", epochs=1), steps_per_epoch=5)["lr"]
    assert max(rates) == rates[1]  # the peak one step in


# --------------------------------------------------------------------------- Lookahead and the whitening bias

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


def test_image_size_grows_from_resize_start_to_full():
    from helpers.loop import image_size

    sizes = lambda **kw: [image_size(get_recipe("fast", epochs=4, **kw), e, 32) for e in range(1, 5)]  # noqa: E731
    assert sizes(resize_start=16, resize_epochs=2) == [16, 24, 32, 32]
    assert sizes(resize_start=16, resize_epochs=1) == [16, 32, 32, 32]
    assert sizes(resize_start=0, resize_epochs=0) == [32] * 4
    assert sizes(resize_start=40, resize_epochs=2) == [32] * 4   # never larger than the images


def test_progressive_resizing_trains_small_and_tests_full_size():
    trainer = Trial(**dict(SMALL_FAST, epochs=2, resize_start=16, resize_epochs=1)).setup()
    seen = []  # (training?, height) of every batch the network sees
    trainer.model.register_forward_pre_hook(lambda m, args: seen.append((m.training, args[0].shape[-1])))
    trainer.fit(stop_after=1)
    assert {h for t, h in seen if t} == {16} and {h for t, h in seen if not t} == {32}
    seen.clear()
    trainer.fit()
    assert {h for _, h in seen} == {32}


# --------------------------------------------------------------------------- precision

def test_bf16_autocast_trains():
    trial = Trial(precision="bf16", **SMALL)
    trainer = trial.setup()
    conv = next(m for m in trainer.model.modules() if isinstance(m, torch.nn.Conv2d))
    dtypes = []
    conv.register_forward_hook(lambda m, i, out: dtypes.append(out.dtype))
    record = trial.run()
    assert math.isfinite(record.history[-1]["train_loss"])
    assert dtypes and set(dtypes) == {torch.bfloat16}  # training and evaluation both ran in bf16


# --------------------------------------------------------------------------- prediction and evaluation

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


def test_examples_split_correct_and_wrong():
    trial = Trial(**SMALL)
    trial.run()
    t = trial.trainer
    right, wrong = (select_examples(t.eval_model, t.test_loader, c, 200) for c in (True, False))
    assert len(right["true"]) + len(wrong["true"]) == 120
    assert torch.equal(right["true"], right["pred"]) and not (wrong["true"] == wrong["pred"]).any()
    assert right["images"].dtype == torch.uint8 and (right["confidence"].diff() <= 0).all()


# --------------------------------------------------------------------------- torch.compile

@pytest.fixture
def eager_compile(monkeypatch):
    """torch.compile with the eager backend: the same code path, none of inductor's C++ build time."""
    calls = []
    original = nn.Module.compile

    def compile(self, *args, **kwargs):
        calls.append(kwargs.pop("mode", None))
        return original(self, *args, backend="eager", **kwargs)

    monkeypatch.setattr(nn.Module, "compile", compile)
    return calls


def test_compiled_run_matches_uncompiled_and_checkpoints_load_either_way(tmp_path, eager_compile):
    plain = train(out_dir=tmp_path / "plain", compile="off", **SMALL)
    compiled = train(out_dir=tmp_path / "compiled", compile="default", **SMALL)
    assert eager_compile == ["default"]
    assert compiled.config["compile_seconds"] >= 0 and compiled.config["settings"]["compile"] == "default"
    # the warm-up that compiles leaves weights, BatchNorm statistics and random state untouched
    assert outcome(compiled) == outcome(plain)
    # a compiled run's checkpoint loads into a plain model, and a plain one into a compiled model
    model, config, history = load_run(tmp_path / "compiled")
    assert len(history) == 2 and not hasattr(model, "_orig_mod")
    trial = Trial(out_dir=tmp_path / "plain", compile="default", **SMALL)
    trial.settings = trial.settings.override(compile="off")  # set up uncompiled; compiled by hand below
    trainer = trial.setup()
    trainer.model.compile(mode="default")
    trainer.load(tmp_path / "plain" / CHECKPOINT)
    assert trainer.epoch == 2


@pytest.fixture
def failing_compile(monkeypatch):
    """torch.compile as it fails in the field: it returns, then the first compiled call raises (inductor finds
    no C compiler, Triton does not know the GPU)."""
    import torch._dynamo

    def compile(fn, *args, **kwargs):
        def compiled(*a, **k):
            raise RuntimeError("InductorError: CppCompileError: C++ compile error\n(a long compiler log)")
        return compiled

    monkeypatch.setattr(torch, "compile", compile)
    torch._dynamo.reset()


def test_a_failed_compile_costs_speed_not_the_run(tmp_path, failing_compile):
    """The run goes on uncompiled, trains exactly what an uncompiled run trains, and says why in its log and
    its recorded settings; the attempt is not charged to train_seconds."""
    lines = []
    plain = train(out_dir=tmp_path / "plain", compile="off", **SMALL)
    trial = Trial(out_dir=tmp_path / "compiled", compile="default", log=lines.append, **SMALL)
    fell_back = trial.run()
    assert outcome(fell_back) == outcome(plain) and trial.trainer.model._compiled_call_impl is None
    said = [line for line in lines if "torch.compile failed" in line]
    assert said == ["torch.compile failed (RuntimeError: InductorError: CppCompileError: C++ compile error); "
                    "the run continues uncompiled (compile: off)"]
    config = json.loads((tmp_path / "compiled" / "history.json").read_text())["config"]
    assert config["settings"]["compile"] == "off" and config["requested"]["compile"] == "default"
    assert config["compile_error"].startswith("RuntimeError: InductorError")


def test_a_network_that_fails_uncompiled_too_fails_with_its_own_error(failing_compile):
    """The fallback never hides a broken network behind the compiler: the uncompiled warm-up raises its error."""
    class NoGrad(nn.Module):  # forward runs, backward cannot: its output has no gradient
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 10)

        def forward(self, x):
            with torch.no_grad():
                return self.fc(x.mean((2, 3)))

    with pytest.raises(RuntimeError, match="does not require grad"):
        Trial(model=NoGrad, enforce_rules=False, compile="default", **SMALL).setup()


def test_uncompiled_warm_up_leaves_no_trace_and_is_reported_apart(tmp_path, monkeypatch):
    """On a GPU an uncompiled run warms up before its clock starts (cuDNN autotunes each new shape); here
    the CPU is made to warm up too, and trains exactly what a cold run trains."""
    import helpers.run
    cold = train(out_dir=tmp_path / "cold", recipe="fast", resize_start=16, resize_epochs=1, **SMALL)
    assert cold.config["warmup_seconds"] == 0  # the CPU starts cold, as the airbench93 reference does
    monkeypatch.setattr(helpers.run, "needs_warm_up", lambda device: True)
    warm = train(out_dir=tmp_path / "warm", recipe="fast", resize_start=16, resize_epochs=1, **SMALL)
    assert warm.config["warmup_seconds"] > 0
    assert outcome(warm) == outcome(cold)


def test_compile_warms_up_both_whitening_bias_graphs(eager_compile):
    """`best` freezes the whitening bias after epoch 3; the graphs without its gradient must compile
    in the warm-up (compile_seconds), not inside that epoch's train_seconds."""
    from torch._dynamo.utils import counters
    trial = Trial(recipe="best", compile="default", precision="fp32", whiten_bias_epochs=1,
                    **{**SMALL, "epochs": 3, "batch_size": 50, "limit": 200})
    trainer = trial.setup()
    compiled = counters["stats"]["unique_graphs"]
    bias = next(m.conv.bias for m in trainer.model.modules() if hasattr(m, "init_whitening"))
    assert bias.requires_grad  # the warm-up leaves the flags as it found them
    trainer.fit()
    assert counters["stats"]["unique_graphs"] == compiled  # nothing compiled during training


def test_compile_warms_up_the_small_images_graphs(eager_compile):
    """Progressive resizing trains epoch 1 on 16 px images: that shape compiles in the warm-up too."""
    from torch._dynamo.utils import counters
    trial = Trial(recipe="fast", compile="default", precision="fp32", resize_start=16, resize_epochs=1,
                  **{**SMALL, "epochs": 2, "batch_size": 50, "limit": 200})
    trainer = trial.setup()
    compiled = counters["stats"]["unique_graphs"]
    trainer.fit()
    assert counters["stats"]["unique_graphs"] == compiled  # nothing compiled during training
