"""Networks from outside the registry: ``torchvision:<name>``, ``timm:<name>`` and
``import:<module.path>:<factory>`` model names.

:func:`prune_core.models.build` hands such a name here (and loads its optional
``weights`` file itself); :func:`model_source_help` says how to write one.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import os
import re
import sys
from collections.abc import Callable

from torch import nn

from prune_core.errors import InputError

SOURCES = ("torchvision", "timm", "import")  # `<source>:...` model names
MAX_LISTED = 10  # names listed in an error before "... and N more"


class ModelError(InputError):
    """A model cannot be built as asked; ``key`` names the argument at fault, if one is."""

    def __init__(self, message: str, *, key: str | None = None):
        super().__init__(message)
        self.key = key


def model_source(name: str) -> str | None:
    """``torchvision``, ``timm`` or ``import`` for a ``<source>:...`` name, else None."""
    source, colon, _ = name.partition(":")
    return source if colon and source in SOURCES else None


def source_doc(name: str) -> str:
    """One line about a ``<source>:...`` model name."""
    source = model_source(name)
    if source is None:
        raise ValueError(f"{name!r} is not a <source>:... model name")
    rest = name.partition(":")[2]
    return {
        "torchvision": f"torchvision classification model {rest!r} (torchvision.models.get_model)",
        "timm": f"timm model {rest!r} (timm.create_model)",
        "import": f"the model returned by {rest!r} (called with num_classes and kwargs)",
    }[source]


def model_source_help() -> str:
    """How to give a model that is not in the registry (``prune-study models`` prints it)."""
    return (
        "Models from elsewhere, as model.name in a spec (every other key goes to the "
        "constructor):\n"
        "  torchvision:<name>  any torchvision classification model, built by\n"
        "                      torchvision.models.get_model(name, weights=None, num_classes=N,"
        " **kw),\n"
        "                      e.g. {name: 'torchvision:mobilenet_v2', width_mult: 0.5}; valid "
        "names:\n"
        "                      torchvision.models.list_models(module=torchvision.models)\n"
        "  timm:<name>         timm.create_model(name, pretrained=False, num_classes=N, **kw), "
        "e.g.\n"
        "                      'timm:resnet10t' (pip install 'prune-study[timm]')\n"
        "  import:<module>:<factory>\n"
        "                      your own network: factory(num_classes=N, **kwargs) returning an\n"
        "                      nn.Module; in a spec {import: 'mypkg.nets:small_net', kwargs: "
        "{width: 8}}.\n"
        "                      The module must be importable from the working directory or "
        "PYTHONPATH.\n"
        "  weights: <file>     a local state dict (also for vgg16_bn and resnet18), loaded "
        "strictly:\n"
        "                      every missing, unexpected or mis-shaped tensor is an error, "
        "except a\n"
        "                      classifier with another number of classes, which starts fresh."
    )


def build_from_source(name: str, num_classes: int, kw: dict) -> nn.Module:
    """Build a ``<source>:...`` model with ``num_classes`` outputs; ``kw`` go to its
    constructor. Mistakes raise ``ModelError``."""
    source = model_source(name)
    if source is None:
        raise ValueError(f"{name!r} is not a <source>:... model name")
    builder = {"torchvision": _build_torchvision, "timm": _build_timm,
               "import": _build_import}[source]
    return builder(name.partition(":")[2], num_classes, kw)


def _unexpected_key(e: TypeError, kw: dict) -> str | None:
    """The keyword a constructor refused, from its TypeError, if that is what it says."""
    m = re.search(r"unexpected keyword argument '(\w+)'", str(e))
    return m.group(1) if m and m.group(1) in kw else None


def _near(name: str, names: list[str]) -> str:
    close = difflib.get_close_matches(name, names, n=3)
    return f" (did you mean {', '.join(close)}?)" if close else ""


def _build_torchvision(name: str, num_classes: int, kw: dict) -> nn.Module:
    import torchvision.models as tvm

    valid = tvm.list_models(module=tvm)  # classification models only
    if name not in valid:
        raise ModelError(
            f"unknown torchvision classification model {name!r}{_near(name, valid)}; "
            f"the valid names are torchvision.models.list_models(module=torchvision.models), "
            f"e.g. resnet18, mobilenet_v2, efficientnet_b0, convnext_tiny")
    return _construct(f"torchvision:{name}", kw, lambda: tvm.get_model(
        name, weights=None, num_classes=num_classes, **kw))


def _build_timm(name: str, num_classes: int, kw: dict) -> nn.Module:
    try:
        import timm
    except ImportError as e:
        raise ModelError(f"model 'timm:{name}' needs timm, which is not installed: "
                         "pip install 'prune-study[timm]'") from e
    if not timm.is_model(name):
        raise ModelError(f"unknown timm model {name!r}{_near(name, timm.list_models())}; "
                         "the valid names are timm.list_models()")
    return _construct(f"timm:{name}", kw, lambda: timm.create_model(
        name, pretrained=False, num_classes=num_classes, **kw))


def _construct(model: str, kw: dict, make: Callable[[], nn.Module]) -> nn.Module:
    """``make()``, with a keyword the constructor refuses reported as a ``ModelError``."""
    try:
        return make()
    except TypeError as e:
        key = _unexpected_key(e, kw)
        if key is None:
            raise
        raise ModelError(f"model {model!r} does not take {key!r} ({e})", key=key) from e


def _import_module(module: str, where: str):
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        ours = e.name is not None and (module == e.name or module.startswith(e.name + "."))
        if not ours:  # the module itself imports something missing
            raise ModelError(f"importing {module!r} for {where!r} failed: {e}") from e
        # Like `python -m`, look in the working directory too: the `prune-study` script
        # does not put it on sys.path.
        if os.getcwd() not in sys.path:
            sys.path.append(os.getcwd())
            importlib.invalidate_caches()
            return _import_module(module, where)
        raise ModelError(
            f"cannot import module {module!r} for {where!r}: it must be importable from the "
            f"working directory ({os.getcwd()}) or PYTHONPATH") from e
    except Exception as e:
        raise ModelError(f"importing {module!r} for {where!r} failed: "
                         f"{type(e).__name__}: {e}") from e


def _build_import(target: str, num_classes: int, kw: dict) -> nn.Module:
    where = f"import:{target}"
    module_name, _, attr = target.partition(":")
    if not module_name or not attr or ":" in attr or not all(
            p.isidentifier() for p in (*module_name.split("."), attr)):
        raise ModelError(f"model {where!r} is not valid; write import:<module.path>:<factory>, "
                         "e.g. import:mypkg.nets:small_net")
    module = _import_module(module_name, where)
    if not hasattr(module, attr):
        public = sorted(n for n, v in vars(module).items()
                        if callable(v) and not n.startswith("_"))
        raise ModelError(f"module {module_name!r} has no {attr!r}{_near(attr, public)}; "
                         f"its public callables: {', '.join(public[:MAX_LISTED]) or 'none'}")
    factory = getattr(module, attr)
    if not callable(factory):
        raise ModelError(f"{target!r} is a {type(factory).__name__}, not a factory function "
                         "or class")
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # some builtins have no signature: just call them
        params = None
    if params is not None and not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        if "num_classes" not in params:
            raise ModelError(f"factory {target!r} does not take num_classes; it is called as "
                             f"{attr}(num_classes=N, **kwargs) (its arguments: "
                             f"{', '.join(params) or 'none'})")
        bad = sorted(set(kw) - set(params))
        if bad:
            raise ModelError(f"factory {target!r} does not take {', '.join(bad)}; it takes: "
                             f"{', '.join(p for p in params if p != 'num_classes')}",
                             key=bad[0])
    model = factory(num_classes=num_classes, **kw)
    if not isinstance(model, nn.Module):
        raise ModelError(f"factory {target!r} returned a {type(model).__name__}, not a "
                         "torch.nn.Module")
    return model


__all__ = [
    "MAX_LISTED", "SOURCES", "ModelError", "build_from_source", "model_source",
    "model_source_help", "source_doc",
]
