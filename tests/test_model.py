import pytest
import torch

from helpers.constraints import check
from helpers import model as M
from helpers.errors import UserError
from helpers.model import DepthwiseSeparableConv, GlobalPool2d, TransitionBlock, count_params
from helpers.registry import build_model, list_models


@pytest.mark.parametrize("name", list_models())
def test_output_is_log_softmax_over_10_classes(name):
    model = build_model(name).eval()
    out = model(torch.randn(4, 3, 32, 32))
    assert out.shape == (4, 10)
    assert torch.allclose(out.exp().sum(1), torch.ones(4), atol=1e-4)


@pytest.mark.parametrize("name", list_models())
def test_every_registered_model_passes_the_constraints(name):
    report = check(build_model(name))
    assert report.passed, report.rules_text()
    assert report.params == count_params(build_model(name)) < 1_000_000


def test_depthwise_separable_conv_parts():
    conv = DepthwiseSeparableConv(16, 32, 3, padding=1)
    assert conv.depthwise.groups == 16 and conv.depthwise.kernel_size == (3, 3)
    assert conv.pointwise.kernel_size == (1, 1) and conv.pointwise.out_channels == 32
    assert conv(torch.randn(1, 16, 8, 8)).shape == (1, 32, 8, 8)
    # far fewer weights than the full conv it replaces
    assert count_params(conv) == 16 * 9 + 16 * 32 < 16 * 32 * 9


def test_patch_whitening_decorrelates_patches():
    from helpers.model import PatchWhitening
    torch.manual_seed(0)
    base = torch.randn(256, 1, 16, 16)
    images = torch.cat([base, 0.9 * base + 0.1 * torch.randn_like(base), torch.randn_like(base)], 1)
    w = PatchWhitening()
    w.init_whitening(images)
    out = w.conv(images)[:, :12]  # the positive-sign half: whitened 2x2x3 patches
    cov = torch.cov(out.permute(1, 0, 2, 3).reshape(12, -1))
    off_diagonal = cov - torch.diag(cov.diag())
    assert off_diagonal.abs().max() < 0.02
    assert (cov.diag() > 0.8).all() and (cov.diag() < 1.05).all()  # eps damps the tiniest direction a bit
    assert not w.conv.weight.requires_grad


def test_patch_whitening_is_computed_on_the_cpu_in_float64(monkeypatch):
    """MPS has no float64 and no eigh: the images go to the CPU first, whatever their device."""
    from helpers.model import PatchWhitening

    class Watched(torch.Tensor):  # records every .to() the images get
        moves = []

        @classmethod
        def __torch_function__(cls, func, types, args=(), kwargs=None):
            if func is torch.Tensor.to:
                cls.moves.append((args[1:], kwargs or {}))
            return super().__torch_function__(func, types, args, kwargs or {})

    seen = []
    eigh = torch.linalg.eigh
    monkeypatch.setattr(torch.linalg, "eigh", lambda a: seen.append((a.device.type, a.dtype)) or eigh(a))
    w = PatchWhitening()
    w.init_whitening(torch.randn(64, 3, 8, 8).as_subclass(Watched))
    assert (("cpu", torch.float64), {}) in Watched.moves      # moved, not computed where the images live
    assert seen == [("cpu", torch.float64)]
    assert w.conv.weight.dtype == torch.float32 and torch.isfinite(w.conv.weight).all()


def test_dirac_init_starts_3x3_convs_as_identity():
    from helpers.model import dirac_init_
    conv = torch.nn.Conv2d(4, 8, 3, padding=1, bias=False)
    dirac_init_(conv)
    x = torch.randn(2, 4, 6, 6)
    assert torch.equal(conv(x)[:, :4], x)            # first in_channels filters pass the input through
    narrowing = torch.nn.Conv2d(8, 4, 3, padding=1, bias=False)
    before = narrowing.weight.clone()
    dirac_init_(narrowing)                           # fewer outputs than inputs: left alone
    assert torch.equal(narrowing.weight, before)


def test_frozen_bn_scale_is_left_out_of_training():
    from helpers.recipes import get_recipe
    from helpers.loop import make_optimizer
    model = build_model("fast", bn_scale=False)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and not any(m.weight.requires_grad for m in bns) and all(m.bias.requires_grad for m in bns)
    trained = {id(p) for g in make_optimizer(model, get_recipe("fast")).param_groups for p in g["params"]}
    assert not any(id(m.weight) in trained for m in bns)


def test_whitening_eps_caps_the_gain():
    from helpers.model import PatchWhitening
    images = torch.randn(64, 3, 8, 8)
    images[:, 2] = images[:, 1]                      # one direction with no signal at all
    w = PatchWhitening(eps=0.01)
    w.init_whitening(images)
    gains = w.conv.weight.flatten(1).norm(dim=1)     # each filter: eigenvector / sqrt(eigval + eps)
    assert gains.max() <= 10.0 + 1e-4


@pytest.mark.parametrize("dilated, passes", [("block3", True), ("lead2", True), ("none", False)])
def test_wide_model_dilation_placement(dilated, passes):
    report = check(build_model("wide", dilated=dilated))
    assert report.passed == passes and report.params == 882_872
    with pytest.raises(UserError, match="dilated must be"):
        build_model("fast", dilated="lead2")         # needs the extra conv


