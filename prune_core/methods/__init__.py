"""Compression methods, registered by name. Importing this package registers them all."""

from prune_core.methods._chain import Stage, chain_name, parse_chain, split_params
from prune_core.methods._context import Context
from prune_core.methods._registry import (
    Method,
    Param,
    ParamError,
    get_method,
    list_methods,
    register_method,
)

# Each module registers its method on import.
from prune_core.methods import none  # noqa: E402,F401  isort: skip

__all__ = [
    "Context",
    "Method",
    "Param",
    "ParamError",
    "Stage",
    "chain_name",
    "get_method",
    "list_methods",
    "parse_chain",
    "register_method",
    "split_params",
]
