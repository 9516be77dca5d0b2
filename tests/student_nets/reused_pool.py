"""One MaxPool2d module called three times, a 1x1 conv before each pool (EVA style), blocks
named convblockN / poolN, a Linear classifier returning logits."""
import torch.nn as nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.convblock1 = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                        nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.convblock2 = nn.Sequential(nn.Conv2d(16, 8, 1))
        self.pool = nn.MaxPool2d(2, 2)
        self.convblock3 = nn.Sequential(nn.Conv2d(8, 16, 3, padding=2, dilation=2), nn.BatchNorm2d(16), nn.ReLU())
        self.convblock4 = nn.Sequential(nn.Conv2d(16, 8, 1))
        self.convblock5 = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.ReLU(),
                                        nn.Conv2d(8, 16, 1), nn.BatchNorm2d(16), nn.ReLU())
        self.convblock6 = nn.Sequential(nn.Conv2d(16, 16, 1))
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = self.pool(self.convblock2(self.convblock1(x)))
        x = self.pool(self.convblock4(self.convblock3(x)))
        x = self.pool(self.convblock6(self.convblock5(x)))
        return self.fc(self.gap(x).flatten(1))
