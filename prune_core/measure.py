"""Size, operation counts and latency of a deployed model: the columns of every result.

MACs come from ``torch.utils.flop_counter.FlopCounterMode`` (FLOPs / 2 of the
convolutions and matrix products), per module, so unstructured sparsity can be
accounted for layer by layer. Parametrizations (orthogonal layers) are
materialised first: a deployed model stores the weight, it does not recompute it.
"""

from __future__ import annotations

import copy
import statistics
import time

import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.utils.flop_counter import FlopCounterMode

ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid,
               nn.Hardswish, nn.ELU)


def parse_shape(text: str) -> tuple[int, ...]:
    """'3x32x32' -> (3, 32, 32), with an error naming the value."""
    try:
        shape = tuple(int(v) for v in text.lower().split("x"))
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"--input {text!r} is not CxHxW with positive integers, e.g. 3x32x32")
    return shape


def deployable(model: nn.Module) -> nn.Module:
    """A copy with every parametrization replaced by its current weight."""
    has_param = any(parametrize.is_parametrized(m) for m in model.modules())
    if not has_param:
        return model
    model = copy.deepcopy(model)
    for m in model.modules():
        if parametrize.is_parametrized(m):
            with torch.enable_grad():  # some maps (orthogonal) fail to evaluate under no_grad
                values = {n: getattr(m, n).detach().clone() for n in m.parametrizations}
            # Not remove_parametrizations: it deletes the property from the parametrized class,
            # which the original model shares with this copy.
            m.__class__ = m.__class__.__bases__[0]
            del m._modules["parametrizations"]
            for n, v in values.items():
                m.register_parameter(n, nn.Parameter(v))
    return model


def _weight_layers(model: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)}


@torch.no_grad()
def count_macs(model: nn.Module, input_shape: tuple[int, ...]) -> tuple[int, dict[str, int]]:
    """Total MACs per sample and MACs of each conv / linear layer."""
    model = deployable(model)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    was_training = model.training
    model.eval()
    x = torch.zeros((1, *input_shape), device=device)
    with FlopCounterMode(display=False) as counter:
        model(x)
    model.train(was_training)
    counts = counter.get_flop_counts()
    per_layer: dict[str, int] = {}
    root = type(model).__name__
    for name in _weight_layers(model):
        key = f"{root}.{name}"
        if key in counts:
            per_layer[name] = sum(counts[key].values()) // 2
    total = sum(counts.get("Global", {}).values()) // 2
    return total, per_layer


@torch.no_grad()
def count_activations(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Elements produced by activation layers for one sample (one op each)."""
    model = deployable(model)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    total = 0

    def hook(_m, _i, out):
        nonlocal total
        total += out.numel()

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, ACTIVATIONS)]
    was_training = model.training
    model.eval()
    try:
        model(torch.zeros((1, *input_shape), device=device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return total


def count_params(model: nn.Module) -> tuple[int, int]:
    """Stored parameter elements and how many of them are non-zero."""
    model = deployable(model)
    params = list(model.parameters())
    return sum(p.numel() for p in params), sum(int(torch.count_nonzero(p)) for p in params)


def size_bytes(model: nn.Module) -> int:
    """Bytes of every tensor the deployed model stores (parameters, buffers, constants)."""
    model = deployable(model)
    seen: set[int] = set()
    total = 0

    def add(t: torch.Tensor) -> None:
        nonlocal total
        if id(t) not in seen:
            seen.add(id(t))
            total += t.numel() * t.element_size()

    for t in model.parameters():
        add(t)
    for t in model.buffers():
        add(t)
    for m in model.modules():  # constants of exported graphs (int8 weights) are plain attributes
        for v in vars(m).values():
            if isinstance(v, torch.Tensor):
                add(v)
    return total


@torch.no_grad()
def latency_ms(model: nn.Module, input_shape: tuple[int, ...], repeats: int = 30,
               warmup: int = 5) -> float:
    """Median CPU latency of one batch-1 forward pass, in milliseconds."""
    model = deployable(model)
    model = copy.deepcopy(model).cpu().eval() if _on_gpu(model) else model.eval()
    x = torch.randn((1, *input_shape))
    for _ in range(warmup):
        model(x)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        model(x)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def _on_gpu(model: nn.Module) -> bool:
    return any(p.is_cuda for p in model.parameters())


def measure(
    model: nn.Module,
    input_shape: tuple[int, ...],
    *,
    structure: nn.Module | None = None,
    with_latency: bool = False,
) -> dict:
    """Every size and operation column for one model.

    ``structure`` is the float model a quantized one was converted from: its
    layers are counted for params and MACs, while the bytes are the quantized
    model's own.
    """
    counted = structure if structure is not None else model
    params, nonzero = count_params(counted)
    macs, per_layer = count_macs(counted, input_shape)
    layers = _weight_layers(deployable(counted))
    dense = sum(per_layer.values())
    nonzero_macs = macs - dense
    for name, m in layers.items():
        w = m.weight
        frac = float(torch.count_nonzero(w)) / max(1, w.numel())
        nonzero_macs += int(round(per_layer.get(name, 0) * frac))
    row = {
        "params": params,
        "nonzero_params": nonzero,
        "macs": macs,
        "nonzero_macs": nonzero_macs,
        "ops": macs + count_activations(counted, input_shape),
        "size_bytes": size_bytes(model),
    }
    if with_latency:
        row["latency_ms"] = latency_ms(model, input_shape)
    return row


def channel_counts(model: nn.Module) -> dict[str, int]:
    """Output channels of every conv layer, by name (for per-layer survival figures)."""
    return {n: m.out_channels for n, m in deployable(model).named_modules()
            if isinstance(m, nn.Conv2d)}
