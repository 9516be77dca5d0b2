"""padding=1 written on every conv, the 1x1 ones too: each 1x1 conv grows the map by 2 px inside
its block, and the pools then halve whatever size they get."""
import torch.nn as nn
import torch.nn.functional as F


def conv(cin, cout, k, **kw):
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=kw.pop("padding", 1), bias=False, **kw),
                         nn.BatchNorm2d(cout), nn.ReLU())


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.convblock1 = nn.Sequential(conv(3, 16, 3), conv(16, 16, 1))                 # 32 -> 34
        self.pool1 = nn.MaxPool2d(2, 2)                                                   # 17
        self.convblock2 = nn.Sequential(conv(16, 16, 3, padding=2, dilation=2), conv(16, 16, 1))  # 19
        self.pool2 = nn.MaxPool2d(2, 2)                                                   # 9
        self.convblock3 = nn.Sequential(conv(16, 16, 3, groups=16), conv(16, 16, 1))     # 11
        self.pool3 = nn.MaxPool2d(2, 2)                                                   # 5
        self.convblock4 = nn.Sequential(nn.Conv2d(16, 10, 1, padding=1))                 # 7
        self.gap = nn.AdaptiveAvgPool2d(1)

    def forward(self, x):
        x = self.pool1(self.convblock1(x))
        x = self.pool2(self.convblock2(x))
        x = self.pool3(self.convblock3(x))
        return F.log_softmax(self.gap(self.convblock4(x)).view(-1, 10), dim=-1)
