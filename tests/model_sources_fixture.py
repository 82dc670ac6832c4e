"""Factories for the ``import:`` model form, used by tests/test_model_sources.py."""

from __future__ import annotations

from torch import nn

NOT_A_FACTORY = 3


def tiny_net(num_classes: int = 10, width: int = 4) -> nn.Module:
    """Two convs of ``width`` filters and a linear classifier."""
    return nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
        nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes),
    )


def no_num_classes(width: int = 4) -> nn.Module:
    return tiny_net(10, width)


def returns_a_dict(num_classes: int = 10) -> dict:
    return {"num_classes": num_classes}


def broken(num_classes: int = 10) -> nn.Module:
    raise RuntimeError("the user's factory fails")
