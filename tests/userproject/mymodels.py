"""A researcher's own model code, as landscape meets it: a module with a factory function."""

import torch
from torch import nn


class Net(nn.Module):
    """A small 1-D CNN with BatchNorm for MNIST-1D signals of shape (N, 1, 40)."""

    def __init__(self, width: int = 16, classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv1d(1, width, 5, stride=2, padding=1), nn.BatchNorm1d(width), nn.ReLU(),
            nn.Conv1d(width, width, 5, stride=2, padding=1), nn.BatchNorm1d(width), nn.ReLU(),
        )
        self.head = nn.Linear(width * 9, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


def net(width: int = 16) -> nn.Module:
    return Net(width)


class ImageNet(nn.Module):
    """Expects 3-channel images: given 1-D signals it must fail before any point is scored."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).mean(dim=(2, 3)))
