"""Method chains: a trial runs stages in order, each on the previous stage's model."""

from __future__ import annotations

import re
from dataclasses import dataclass

from prune_core.methods._registry import Method, ParamError, get_method

STAGE_RE = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")


@dataclass(frozen=True)
class Stage:
    """One step of a chain: a stage name (used in parameter names) and its method."""

    name: str
    method: Method


def parse_chain(methods: str | list) -> list[Stage]:
    """``"slimming"``, ``["slimming", "quantize"]`` or ``[{"stage": "p1", "method": ...}]``.

    Stage names default to the method name; a method used twice gets ``name2``.
    """
    if isinstance(methods, str):
        methods = [m for m in methods.split("+") if m]
    if not methods:
        raise ParamError("methods must name at least one method")
    stages: list[Stage] = []
    seen: dict[str, int] = {}
    for item in methods:
        if isinstance(item, dict):
            if set(item) - {"stage", "method"} or "method" not in item:
                raise ParamError(f"a chain entry must be a method name or {{stage, method}}; "
                                 f"got {item!r}")
            if not isinstance(item["method"], str):
                raise ParamError(f"a chain entry's method must be a method name; got "
                                 f"{item['method']!r}")
            name = item.get("stage") or item["method"]
            if not isinstance(name, str) or not STAGE_RE.fullmatch(name):
                raise ParamError(f"stage name {name!r} is invalid; allowed: a letter, then "
                                 "letters, digits and '_' (it prefixes the stage's parameters "
                                 "as stage.param)")
            method = get_method(item["method"])
        elif not isinstance(item, str):
            raise ParamError(f"a chain entry must be a method name or {{stage, method}}; "
                             f"got {item!r}")
        else:
            method = get_method(item)
            seen[method.name] = seen.get(method.name, 0) + 1
            name = method.name if seen[method.name] == 1 else f"{method.name}{seen[method.name]}"
        if any(s.name == name for s in stages):
            raise ParamError(f"stage name {name!r} appears twice in the chain")
        stages.append(Stage(name, method))
    for s in stages[:-1]:
        if s.method.terminal:
            raise ParamError(f"method {s.method.name!r} must be the last stage of a chain")
    return stages


def chain_name(stages: list[Stage]) -> str:
    """The chain's methods joined by ``+`` (``slimming+quantize``)."""
    return "+".join(s.method.name for s in stages)


def split_params(stages: list[Stage], flat: dict) -> dict[str, dict]:
    """``{"stage.param": v}`` -> per-stage dicts resolved against each method's table."""
    by_stage: dict[str, dict] = {s.name: {} for s in stages}
    for key, value in flat.items():
        stage, dot, param = key.partition(".")
        if not dot:
            raise ParamError(f"parameter {key!r} must be named stage.param "
                             f"(stages: {', '.join(by_stage)})")
        if stage not in by_stage:
            raise ParamError(f"parameter {key!r} names unknown stage {stage!r}; "
                             f"stages of this chain: {', '.join(by_stage)}")
        by_stage[stage][param] = value
    return {s.name: s.method.resolve(by_stage[s.name], s.name) for s in stages}


def incompatibilities(stages: list[Stage], model, input_shape: tuple[int, ...],
                      model_name: str = "this model") -> list[str]:
    """Why each stage's method cannot act on ``model``: one line per stage that cannot.

    Every stage is checked on the base model: the earlier stages of a chain change
    channel counts and weights, not which layers a method can act on.
    """
    out = []
    for s in stages:
        if s.method.check is None:
            continue
        try:
            reason = s.method.check(model, tuple(input_shape))
        except Exception as e:  # a model torch-pruning or torch.export cannot follow
            reason = f"tracing the model failed ({type(e).__name__}: {e})"
        if reason:
            out.append(f"method {s.method.name!r} (stage {s.name!r}) cannot run on model "
                       f"{model_name!r}: {reason}")
    return out


__all__ = [
    "STAGE_RE", "Stage", "chain_name", "incompatibilities", "parse_chain", "split_params",
]
