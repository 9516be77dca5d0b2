"""helpers/muon.py: the Newton-Schulz orthogonalisation, SGDMuon's step on the conv filters (SGD's on the rest),
and Muon as a recipe option: its own parameter group, lr shaped by the schedule, a run that trains and resumes."""
import pytest
import torch

from conftest import SMALL
from helpers.errors import UserError
from helpers.loop import make_optimizer, set_rates
from helpers.muon import SGDMuon, orthogonalize
from helpers.recipes import get_recipe
from helpers.registry import build_model
from helpers.run import Trial, train
from helpers.schedule import rates


@pytest.mark.parametrize("shape", [(64, 288), (288, 64), (32, 32)])
def test_orthogonalize_brings_every_singular_value_near_one(shape):
    torch.manual_seed(0)
    g = torch.randn(*shape) * torch.logspace(-0.5, 0.5, shape[1])   # columns spread over a decade
    assert torch.linalg.cond(g) > 4
    s = torch.linalg.svdvals(orthogonalize(g, steps=5))
    assert len(s) == min(shape) and 0.6 < s.min() and s.max() < 1.25
    # and the same directions: g's singular vectors diagonalise the result
    u, _, vh = torch.linalg.svd(g, full_matrices=False)
    assert (u.T @ orthogonalize(g) @ vh.T).diagonal().min() > 0.6


def test_muon_takes_the_conv_filters_and_sgd_the_rest():
    model = build_model("fast")
    recipe = get_recipe("fast", muon_lr=0.1)
    optimizer = make_optimizer(model, recipe)
    weights, rest, filters = optimizer.param_groups
    assert filters["muon"] and all(p.ndim == 4 for p in filters["params"])
    assert not any(p.ndim == 4 for p in weights["params"] + rest["params"])
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert sorted(id(p) for g in optimizer.param_groups for p in g["params"]) == sorted(trainable)
    # muon_lr=0: one SGD over two groups, as `seed` and `long` have
    assert type(make_optimizer(model, get_recipe("fast", muon_lr=0))) is torch.optim.SGD


def test_the_schedule_shapes_muons_lr_at_its_own_peak():
    model, recipe = build_model("fast"), get_recipe("fast", muon_lr=0.05)
    optimizer = make_optimizer(model, recipe)
    for step in (0, 100, 700):
        now = rates(recipe, 195, step)
        set_rates(optimizer, now)
        weights, rest, filters = optimizer.param_groups
        assert weights["lr"] == now.lr and filters["lr"] == pytest.approx(now.lr * 0.05 / recipe.lr)
        assert filters["momentum"] == recipe.muon_momentum and weights["momentum"] == now.momentum


def test_a_muon_step_moves_a_filter_along_its_orthogonalised_gradient():
    conv = torch.nn.Conv2d(8, 16, 3, bias=False)
    before = conv.weight.detach().clone()
    optimizer = SGDMuon([dict(params=[conv.weight], muon=True, ns_steps=5, weight_decay=0.0)], lr=0.1,
                        momentum=0.6, nesterov=True)
    conv.weight.grad = torch.randn_like(conv.weight) * torch.logspace(-2, 1, 72).view(1, 8, 3, 3)
    optimizer.step()
    # lr x the orthogonalised gradient (its size is gone): every direction of the filter moves about as much
    s = torch.linalg.svdvals((before - conv.weight.detach()).flatten(1) / 0.1)
    assert 0.6 < s.min() and s.max() < 1.25
    assert "muon_buffer" in optimizer.state_dict()["state"][0]   # checkpoints keep the momentum


@pytest.mark.parametrize("change, words", [(dict(muon_lr=-0.1), "muon_lr must be >= 0"),
                                           (dict(muon_momentum=1.0), "muon_momentum must be in [0, 1)"),
                                           (dict(muon_ns_steps=0), "muon_ns_steps must be")])
def test_bad_muon_settings_are_one_line(change, words):
    with pytest.raises(UserError, match=words.replace("[", r"\[").replace(")", r"\)")):
        get_recipe("fast", **change)


def test_a_muon_run_trains_and_resumes_to_the_run_never_interrupted(tmp_path):
    run = dict(SMALL, recipe="fast", epochs=3, muon_lr=0.1)
    full = train(out_dir=tmp_path / "full", **run)
    assert full.history[-1]["train_loss"] < full.history[0]["train_loss"]
    Trial(name="cut", out_dir=tmp_path / "cut", **run).run(stop_after=1)
    resumed = Trial(name="cut", out_dir=tmp_path / "cut", **run).run(resume=True)
    keys = ("train_loss", "train_acc", "test_loss", "test_acc", "lr")
    assert [[h[k] for k in keys] for h in resumed.history] == [[h[k] for k in keys] for h in full.history]


