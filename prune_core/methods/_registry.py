"""The method interface: a declared parameter table and one function.

A method is registered with ``@register_method(name, params=[Param(...)], doc=...)``
on a function ``fn(model, params, ctx) -> model``. ``params`` holds a value for
every declared parameter (defaults filled in, domains checked); ``ctx`` gives the
data, the device, training settings and the ``report`` callback.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from torch import nn

from prune_core.errors import InputError

if TYPE_CHECKING:
    from prune_core.methods._allocation import Allocation
    from prune_core.methods._context import Context

KINDS = ("float", "int", "categorical", "bool")
# Parameters a model generates (prune_core.methods._allocation): ``ratio@<module>``.
GENERATED_PREFIX = "ratio@"


class ParamError(InputError):
    """A method parameter, stage or method name is invalid."""


@dataclass(frozen=True, kw_only=True)
class Param:
    """One hyperparameter of a method.

    ``low``/``high`` bound the valid domain (``low_open``/``high_open`` exclude the
    end); ``search`` is the default search range a study uses when the spec names
    the parameter without a range: ``{"low", "high", "log"}`` or ``{"choices"}``.
    """

    name: str
    kind: str
    default: Any
    doc: str
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple | None = None
    search: dict | None = None
    # A count of repetitions (rounds, cycles): a rehearsal (prune_core.rehearsal) runs at
    # most this many, since later ones run the same code on a smaller model.
    rehearsal_cap: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"Param.kind must be one of {KINDS}; got {self.kind!r}")
        if self.kind == "categorical" and not self.choices:
            raise ValueError(f"categorical Param {self.name!r} needs choices")

    def domain(self) -> str:
        """The valid domain in words, for error messages and ``prune-study methods``."""
        if self.kind == "bool":
            return "true or false"
        if self.kind == "categorical":
            return "one of " + ", ".join(repr(c) for c in self.choices)
        lo = "-inf" if self.low is None else f"{self.low:g}"
        hi = "inf" if self.high is None else f"{self.high:g}"
        left = "(" if self.low_open or self.low is None else "["
        right = ")" if self.high_open or self.high is None else "]"
        kind = "an integer" if self.kind == "int" else "a number"
        return f"{kind} in {left}{lo}, {hi}{right}"

    def contains(self, value: Any) -> bool:
        """True if ``value`` lies in the parameter's valid domain."""
        if self.kind == "bool":
            return isinstance(value, bool)
        if self.kind == "categorical":
            return value in self.choices
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if self.kind == "int" and not float(value).is_integer():
            return False
        if isinstance(value, float) and not math.isfinite(value):
            return False
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return False
        if self.high is not None and (value > self.high or (self.high_open and value == self.high)):
            return False
        return True

    def check(self, value: Any, where: str) -> Any:
        """Return the value coerced to the kind, or raise naming ``where`` and the domain."""
        if not self.contains(value):
            raise ParamError(f"{where} = {value!r} is invalid; allowed: {self.domain()}")
        if self.kind == "int":
            return int(value)
        if self.kind == "float":
            return float(value)
        return value

    def to_dict(self) -> dict:
        """The parameter as plain data (``prune-study methods --json``)."""
        return {
            "name": self.name, "kind": self.kind, "default": self.default, "doc": self.doc,
            "domain": self.domain(), "low": self.low, "high": self.high,
            "choices": list(self.choices) if self.choices else None, "search": self.search,
        }


MethodFn = Callable[[nn.Module, dict, Any], nn.Module]

# The channel-pruning methods' shared parameter (prune_core.groups.round_plan).
ROUND_TO = Param(name="round_to", kind="categorical", default=1,
                 choices=(1, 2, 4, 8, 16, 32, 64, 128),
                 doc="each pruned group keeps a multiple of this many channels (1: any "
                     "count; a group of at most this many stays whole); kernels run faster "
                     "on multiples of 8 or 16",
                 search={"choices": [1, 8, 16]})


def ratio_param(name: str, base: Param, doc: str = "") -> Param:
    """A generated ``ratio@...`` parameter, with the domain and search range of ``base``."""
    return Param(name=name, kind="float", default=base.default, low=0.0, high=1.0,
                 high_open=True, search=base.search,
                 doc=doc or f"{base.name} of the channels of one stage or group")


