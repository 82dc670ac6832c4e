"""Compression methods, registered by name. Importing this package registers them all."""

import importlib
import pkgutil

from prune_core.methods._chain import (
    Stage,
    chain_name,
    incompatibilities,
    parse_chain,
    split_params,
)
from prune_core.methods._context import Context
from prune_core.methods._filters import (
    ConvUnit,
    conv_units,
    filter_counts,
    fresh_copy,
    saved_result,
    total_filters,
    zero_input_channels,
)
from prune_core.methods._registry import (
    GENERATED_PREFIX,
    KINDS,
    Method,
    Param,
    ParamError,
    get_method,
    list_methods,
    register_method,
)

# Every public module of this package registers its method on import.
for _mod in pkgutil.iter_modules(__path__):
    if not _mod.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_mod.name}")

__all__ = [
    "GENERATED_PREFIX",
    "KINDS",
    "Context",
    "ConvUnit",
    "Method",
    "Param",
    "ParamError",
    "Stage",
    "chain_name",
    "conv_units",
    "filter_counts",
    "fresh_copy",
    "get_method",
    "incompatibilities",
    "list_methods",
    "parse_chain",
    "register_method",
    "saved_result",
    "split_params",
    "total_filters",
    "zero_input_channels",
]
