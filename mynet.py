"""Your network: change it, then name it as model = "mynet.py:MyNet" (notebooks 02-04, any recipe) or
--model mynet.py:MyNet (python -m helpers.train / benchmark / pipeline / constraints / diagram). In Colab,
keep it on Google Drive instead: model = "drive:mynet.py:MyNet" (notebook 02 puts this example there).

The rules, checked by notebook 02 and before any training, by running one forward pass and reading what
executes (class and attribute names never decide a verdict):
- fewer than 1,000,000 parameters;
- exactly 3 max-pools that shrink the map (a pool that leaves the size as it is does not count; one pool
  module called three times counts three times; F.max_pool2d counts too);
- a depthwise-separable conv: a conv with groups == in_channels whose output reaches a 1x1 conv through
  BatchNorm, activation or dropout only;
- a dilated conv: dilation > 1 and a kernel larger than 1;
- ConvBlock -> TransitionBlock structure: a transition is a max-pool (with the 1x1 conv beside it, if any),
  a conv block the convolutions before it, and every transition needs a conv block with at least one
  k x k conv (k > 1) before it.

The network returns one row of 10 scores per image: logits (ending in nn.Linear or a 1x1 conv, as PyTorch
users write it) or log-probabilities (ending in log_softmax, like this example). Training uses cross-entropy,
which treats both alike. Not probabilities: a softmax at the end trains badly and is refused.

The building blocks (helpers/model.py), or plain torch if you prefer:
- ConvBNAct(in_ch, out_ch, kernel_size=3, dilation=1, dropout=0.0, conv=nn.Conv2d, act_layer=nn.ReLU):
  conv ("same" padding) -> BatchNorm -> activation -> Dropout. ConvActBN: the original solution's order.
- ConvBlock(channels, unit=ConvActBN, residual=False, **unit_kwargs): one unit per step of `channels`,
  e.g. [32, 64, 64] is two units, 32 -> 64 -> 64; unit_kwargs (dilation=2, conv=DepthwiseSeparableConv,
  dropout=...) go to every unit; residual=True adds the block's input to its output when shapes agree.
- TransitionBlock(in_ch, out_ch=None, unit=ConvActBN): a 2x2 max-pool (halves H and W), then a 1x1 conv
  unit to out_ch channels (None: keep the width).
- DepthwiseSeparableConv(in_ch, out_ch, kernel_size=3, ...): a depthwise k x k conv then a 1x1 conv, with
  nn.Conv2d's signature, so it can be passed as conv=.
- Head(in_ch, num_classes=10): global average pool -> 1x1 conv -> log_softmax.

Keep the network in this one file: it is copied into every run folder, so notebook 04 can rebuild it in
another runtime.
"""
import torch.nn as nn

from helpers.model import ConvBlock, ConvBNAct, DepthwiseSeparableConv, Head, TransitionBlock


class MyNet(nn.Module):
    """A plain three-stage network: 3x3 convs at 32x32, dilated convs at 16x16, depthwise-separable
    convs at 8x8, each stage closed by a TransitionBlock (max-pool, then a 1x1 conv that widens)."""

    def __init__(self, num_classes=10, width=48):
        super().__init__()
        w = width
        self.prep = ConvBNAct(3, w)                                                 # 32x32
        self.block1 = ConvBlock([w, w], unit=ConvBNAct)                             # 32x32
        self.trans1 = TransitionBlock(w, 2 * w, unit=ConvBNAct)                     # 16x16: max-pool 1
        self.block2 = ConvBlock([2 * w, 2 * w, 2 * w], unit=ConvBNAct, dilation=2)  # 16x16, dilated
        self.trans2 = TransitionBlock(2 * w, 4 * w, unit=ConvBNAct)                 # 8x8: max-pool 2
        self.block3 = ConvBlock([4 * w, 4 * w, 4 * w], unit=ConvBNAct, conv=DepthwiseSeparableConv,
                                residual=True)                                      # 8x8, separable
        self.trans3 = TransitionBlock(4 * w)                                        # 4x4: max-pool 3
        self.head = Head(4 * w, num_classes)                                        # log-probabilities

    def forward(self, x):
        x = self.trans1(self.block1(self.prep(x)))
        x = self.trans2(self.block2(x))
        x = self.trans3(self.block3(x))
        return self.head(x)
