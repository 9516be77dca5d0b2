"""A student-style network (written for this project): nn.Sequential blocks named convblockN, a max-pool and a
1x1 conv per transition, and a head that pools with a fixed nn.AvgPool2d(4), sized for 32 px images (the
maps are 4x4 there; at the 16 px of a resizing recipe's first epoch they are 2x2 and the pool fails).
Log-softmax output. Used by docs/experiments.md ("Students' networks under `fast`")."""
import torch.nn as nn
import torch.nn.functional as F

dropout_value = 0.05


def unit(cin, cout, **conv):
    return [nn.Conv2d(cin, cout, 3, bias=False, **conv), nn.ReLU(), nn.BatchNorm2d(cout), nn.Dropout(dropout_value)]


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.convblock1 = nn.Sequential(*unit(3, 32, padding=1), *unit(32, 64, padding=1))           # 32
        self.transblock1 = nn.Sequential(nn.MaxPool2d(2, 2), nn.Conv2d(64, 32, 1, bias=False))      # 16
        self.convblock2 = nn.Sequential(*unit(32, 64, padding=2, dilation=2), *unit(64, 64, padding=1))
        self.transblock2 = nn.Sequential(nn.MaxPool2d(2, 2), nn.Conv2d(64, 64, 1, bias=False))      # 8
        self.convblock3 = nn.Sequential(
            nn.Conv2d(64, 64, 3, padding=1, groups=64, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
            nn.Conv2d(64, 128, 1, bias=False), nn.BatchNorm2d(128), nn.ReLU(), *unit(128, 128, padding=1))
        self.transblock3 = nn.Sequential(nn.MaxPool2d(2, 2))                                          # 4
        self.convblock4 = nn.Sequential(*unit(128, 128, padding=1))
        self.gap = nn.AvgPool2d(kernel_size=4)
        self.out = nn.Conv2d(128, 10, 1, bias=False)

    def forward(self, x):
        x = self.transblock1(self.convblock1(x))
        x = self.transblock2(self.convblock2(x))
        x = self.convblock4(self.transblock3(self.convblock3(x)))
        return F.log_softmax(self.out(self.gap(x)).view(-1, 10), dim=-1)
