"""Model registry: ``build(name, num_classes, **kw)``, ``list_models(pattern)``.

CIFAR-style models take a ``width`` multiplier on every layer. Layers carry names
(``conv0``, ``bn0``, ``pool1`` ...) so methods and figures can address them.

Besides the registry, ``build`` takes models from elsewhere (see
:func:`model_source_help`, implemented in :mod:`prune_core._model_sources`):
``torchvision:<name>``, ``timm:<name>`` and ``import:<module.path>:<factory>``, each
with an optional ``weights`` file that is loaded strictly by :func:`load_weights`.
"""

from __future__ import annotations

import fnmatch
import inspect
import warnings
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from prune_core._io import safe_load
from prune_core._model_sources import (
    MAX_LISTED,
    SOURCES,
    ModelError,
    build_from_source,
    model_source,
    model_source_help,
    source_doc,
)

_MODELS: dict[str, Callable[..., nn.Module]] = {}
_DOCS: dict[str, str] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register a factory under its function name (underscores become dashes: none here)."""
    name = fn.__name__
    _MODELS[name] = fn
    _DOCS[name] = (fn.__doc__ or "").strip().splitlines()[0]
    return fn


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell-style wildcard."""
    return sorted(n for n in _MODELS if fnmatch.fnmatch(n, pattern))


def model_doc(name: str) -> str:
    """One line about a registered model or a ``<source>:...`` name."""
    return _DOCS[name] if model_source(name) is None else source_doc(name)


def model_kwargs(name: str) -> list[str] | None:
    """Keyword arguments a registered model factory accepts besides ``num_classes``.

    None for ``<source>:...`` names: their arguments are free-form, passed on to the
    source's constructor and checked when the model is built.
    """
    if model_source(name) is not None:
        return None
    if name not in _MODELS:
        raise ModelError(f"unknown model {name!r}; valid names: {', '.join(list_models())}")
    sig = inspect.signature(_MODELS[name])
    return [p for p in sig.parameters if p != "num_classes"]


def build(name: str, num_classes: int = 10, **kw) -> nn.Module:
    """Build a registered or ``<source>:...`` model; mistakes raise ``ModelError``."""
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ModelError(f"num_classes must be a positive integer; got {num_classes!r}")
    source = model_source(name) if isinstance(name, str) else None
    if source is not None:
        weights = kw.pop("weights", None)
        model = build_from_source(name, num_classes, kw)
        return load_weights(model, weights, name) if weights is not None else model
    if name not in _MODELS:
        raise ModelError(f"unknown model {name!r}; valid names: {', '.join(list_models())}; "
                         f"or one of {', '.join(s + ':' for s in SOURCES)} "
                         "(see prune-study models)")
    allowed = model_kwargs(name)
    bad = sorted(set(kw) - set(allowed))
    if bad:
        raise ModelError(
            f"model {name!r} does not take {', '.join(bad)}; it takes: {', '.join(allowed)}",
            key=bad[0],
        )
    if "width" in kw and not (isinstance(kw["width"], int | float) and 0 < kw["width"] <= 4):
        raise ModelError(f"model.width must be in (0, 4]; got {kw['width']!r}", key="width")
    return _MODELS[name](num_classes=num_classes, **kw)


def _scaled(c: int, width: float) -> int:
    return max(1, int(round(c * width)))


# --------------------------------------------------------------------------- VGG (CIFAR)

VGG_CFGS: dict[str, list[int | str]] = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512],
    "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
              512, 512, 512, 512],
}


class VGG(nn.Module):
    """CIFAR VGG with BatchNorm and one linear classifier, as in Network Slimming.

    The last block has no max-pool; a global average pool feeds the classifier
    (at 32x32 input this is the 2x2 average pool of the original).
    """

    def __init__(self, cfg: list[int | str], num_classes: int, width: float = 1.0,
                 in_channels: int = 3):
        super().__init__()
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        c_in, i, p = in_channels, 0, 0
        for v in cfg:
            if v == "M":
                layers[f"pool{p}"] = nn.MaxPool2d(2)
                p += 1
                continue
            c = _scaled(int(v), width)
            layers[f"conv{i}"] = nn.Conv2d(c_in, c, 3, padding=1, bias=False)
            layers[f"bn{i}"] = nn.BatchNorm2d(c)
            layers[f"relu{i}"] = nn.ReLU()
            c_in, i = c, i + 1
        self.features = nn.Sequential(layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c_in, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 0.5)  # as in Network Slimming
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


