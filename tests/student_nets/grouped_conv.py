"""A grouped conv (4 groups over 16 channels) before a 1x1 conv: grouped, not depthwise."""
import torch.nn as nn
import torch.nn.functional as F


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU())
        self.conv2 = nn.Sequential(nn.Conv2d(16, 16, 3, padding=2, dilation=2), nn.ReLU())
        self.conv3 = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, groups=4), nn.Conv2d(16, 16, 1), nn.ReLU())
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Conv2d(16, 10, 4)   # a 4x4 conv over the last 4x4 map as classifier

    def forward(self, x):
        x = self.pool(self.conv1(x))
        x = self.pool(self.conv2(x))
        x = self.pool(self.conv3(x))
        return F.log_softmax(self.fc(x).view(-1, 10), dim=-1)
