"""Networks of the kind users bring, built by factories given as
``model: {import: "tests.user_models:small_net"}``: residual additions, concatenations
(a dense block's conv output beside its input), depthwise convs, a squeeze-excite gate,
and a head that hard-codes its channel count.
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


class Gate(nn.Module):
    """Squeeze-and-excite: the input times a per-channel gate computed from it."""

    def __init__(self, c: int, reduction: int = 4):
        super().__init__()
        self.squeeze = nn.Conv2d(c, c // reduction, 1)
        self.excite = nn.Conv2d(c // reduction, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = torch.relu(self.squeeze(x.mean((2, 3), keepdim=True)))
        return x * torch.sigmoid(self.excite(s))


class DenseGateNet(nn.Module):
    """stem -> [conv(x), x] concatenated (a dense block) -> depthwise conv -> gate ->
    pointwise conv -> residual addition -> head."""

    def __init__(self, num_classes: int, width: int = 16):
        super().__init__()
        w = width
        self.stem = _cbr(3, w)
        self.dense = _cbr(w, w)
        self.depthwise = _cbr(2 * w, 2 * w, groups=2 * w)
        self.gate = Gate(2 * w)
        self.pointwise = _cbr(2 * w, 2 * w, k=1)
        self.res = _cbr(2 * w, 2 * w)
        self.fc = nn.Linear(2 * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = torch.cat([self.dense(x), x], dim=1)
        x = self.pointwise(self.gate(self.depthwise(x)))
        x = x + self.res(x)
        return self.fc(x.mean((2, 3)))


def dense_gate_net(num_classes: int = 10, width: int = 16) -> nn.Module:
    """A user model with a dense block, a depthwise conv, a gate and a residual addition."""
    return DenseGateNet(num_classes, width)


class FixedHead(nn.Module):
    """Reads its input as exactly ``channels`` channels: a layer no pruning can follow."""

    def __init__(self, channels: int, num_classes: int):
        super().__init__()
        self.channels = channels
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.reshape(x.shape[0], self.channels, x.shape[2] * x.shape[3]).mean(2))


def fixed_head_net(num_classes: int = 10, width: int = 16) -> nn.Module:
    """Convs whose channel count the head hard-codes: channel removal breaks it there."""
    return nn.Sequential(_cbr(3, width), _cbr(width, width), FixedHead(width, num_classes))
