"""The common student layout: nn.Sequential blocks named convblockN, transitions named MPN
(max-pool, then a 1x1 conv), a 1x1-conv classifier after global average pooling, log-softmax."""
import torch.nn as nn
import torch.nn.functional as F

dropout_value = 0.05


def unit(cin, cout, **conv_args):
    return [nn.Conv2d(cin, cout, bias=False, **conv_args), nn.ReLU(), nn.BatchNorm2d(cout), nn.Dropout(dropout_value)]


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.convblock1 = nn.Sequential(*unit(3, 8, kernel_size=3, padding=1),
                                        *unit(8, 16, kernel_size=3, padding=1))          # 32
        self.MP1 = nn.Sequential(nn.MaxPool2d(2, 2), nn.Conv2d(16, 8, 1, bias=False))    # 16
        self.convblock2 = nn.Sequential(*unit(8, 16, kernel_size=3, padding=2, dilation=2),
                                        *unit(16, 16, kernel_size=3, padding=1))
        self.MP2 = nn.Sequential(nn.MaxPool2d(2, 2), nn.Conv2d(16, 8, 1, bias=False))    # 8
        self.convblock3 = nn.Sequential(
            nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 16, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.MP3 = nn.Sequential(nn.MaxPool2d(2, 2), nn.Conv2d(16, 16, 1, bias=False))   # 4
        self.gap = nn.Sequential(nn.AvgPool2d(kernel_size=4))
        self.convblock4 = nn.Sequential(nn.Conv2d(16, 10, 1, bias=False))

    def forward(self, x):
        x = self.MP1(self.convblock1(x))
        x = self.MP2(self.convblock2(x))
        x = self.MP3(self.convblock3(x))
        x = self.convblock4(self.gap(x))
        return F.log_softmax(x.view(-1, 10), dim=-1)
