"""A depthwise conv with a channel multiplier of 2 (16 -> 32, groups=16), BatchNorm and ReLU,
then the 1x1 conv: depthwise-separable."""
import torch.nn as nn
import torch.nn.functional as F


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.layer1 = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.BatchNorm2d(16))
        self.pool1 = nn.MaxPool2d(2, 2)
        self.layer2 = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.Conv2d(16, 16, 1),
                                    nn.ReLU(), nn.BatchNorm2d(16))
        self.pool2 = nn.MaxPool2d(2, 2)
        self.layer3 = nn.Sequential(nn.Conv2d(16, 32, 3, padding=1, groups=16, bias=False), nn.BatchNorm2d(32),
                                    nn.ReLU(), nn.Conv2d(32, 32, 1, bias=False), nn.ReLU(),
                                    nn.Conv2d(32, 32, 3, padding=2, dilation=2), nn.ReLU())
        self.pool3 = nn.MaxPool2d(2, 2)
        self.classifier = nn.Linear(32, 10)

    def forward(self, x):
        x = self.pool3(self.layer3(self.pool2(self.layer2(self.pool1(self.layer1(x))))))
        return F.log_softmax(self.classifier(x.mean((2, 3))), dim=1)