@register_model
def vgg11(num_classes: int = 10, width: float = 1.0) -> nn.Module:
    """CIFAR VGG-11 with BN and one linear layer."""
    return VGG(VGG_CFGS["vgg11"], num_classes, width)


@register_model
def vgg13(num_classes: int = 10, width: float = 1.0) -> nn.Module:
    """CIFAR VGG-13 with BN and one linear layer."""
    return VGG(VGG_CFGS["vgg13"], num_classes, width)


@register_model
def vgg16(num_classes: int = 10, width: float = 1.0) -> nn.Module:
    """CIFAR VGG-16 with BN and one linear layer (14.72 M params at width 1)."""
    return VGG(VGG_CFGS["vgg16"], num_classes, width)


@register_model
def vgg19(num_classes: int = 10, width: float = 1.0) -> nn.Module:
    """CIFAR VGG-19 with BN and one linear layer."""
    return VGG(VGG_CFGS["vgg19"], num_classes, width)


# --------------------------------------------------------------------------- C^3(k) (RePr)


class C3(nn.Module):
    """RePr's vanilla CNN C^3(k): three 3x3 conv layers of k filters, each with ReLU and
    2x2 max-pool, then one linear classifier."""

    def __init__(self, num_classes: int, k: int = 32, in_channels: int = 3):
        super().__init__()
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        c_in = in_channels
        for i in range(3):
            layers[f"conv{i}"] = nn.Conv2d(c_in, k, 3, padding=1)
            layers[f"relu{i}"] = nn.ReLU()
            layers[f"pool{i}"] = nn.MaxPool2d(2)
            c_in = k
        self.features = nn.Sequential(layers)
        self.avgpool = nn.AdaptiveAvgPool2d(4)  # 4x4 at 32x32 input: a no-op there
        self.classifier = nn.Linear(k * 16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


@register_model
def c3(num_classes: int = 10, k: int = 32) -> nn.Module:
    """RePr's C^3(k): three conv layers of k filters (k=32 by default)."""
    if not isinstance(k, int) or k < 1:
        raise ModelError(f"model.k must be a positive integer; got {k!r}")
    return C3(num_classes, k)


# --------------------------------------------------------------------------- ResNet (CIFAR)


class BasicBlock(nn.Module):
    """Two 3x3 convs with BN and an identity or 1x1 projection shortcut."""
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu2 = nn.ReLU()
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            # projection shortcut (option B): keeps the graph traceable for channel removal
            self.shortcut = nn.Sequential(
                OrderedDict(conv=nn.Conv2d(c_in, c_out, 1, stride, bias=False),
                            bn=nn.BatchNorm2d(c_out))
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32x32 inputs (He et al. 2016, section 4.2)."""

    def __init__(self, depth: int, num_classes: int, width: float = 1.0):
        super().__init__()
        if (depth - 2) % 6:
            raise ModelError(f"CIFAR ResNet depth must be 6n+2; got {depth}")
        n = (depth - 2) // 6
        widths = [_scaled(c, width) for c in (16, 32, 64)]
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU()
        stages, c_in = [], widths[0]
        for s, c in enumerate(widths):
            blocks = []
            for b in range(n):
                blocks.append(BasicBlock(c_in, c, 2 if (b == 0 and s > 0) else 1))
                c_in = c
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c_in, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.classifier(torch.flatten(self.avgpool(x), 1))


@register_model
def resnet20(num_classes: int = 10, width: float = 1.0) -> nn.Module:
    """CIFAR ResNet-20."""
    return CifarResNet(20, num_classes, width)


@register_model
def resnet56(num_classes: int = 10, width: float = 1.0) -> nn.Module:
    """CIFAR ResNet-56."""
    return CifarResNet(56, num_classes, width)


# --------------------------------------------------------------------------- torchvision


def load_weights(model: nn.Module, weights: str | Path, name: str) -> nn.Module:
    """Load a local state dict into ``model`` strictly (in place).

    Every missing, unexpected or mis-shaped tensor is an error, except the classifier
    (the last linear layer) with another number of outputs: it stays freshly initialised,
    with a warning. A ``{"state_dict": ...}`` wrapper and ``module.`` prefixes
    (DataParallel) are accepted. The file is read with ``weights_only=True``.
    """
    path = Path(weights).expanduser()
    if not path.is_file():
        raise ModelError(
            f"model.weights {str(path)!r} for {name!r} is not a file; download the weights "
            f"on a machine with internet and give their local path", key="weights"
        )

    state = safe_load(path)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor)
                                              for v in state.values()):
        raise ModelError(f"model.weights {str(path)!r} is not a state dict (a mapping of "
                         f"tensor names to tensors)", key="weights")
    if state and all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}

    own = model.state_dict()
    try:
        head = classifier_name(model)
    except ModelError:
        head = None
    # A model with another number of classes keeps its fresh classifier: the usual case
    # of ImageNet weights fine-tuned to a smaller dataset.
    fresh = [k for k in (f"{head}.weight", f"{head}.bias")
             if head is not None and k in own and k in state
             and state[k].shape != own[k].shape and state[k].shape[1:] == own[k].shape[1:]]
    # BatchNorm's step counter is absent from older torchvision files and unused in eval.
    missing = [f"missing {k}" for k in own
               if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [f"unexpected {k}" for k in state if k not in own]
    shapes = [f"{k} has shape {tuple(state[k].shape)} in the file, {tuple(own[k].shape)} in "
              f"the model" for k in own
              if k in state and k not in fresh and state[k].shape != own[k].shape]
    wrong = missing + unexpected + shapes
    if wrong:
        more = f"; ... and {len(wrong) - MAX_LISTED} more" if len(wrong) > MAX_LISTED else ""
        raise ModelError(
            f"model.weights {str(path)!r} does not fit {name!r} ({len(wrong)} tensor"
            f"{'s' if len(wrong) != 1 else ''} wrong): {'; '.join(wrong[:MAX_LISTED])}{more}",
            key="weights",
        )
    if fresh:
        shape = tuple(state[f"{head}.weight"].shape) if f"{head}.weight" in state else \
            tuple(state[fresh[0]].shape)
        warnings.warn(
            f"model.weights {str(path)!r}: {head}.weight/bias of shape {shape} replaced: the "
            f"data has {own[fresh[0]].shape[0]} classes, so {name!r} keeps a freshly "
            f"initialised classifier", stacklevel=2,
        )
    model.load_state_dict({k: v for k, v in state.items() if k not in fresh}, strict=False)
    return model


@register_model
def vgg16_bn(num_classes: int = 1000, weights: str | None = None) -> nn.Module:
    """torchvision VGG-16 with BN for 224-pixel data; ImageNet weights from a local file."""
    from torchvision.models import vgg16_bn as tv

    model = tv(weights=None, num_classes=num_classes)
    return load_weights(model, weights, "vgg16_bn") if weights is not None else model


@register_model
def resnet18(num_classes: int = 1000, weights: str | None = None) -> nn.Module:
    """torchvision ResNet-18 for 224-pixel data; ImageNet weights from a local file."""
    from torchvision.models import resnet18 as tv

    model = tv(weights=None, num_classes=num_classes)
    return load_weights(model, weights, "resnet18") if weights is not None else model


# --------------------------------------------------------------------------- helpers


def classifier_name(model: nn.Module) -> str:
    """Qualified name of the model's last linear layer."""
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not names:
        raise ModelError(f"{type(model).__name__} has no linear classifier")
    return names[-1]


def replace_classifier(model: nn.Module, num_classes: int) -> nn.Module:
    """Give the model a fresh last linear layer with ``num_classes`` outputs (in place)."""
    name = classifier_name(model)
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    old: nn.Linear = getattr(parent, attr)
    new = nn.Linear(old.in_features, num_classes, bias=old.bias is not None)
    setattr(parent, attr, new.to(old.weight.device))
    return model


__all__ = [
    "MAX_LISTED", "SOURCES", "VGG", "VGG_CFGS", "BasicBlock", "C3", "CifarResNet",
    "ModelError", "build", "c3", "classifier_name", "list_models", "load_weights",
    "model_doc", "model_kwargs", "model_source", "model_source_help",
    "register_model", "replace_classifier", "resnet18", "resnet20", "resnet56", "vgg11",
    "vgg13", "vgg16", "vgg16_bn", "vgg19",
]
