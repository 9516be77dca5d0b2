"""A student-style network (written for this project): attributes conv1 ... conv7 and one MaxPool2d module
called three times, then flatten and an nn.Linear sized for the 4x4 maps of 32 px images (at 16 px its input
is 4x smaller and the multiplication fails). Logits output, as PyTorch users write it. Used by
docs/experiments.md ("Students' networks under `fast`")."""
import torch.nn as nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()

        def conv(cin, cout, **kw):
            return nn.Sequential(nn.Conv2d(cin, cout, 3, bias=False, **kw), nn.BatchNorm2d(cout), nn.ReLU())

        self.conv1 = conv(3, 32, padding=1)
        self.conv2 = conv(32, 64, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.conv3 = conv(64, 64, padding=2, dilation=2)
        self.conv4 = conv(64, 96, padding=1)
        self.dw = nn.Conv2d(96, 96, 3, padding=1, groups=96, bias=False)
        self.pw = nn.Sequential(nn.Conv2d(96, 128, 1, bias=False), nn.BatchNorm2d(128), nn.ReLU())
        self.conv6 = conv(128, 64, padding=1)
        self.fc = nn.Linear(64 * 4 * 4, 10)

    def forward(self, x):
        x = self.pool(self.conv2(self.conv1(x)))      # 16
        x = self.pool(self.conv4(self.conv3(x)))      # 8
        x = self.pool(self.pw(self.dw(x)))            # 4
        return self.fc(self.conv6(x).flatten(1))
