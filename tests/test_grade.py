"""helpers.registry.find_network: the one network a file defines, for FILE.py submissions without NAME."""
import pytest

from helpers.registry import ModelError, find_network

# a passing network, small enough to train in a blink; {head} and {forward} are what the variants change
NETWORK = '''\
import torch
import torch.nn as nn
from helpers.model import ConvBlock, ConvBNReLU, DepthwiseSeparableConv, GlobalPool2d, Head, TransitionBlock
{top}

class {name}(nn.Module):
    def __init__(self, width=8):
        super().__init__()
        w = width
        self.prep = ConvBNReLU(3, w)
        self.block1 = ConvBlock([w, w], unit=ConvBNReLU)
        self.trans1 = TransitionBlock(w, 2 * w, unit=ConvBNReLU)
        self.block2 = ConvBlock([2 * w, {mid}, 2 * w], unit=ConvBNReLU, dilation=2)
        self.trans2 = TransitionBlock(2 * w, 4 * w, unit=ConvBNReLU)
        self.block3 = ConvBlock([4 * w, 4 * w], unit=ConvBNReLU, conv=DepthwiseSeparableConv)
        self.trans3 = TransitionBlock(4 * w)
        {init}
        {head}

    def forward(self, x):
        x = self.trans1(self.block1(self.prep(x)))
        x = self.trans2(self.block2(x))
        x = self.trans3(self.block3(x))
        {forward}
'''


def network(name="Net", top="", mid="2 * w", init="", head="self.head = Head(4 * w)", forward="return self.head(x)"):
    return NETWORK.format(name=name, top=top, mid=mid, init=init, head=head, forward=forward)


# --------------------------------------------------------------------------- the one network in a file

@pytest.mark.parametrize("source, found", [
    (network(name="MyNet"), "MyNet"),
    # classes first: a main() takes no arguments either
    (network(name="MyNet") + "\ndef main():\n    print(MyNet())\n", "MyNet"),
    # a stage is a part, never the network
    (network(name="MyNet") + "\nclass Stage(ConvBlock):\n    def __init__(self, c=8):\n"
                             "        super().__init__([c, c])\n", "MyNet"),
    # no class builds without arguments: the one factory
    (network(name="Net").replace("width=8", "width") + "\ndef make():\n    return Net(8)\n", "make"),
])
def test_find_network_picks_the_one_network_a_file_defines(tmp_path, source, found):
    path = tmp_path / "net.py"
    path.write_text(source)
    assert find_network(path) == f"{path}:{found}"


@pytest.mark.parametrize("source, message", [
    (network(name="LogitsNet", top="class Backbone(nn.Module):\n    pass\n"),
     "defines 2 networks (Backbone, LogitsNet): name the one"),
    (network(name="Net").replace("width=8", "width"), "defines no network that builds without arguments "
                                                       "(it defines Net)"),
])
def test_find_network_lists_what_a_file_defines_when_it_cannot_choose(tmp_path, source, message):
    path = tmp_path / "net.py"
    path.write_text(source)
    with pytest.raises(ModelError, match=message.replace("(", r"\(").replace(")", r"\)")):
        find_network(path)
