"""Two max-pools in a row after the first block: T2 follows T1 with no conv block between."""
import torch.nn as nn
import torch.nn.functional as F


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.convblock1 = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(),
                                        nn.Conv2d(16, 16, 3, padding=2, dilation=2), nn.ReLU())
        self.pool1 = nn.MaxPool2d(2)
        self.pool2 = nn.MaxPool2d(2)
        self.convblock2 = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.Conv2d(16, 32, 1), nn.ReLU())
        self.pool3 = nn.MaxPool2d(2)
        self.convblock3 = nn.Conv2d(32, 10, 1)

    def forward(self, x):
        x = self.pool2(self.pool1(self.convblock1(x)))
        x = self.pool3(self.convblock2(x))
        return F.log_softmax(self.convblock3(x).mean((2, 3)), dim=1)