def test_wide_model_activation_and_residual_depth():
    gelu = build_model("wide", act="gelu")
    assert any(isinstance(m, torch.nn.GELU) for m in gelu.modules())
    assert not any(isinstance(m, torch.nn.ReLU) for m in gelu.modules())
    silu = build_model("fast", act="silu")
    assert any(isinstance(m, torch.nn.SiLU) for m in silu.modules()) and check(silu).passed
    assert not any(isinstance(m, (torch.nn.ReLU, torch.nn.GELU)) for m in silu.modules())
    deeper = build_model("wide", res_pairs=1)
    report = check(deeper)
    # one residual pair of 64-channel 3x3 convs (+ BatchNorm) at 15x15
    assert report.passed and report.params == 882_872 + 2 * (64 * 64 * 9 + 2 * 64)
    assert deeper(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    with pytest.raises(UserError, match="act must be"):
        build_model("wide", act="swish")
    with pytest.raises(UserError, match="res_pairs must be"):
        build_model("wide", res_pairs=-1)


@pytest.mark.parametrize("kwargs, broken", [
    ({"separable": False}, {"depthwise-separable conv"}),
    ({"head_pool": "max"}, {"exactly 3 max-pools"}),  # a fourth transition, after a conv block: only a pool too many
])
def test_rule_pricing_switches_break_only_their_rule(kwargs, broken):
    # the switches that price a rule (plain convs instead of separable ones, a global max-pool
    # head) fail the checker on that rule and on nothing else
    model = build_model("fast", **kwargs)
    report = check(model)
    assert {r.name for r in report.rules if not r.passed} == broken, report.rules_text()
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    with pytest.raises(UserError, match="pool must be"):
        build_model("fast", head_pool="min")


def test_batchnorm_momentum_and_logit_scale_reach_every_layer():
    model = build_model("wide", bn_momentum=0.4, logit_scale=1 / 9)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(m.momentum == 0.4 for m in bns)
    assert model.head.scale == pytest.approx(1 / 9)
    assert all(m.momentum == 0.1 for m in build_model("wide").modules() if isinstance(m, torch.nn.BatchNorm2d))


def test_last_conv_adds_a_plain_3x3_conv_before_the_separable_pair():
    base, last = build_model("wide", widths=(64, 128, 128)), build_model("wide", widths=(64, 128, 128), last_conv=True)
    assert count_params(last) == count_params(base) + 128 * 128 * 9 + 2 * 128   # conv + BatchNorm
    assert isinstance(last.block4[0].conv, torch.nn.Conv2d) and last.block4[0].conv.groups == 1
    assert isinstance(last.block4[1].conv, DepthwiseSeparableConv)
    assert check(last).passed and last(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("name", list_models())
def test_channels_last_gradients_stay_channels_last(name):
    # a layer that hands an NCHW gradient to a channels_last network makes every BatchNorm and conv
    # backward below it convert layouts (adaptive pooling's backward does, hence GlobalPool2d: ~10 % of a CPU step)
    model = build_model(name).to(memory_format=torch.channels_last)
    nchw = []

    def watch(module_name):
        def hook(module, inputs):
            x = inputs[0]
            if x.requires_grad and x.shape[-1] > 1:   # at 1x1 both layouts are the same
                x.register_hook(lambda g: None if g.is_contiguous(memory_format=torch.channels_last)
                                else nchw.append(module_name))
        return hook

    for module_name, m in model.named_modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.BatchNorm2d, torch.nn.MaxPool2d)):
            m.register_forward_pre_hook(watch(module_name))
    model(torch.randn(4, 3, 32, 32).contiguous(memory_format=torch.channels_last)).sum().backward()
    assert not nchw, f"NCHW gradients reach {nchw}"


@pytest.mark.parametrize("mode, reduce", [("avg", torch.mean), ("max", torch.amax)])
def test_global_pool_covers_any_input_size(mode, reduce):
    pool = GlobalPool2d(mode)
    for size in (3, 2, 1):   # progressive resizing shrinks the last map
        x = torch.randn(2, 5, size, size)
        assert torch.allclose(pool(x), reduce(x, dim=(2, 3), keepdim=True), atol=1e-6)
    with pytest.raises(UserError, match="pool must be"):
        GlobalPool2d("min")


def test_each_conv_unit_is_an_instance_of_its_own_order_only():
    """ConvActBN, ConvBNAct and the bare Conv share a base (ConvUnit), not each other: an isinstance check
    (a student's, the checker's) names the order of layers it asks about."""
    units = {M.ConvActBN: ["conv", "act", "bn", "drop"], M.ConvBNAct: ["conv", "bn", "act", "drop"],
             M.Conv: ["conv"]}
    for cls, names in units.items():
        unit = cls(3, 8, dropout=0.1)
        assert isinstance(unit, M.ConvUnit) and [name for name, _ in unit.named_children()] == names
        assert [other for other in units if isinstance(unit, other)] == [cls]


def test_transition_block_takes_its_pool():
    x = torch.randn(2, 4, 6, 6)
    assert TransitionBlock(4)(x).shape == (2, 4, 3, 3)                           # a 2x2 max-pool by default
    assert torch.equal(TransitionBlock(4, pool=GlobalPool2d("max"))(x), x.amax(dim=(2, 3), keepdim=True))


def test_stem_stride_2_tiles_the_image_and_keeps_every_rule():
    # the cheaper `fast` of docs/experiments.md's GPU ablations: same weights, every map a quarter the size
    torch.manual_seed(0)
    tiled = build_model("fast", stem_stride=2)
    torch.manual_seed(0)
    sliding = build_model("fast")
    assert all(torch.equal(a, b) for a, b in zip(tiled.state_dict().values(), sliding.state_dict().values()))
    x = torch.randn(2, 3, 32, 32)
    assert tiled.prep(x).shape == (2, 24, 16, 16) and sliding.prep(x).shape == (2, 24, 31, 31)
    report = check(tiled)
    assert report.passed, report.rules_text()
    assert "trans3.pool 4x4->2x2" in report.rules_text() and report.params == count_params(sliding)
