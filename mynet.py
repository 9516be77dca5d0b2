"""Your network. Change it, then use it as model = "mynet.py:MyNet" (notebooks 02-04, any recipe)
or --model mynet.py:MyNet (python -m helpers.train / benchmark / pipeline / constraints / diagram).

The assignment's rules are checked by notebook 02 (and before any training): ConvBlock ->
TransitionBlock stages with exactly 3 max-pools, a depthwise-separable conv, a dilated conv,
fewer than 1,000,000 parameters. Stages are read from the graph one forward pass runs, whatever
your classes are called: conv blocks, each closed by a max-pool that halves the map (with a 1x1
conv beside it if you like). Keep the network in this one file (it is copied into every run
folder, so notebook 04 can rebuild it anywhere).
"""
import torch.nn as nn

from helpers.model import ConvBlock, ConvBNReLU, DepthwiseSeparableConv, Head, TransitionBlock


class MyNet(nn.Module):
    """A plain three-stage network: 3x3 convs at 32x32, dilated convs at 16x16, depthwise-separable
    convs at 8x8, each stage closed by a TransitionBlock (max-pool, then a 1x1 conv that widens)."""

    def __init__(self, num_classes=10, width=48):
        super().__init__()
        w = width
        self.prep = ConvBNReLU(3, w)                                                # 32x32
        self.block1 = ConvBlock([w, w], unit=ConvBNReLU)                            # 32x32
        self.trans1 = TransitionBlock(w, 2 * w, unit=ConvBNReLU)                    # 16x16: max-pool 1
        self.block2 = ConvBlock([2 * w, 2 * w, 2 * w], unit=ConvBNReLU, dilation=2)  # 16x16, dilated
        self.trans2 = TransitionBlock(2 * w, 4 * w, unit=ConvBNReLU)                # 8x8: max-pool 2
        self.block3 = ConvBlock([4 * w, 4 * w, 4 * w], unit=ConvBNReLU, conv=DepthwiseSeparableConv,
                                residual=True)                                      # 8x8, separable
        self.trans3 = TransitionBlock(4 * w)                                        # 4x4: max-pool 3
        self.head = Head(4 * w, num_classes)                                        # log-probabilities

    def forward(self, x):
        x = self.trans1(self.block1(self.prep(x)))
        x = self.trans2(self.block2(x))
        x = self.trans3(self.block3(x))
        return self.head(x)
