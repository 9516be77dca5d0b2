"""Between the second and third pool only 1x1 convs run: that stage mixes channels but looks at
no neighbouring pixels, so it is no conv block."""
import torch.nn as nn
import torch.nn.functional as F


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.convblock1 = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU())
        self.transblock1 = nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(16, 16, 1))
        self.convblock2 = nn.Sequential(nn.Conv2d(16, 16, 3, padding=2, dilation=2), nn.ReLU(),
                                        nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.Conv2d(16, 16, 1))
        self.transblock2 = nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(16, 16, 1))
        self.convblock3 = nn.Sequential(nn.Conv2d(16, 32, 1), nn.ReLU(), nn.Conv2d(32, 16, 1), nn.ReLU())
        self.transblock3 = nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(16, 10, 1))

    def forward(self, x):
        x = self.transblock1(self.convblock1(x))
        x = self.transblock2(self.convblock2(x))
        x = self.transblock3(self.convblock3(x))
        return F.log_softmax(F.adaptive_avg_pool2d(x, 1).flatten(1), dim=1)
