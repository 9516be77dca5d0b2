"""A depthwise conv whose output goes straight into a full 3x3 conv: depthwise, but not separable."""
import torch.nn as nn
import torch.nn.functional as F


class Separable(nn.Module):
    """Named so, but the conv after the depthwise one is a 3x3."""

    def __init__(self, cin, cout):
        super().__init__()
        self.dw = nn.Conv2d(cin, cin, 3, padding=1, groups=cin, bias=False)
        self.bn = nn.BatchNorm2d(cin)
        self.conv = nn.Conv2d(cin, cout, 3, padding=1, bias=False)

    def forward(self, x):
        return self.conv(F.relu(self.bn(self.dw(x))))


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU())
        self.t1 = nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(16, 16, 1))
        self.c2 = nn.Sequential(nn.Conv2d(16, 16, 3, padding=2, dilation=2), nn.ReLU())
        self.t2 = nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(16, 16, 1))
        self.x = Separable(16, 16)
        self.t3 = nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(16, 16, 1))
        self.out = nn.Linear(16 * 4 * 4, 10)

    def forward(self, x):
        x = self.t3(self.x(self.t2(self.c2(self.t1(self.c1(x))))))
        return F.log_softmax(self.out(x.flatten(1)), dim=1)
