"""`air` with its rule-required layers moved or removed: to find which of them costs accuracy.

A measurement aid, not a model for the assignment (`without_pair` breaks the separable rule; run it with
--allow-rule-breaking). Each function is `air` with one change, e.g.

    python -m helpers.benchmark --data-dir ../shared/data/cifar10-jpeg-dev --recipe best \
        --model scripts/air_variants.py:max_head --allow-rule-breaking

- `without_pair`: no residual separable pair (airbench93's layout with the dilated conv and the average head).
- `max_head`: airbench's global max-pool, as a fourth TransitionBlock before the head, with one of the three
  2x2 max-pools (`avg_at`: "trans1", the 31 -> 15 px one, or "trans3", 7 -> 3 px) averaging instead, so
  three max-pools remain and every rule passes.
"""
import torch.nn as nn

from helpers.model import GlobalPool2d, Net, TransitionBlock, air_net


def without_pair(num_classes=10):
    net = air_net(num_classes)
    net.block4 = nn.Sequential(net.block4[0])   # airbench's last conv only
    return net


def max_head(num_classes=10, avg_at="trans1"):
    if avg_at not in ("trans1", "trans2", "trans3"):
        raise ValueError(f"avg_at must be 'trans1', 'trans2' or 'trans3', got {avg_at!r}")
    net = air_net(num_classes)
    getattr(net, avg_at).pool = nn.AvgPool2d(2)
    stages = dict(net.named_children())
    head = stages.pop("head")                   # averages a 1x1 map: the identity
    return Net(**stages, trans4=TransitionBlock(128, pool=GlobalPool2d("max")), head=head)
