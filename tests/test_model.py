import pytest
import torch

from helpers.constraints import check
from helpers.model import DepthwiseSeparableConv, build_model, count_params, list_models


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


def test_unknown_model_lists_known_names():
    with pytest.raises(ValueError, match="seed"):
        build_model("resnet9000")


def test_bad_override_is_a_value_error():
    with pytest.raises(ValueError, match="bad override"):
        build_model("seed", widht=3)


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
