"""The whole network one nn.Sequential, transitions a max-pool alone, and a softmax at the end:
it returns probabilities."""
import torch.nn as nn


def Net():
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 16, 3, padding=2, dilation=2), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.Dropout(0.1), nn.Conv2d(16, 16, 1), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(16 * 4 * 4, 10), nn.Softmax(dim=1),
    )