def test_muons_momentum_carries_the_earlier_gradients():
    """Step 2 moves along the orthogonalised Nesterov momentum of both gradients, not along the second alone."""
    conv = torch.nn.Conv2d(4, 8, 3, bias=False)
    optimizer = SGDMuon([dict(params=[conv.weight], muon=True, ns_steps=5, weight_decay=0.0)], lr=0.1,
                        momentum=0.6, nesterov=True)
    g1, g2 = torch.randn_like(conv.weight), torch.randn_like(conv.weight)
    conv.weight.grad = g1
    optimizer.step()
    before = conv.weight.detach().clone()
    conv.weight.grad = g2
    optimizer.step()
    buf = 0.6 * g1 + g2
    want = orthogonalize((g2 + 0.6 * buf).flatten(1)).view_as(g2)
    torch.testing.assert_close(before - conv.weight.detach(), 0.1 * want)


def test_the_recipe_table_names_muons_group():
    from helpers.explain import explain_recipe
    from helpers.recipes import Settings

    model, recipe = build_model("fast"), get_recipe("fast", muon_lr=0.05)
    table = explain_recipe(recipe, Settings(device="cpu", precision="fp32", compile="off"), model,
                           make_optimizer(model, recipe).param_groups, steps_per_epoch=195, image_size=32)
    lines = dict((line[:18].strip(), line[18:]) for line in table.splitlines())
    assert lines["optimizer"].endswith("3 parameter groups, Muon for the conv filters")
    # the registered networks end in a 1x1 conv, so Muon takes every weight; a Linear head stays with SGD
    assert lines["weights"] == "none left for SGD: every weight is a conv filter, in Muon's group"
    assert "peak lr 0.05" in lines["conv filters"]
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.Flatten(), torch.nn.LazyLinear(10))
    model(torch.zeros(1, 3, 32, 32))
    table = explain_recipe(recipe, Settings(device="cpu", precision="fp32", compile="off"), model,
                           make_optimizer(model, recipe).param_groups, steps_per_epoch=195, image_size=32)
    lines = dict((line[:18].strip(), line[18:]) for line in table.splitlines())
    assert lines["weights"].startswith("linear weights (1 tensors, 72,000 values): peak lr 0.89")


def test_normalize_holds_each_filter_at_its_norm_and_turns_it_by_about_the_lr():
    """muon_normalize (airbench94's Muon): each filter is rescaled to norm sqrt(out channels) before its step, so
    however large it has grown, one step turns it by about lr of its size; weight decay is skipped."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(8, 16, 3, bias=False)
    with torch.no_grad():
        conv.weight.mul_(50)                     # a filter grown far past sqrt(16)
    optimizer = SGDMuon([dict(params=[conv.weight], muon=True, ns_steps=5, weight_decay=0.5, normalize=True)],
                        lr=0.1, momentum=0.6, nesterov=True)
    for _ in range(3):
        before = conv.weight.detach().clone()
        conv.weight.grad = torch.randn_like(conv.weight)
        optimizer.step()
        rescaled = before * 4 / before.norm()
        assert 0.07 < ((conv.weight.detach() - rescaled).norm() / 4).item() < 0.13
    # without it the same step hardly turns the grown filter (and weight decay shrinks it)
    plain = torch.nn.Conv2d(8, 16, 3, bias=False)
    with torch.no_grad():
        plain.weight.mul_(50)
    before = plain.weight.detach().clone()
    plain.weight.grad = torch.randn_like(plain.weight)
    opt = SGDMuon([dict(params=[plain.weight], muon=True, ns_steps=5, weight_decay=0.0)], lr=0.1, momentum=0.6,
                  nesterov=True)
    opt.step()
    assert ((plain.weight.detach() - before).norm() / before.norm()).item() < 0.05


def test_a_normalized_muon_recipe_names_it_in_the_table_and_trains(tmp_path):
    from helpers.explain import explain_recipe
    from helpers.recipes import Settings

    model, recipe = build_model("fast"), get_recipe("fast", muon_lr=0.2, muon_normalize=True)
    optimizer = make_optimizer(model, recipe)
    assert optimizer.param_groups[2]["normalize"]
    table = explain_recipe(recipe, Settings(device="cpu", precision="fp32", compile="off"), model,
                           optimizer.param_groups, steps_per_epoch=195, image_size=32)
    assert "rescaled to norm sqrt(out channels)" in table and "no weight decay" in table
    run = train(out_dir=tmp_path, **dict(SMALL, recipe="fast", epochs=2, muon_lr=0.2, muon_normalize=True))
    assert run.history[-1]["train_loss"] < run.history[0]["train_loss"]
