"""airbench93's network, built from this project's parts: to measure what the assignment's rules cost.

A measurement aid, not a model for the assignment: it has four max-pools (its global max-pool head), no
depthwise-separable and no dilated conv, so every run needs --allow-rule-breaking:

    python -m helpers.benchmark --data-dir ../shared/data/cifar10-jpeg-dev --recipe best \
        --model scripts/airbench93_net.py:net --allow-rule-breaking

Layout as airbench93's make_net93 (569,656 parameters): a frozen 2x2 whitening conv with GELU, then three
groups of conv -> max-pool -> BatchNorm -> GELU -> conv -> BatchNorm -> GELU (widths 64, 128, 128), a global
max-pool and a bias-free linear layer whose logits are scaled by 1/9. Identity-initialised convs, BatchNorm
with a frozen scale, momentum 0.4 in PyTorch's convention and eps 1e-12, as airbench93's.

The arguments change one thing each, to price one rule at a time (`--set 'model_kwargs={"head_pool": "avg"}'`):
`head_pool="avg"` and `first_pool="avg"` each leave three max-pools, as the rules ask (an average-pool head,
or an average pool in the first group); `dilated=True` dilates the first conv of the third group (at 7x7, where
`air` has its dilated conv); `logit_divisor` replaces the 9 in the logits' 1/9.
"""
import torch.nn as nn

from helpers.model import Head, PatchWhitening, dirac_init_, freeze_bn_scale_

POOLS = {"max": nn.MaxPool2d, "avg": nn.AvgPool2d}


class ConvGroup(nn.Module):
    def __init__(self, in_channels, out_channels, pool="max", dilation=1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=dilation, dilation=dilation, bias=False)
        self.pool = POOLS[pool](2)
        self.norm1 = nn.BatchNorm2d(out_channels, eps=1e-12, momentum=0.4)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.norm2 = nn.BatchNorm2d(out_channels, eps=1e-12, momentum=0.4)
        self.act = nn.GELU()

    def forward(self, x):
        x = self.act(self.norm1(self.pool(self.conv1(x))))
        return self.act(self.norm2(self.conv2(x)))


def net(num_classes=10, head_pool="max", first_pool="max", dilated=False, logit_divisor=9):
    if first_pool not in POOLS:
        raise ValueError(f"first_pool must be 'max' or 'avg', got {first_pool!r}")
    model = nn.Sequential(PatchWhitening(act_layer=nn.GELU), ConvGroup(24, 64, pool=first_pool), ConvGroup(64, 128),
                          ConvGroup(128, 128, dilation=2 if dilated else 1),
                          Head(128, num_classes, scale=1 / logit_divisor, pool=head_pool))
    return freeze_bn_scale_(dirac_init_(model))
