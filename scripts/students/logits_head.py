"""A student-style network (written for this project): residual blocks, a max-pool with a 1x1 conv after it per
transition, global average pooling (works at any size) and a 1x1 classifier that returns logits, with no
log_softmax (PyTorch's convention; the project's loss takes them as they are). Used by docs/experiments.md
("Students' networks under `fast`")."""
import torch.nn as nn
import torch.nn.functional as F


class Res(nn.Module):
    def __init__(self, c, dilation=1, separable=False):
        super().__init__()
        if separable:
            self.conv1 = nn.Sequential(nn.Conv2d(c, c, 3, padding=1, groups=c, bias=False), nn.Conv2d(c, c, 1, bias=False))
        else:
            self.conv1 = nn.Conv2d(c, c, 3, padding=dilation, dilation=dilation, bias=False)
        self.bn1, self.conv2, self.bn2 = nn.BatchNorm2d(c), nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)

    def forward(self, x):
        return F.relu(x + self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU())
        self.layer1 = Res(32)
        self.down1 = nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(32, 64, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU())
        self.layer2 = Res(64, dilation=2)
        self.down2 = nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(64, 128, 1, bias=False), nn.BatchNorm2d(128), nn.ReLU())
        self.layer3 = Res(128, separable=True)
        self.down3 = nn.MaxPool2d(2)
        self.head = nn.Conv2d(128, 10, 1)

    def forward(self, x):
        x = self.down1(self.layer1(self.stem(x)))
        x = self.down2(self.layer2(x))
        x = self.down3(self.layer3(x))
        return self.head(F.adaptive_avg_pool2d(x, 1)).flatten(1)