@dataclass(frozen=True)
class Method:
    """A registered compression method."""

    name: str
    fn: MethodFn
    params: tuple[Param, ...]
    doc: str
    seed: str = ""  # which field note it comes from
    # Re-create structural edits (not only shape changes) on a freshly built model, so a
    # checkpoint taken after this stage can be loaded with weights_only=True.
    restructure: Callable[[nn.Module, dict], nn.Module] | None = None
    # True where the stage must come last (its output is no longer a trainable float model).
    terminal: bool = False
    # check(model, input_shape) -> why the method has nothing to act on in this model, or
    # None; run on the built base model before a study starts.
    check: Callable[[nn.Module, tuple[int, ...]], str | None] | None = None
    # constraint(params) -> why these resolved values cannot run together (RePr's epoch
    # budget), starting with the parameter it blames, or None; a study refuses a space that
    # can draw such a point.
    constraint: Callable[[dict], str | None] | None = None
    # What the method's ``allocation`` parameter spreads over the model's groups; such a
    # method also takes the ``ratio@<module>`` parameters the model generates.
    allocation: Allocation | None = None

    def param(self, name: str) -> Param:
        """The declared parameter ``name`` (or a generated ``ratio@<module>`` one, as its
        template: which names a model has is known once it is built), or an error listing
        the method's parameters."""
        for p in self.params:
            if p.name == name:
                return p
        if self.allocation is not None and name.startswith(GENERATED_PREFIX) \
                and len(name) > len(GENERATED_PREFIX):
            return ratio_param(name, self.param(self.allocation.ratio))
        raise ParamError(
            f"method {self.name!r} has no parameter {name!r}; "
            f"its parameters: {', '.join(p.name for p in self.params) or '(none)'}"
        )

    def resolve(self, values: dict, stage: str | None = None) -> dict:
        """Defaults filled in, unknown names rejected, every value checked against its domain."""
        stage = stage or self.name
        known = {p.name for p in self.params}
        generated = {}
        for k in values:
            if self.allocation is not None and k.startswith(GENERATED_PREFIX):
                generated[k] = self.param(k).check(values[k], f"{stage}.{k}")
            elif k not in known:
                raise ParamError(
                    f"{stage}.{k} = {values[k]!r}: method {self.name!r} has no parameter {k!r}; "
                    f"its parameters: {', '.join(p.name for p in self.params) or '(none)'}"
                )
        resolved = {p.name: p.check(values.get(p.name, p.default), f"{stage}.{p.name}")
                    for p in self.params}
        if generated and resolved.get("allocation") not in ("per_stage", "per_group"):
            raise ParamError(f"{stage}.{next(iter(generated))}: a ratio@ parameter applies "
                             f"with allocation per_stage or per_group; {stage}.allocation is "
                             f"{resolved.get('allocation')!r}")
        resolved.update(generated)
        why = self.constraint(resolved) if self.constraint else None
        if why:
            raise ParamError(f"{stage}.{why}")
        return resolved

    def __call__(self, model: nn.Module, params: dict, ctx: Context) -> nn.Module:
        return self.fn(model, params, ctx)


_METHODS: dict[str, Method] = {}


def register_method(
    name: str,
    *,
    params: Sequence[Param] = (),
    doc: str = "",
    seed: str = "",
    restructure: Callable[[nn.Module, dict], nn.Module] | None = None,
    terminal: bool = False,
    check: Callable[[nn.Module, tuple[int, ...]], str | None] | None = None,
    constraint: Callable[[dict], str | None] | None = None,
    allocation: Allocation | None = None,
) -> Callable[[MethodFn], MethodFn]:
    """Register ``fn(model, params, ctx) -> model`` as a compression method."""

    def deco(fn: MethodFn) -> MethodFn:
        if name in _METHODS:
            raise ValueError(f"method {name!r} is registered twice")
        _METHODS[name] = Method(
            name=name, fn=fn, params=tuple(params),
            doc=doc or (fn.__doc__ or "").strip().splitlines()[0], seed=seed,
            restructure=restructure, terminal=terminal, check=check,
            constraint=constraint, allocation=allocation,
        )
        return fn

    return deco


def list_methods(pattern: str = "*") -> list[str]:
    """Registered method names matching a shell-style wildcard."""
    return sorted(n for n in _METHODS if fnmatch.fnmatch(n, pattern))


def get_method(name: str) -> Method:
    """The registered method, or an error listing the valid names."""
    if name not in _METHODS:
        raise ParamError(f"unknown method {name!r}; valid methods: {', '.join(list_methods())}")
    return _METHODS[name]


__all__ = [
    "GENERATED_PREFIX", "KINDS", "Method", "MethodFn", "Param", "ParamError", "get_method",
    "list_methods", "ratio_param", "register_method",
]
