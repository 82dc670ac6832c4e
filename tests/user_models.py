"""A network of the kind users bring: a residual addition, a concatenation and a depthwise
separable conv, built by a factory given as ``model: {import: "tests.user_models:small_net"}``.
"""

from __future__ import annotations

import torch
from torch import nn


def _cbr(c_in: int, c_out: int, k: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, k, stride, k // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class SmallNet(nn.Module):
    """stem -> residual block -> two branches concatenated -> depthwise separable -> head."""

    def __init__(self, num_classes: int, width: int = 16):
        super().__init__()
        w = width
        self.stem = _cbr(3, w)
        self.res_a = _cbr(w, w)
        self.res_b = nn.Sequential(nn.Conv2d(w, w, 3, 1, 1, bias=False), nn.BatchNorm2d(w))
        self.left = _cbr(w, w, stride=2)
        self.right = _cbr(w, w, k=1, stride=2)
        self.depthwise = _cbr(2 * w, 2 * w, groups=2 * w)
        self.pointwise = _cbr(2 * w, 2 * w, k=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = torch.relu(x + self.res_b(self.res_a(x)))
        x = torch.cat([self.left(x), self.right(x)], dim=1)
        x = self.pointwise(self.depthwise(x))
        return self.fc(torch.flatten(self.pool(x), 1))


def small_net(num_classes: int = 10, width: int = 16) -> nn.Module:
    """The user model of the method matrix (tests/test_any_network.py)."""
    return SmallNet(num_classes, width)
