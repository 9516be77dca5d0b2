"""Every layer a plain attribute conv1 ... conv7, ReLU and max-pool as functions in forward(); one
3x3 stride-1 max-pool smooths the first maps, its padding keeping them 32x32."""
import torch.nn as nn
import torch.nn.functional as F


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.conv3 = nn.Conv2d(16, 16, 3, padding=2, dilation=2)
        self.conv4 = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.conv5 = nn.Conv2d(16, 24, 1)
        self.conv6 = nn.Conv2d(24, 24, 3, padding=1)
        self.conv7 = nn.Conv2d(24, 10, 1)

    def forward(self, x):
        x = F.relu(self.conv2(F.relu(self.conv1(x))))
        x = F.max_pool2d(x, 3, stride=1, padding=1)
        x = F.max_pool2d(x, 2)
        x = F.relu(self.conv3(x))
        x = F.max_pool2d(x, 2)
        x = F.relu(self.conv5(F.relu(self.conv4(x))))
        x = F.relu(self.conv6(x))
        x = F.max_pool2d(x, kernel_size=2, stride=2)
        x = self.conv7(x).mean(dim=(2, 3))
        return F.log_softmax(x, dim=1)
