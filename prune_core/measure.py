"""Size, operation counts and latency of a deployed model: the columns of every result.

MACs come from ``torch.utils.flop_counter.FlopCounterMode`` (FLOPs / 2 of the
convolutions and matrix products), per module, so unstructured sparsity can be
accounted for layer by layer. Parametrizations (orthogonal layers) are
materialised first: a deployed model stores the weight, it does not recompute it.
"""

from __future__ import annotations

import copy
import statistics

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from prune_core.deploy import deployable, onnx_session

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
    # With no parameter needing a gradient: the counter's module tracker hooks the
    # gradients of inputs that need them, and failed on PiT's, a view of a parameter
    # (its class token) passed between stages. no_grad alone leaves such views needing one.
    needs = [p for p in model.parameters() if p.requires_grad]
    try:
        for p in needs:
            p.requires_grad_(False)
        with FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        for p in needs:
            p.requires_grad_(True)
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


LATENCY_DEFAULTS = {"batch": [1], "threads": None, "compiled": False, "runs": 30,
                    "warmup": 5, "runtime": "torch"}
# Where a trial's model is timed: torch (eager, or compiled with `compiled`), or ONNX Runtime
# on the CPU, the runtime many deployments ship.
RUNTIMES = ("torch", "onnxruntime")


@torch.no_grad()
def latency_ms(model: nn.Module, input_shape: tuple[int, ...], repeats: int = 30,
               warmup: int = 5) -> float:
    """Median CPU latency of one batch-1 forward pass, in milliseconds."""
    return measure_latency(model, input_shape, runs=repeats, warmup=warmup)["latency_ms"]


def measure_latency(model: nn.Module, input_shape: tuple[int, ...], *,
                    batch: list[int] | tuple[int, ...] = (1,), threads: int | None = None,
                    compiled: bool = False, runs: int = 30, warmup: int = 5,
                    runtime: str = "torch") -> dict:
    """CPU latency as deployment runs it, with ``torch.utils.benchmark``: after ``warmup``
    calls, ``runs`` timed forward passes per batch size, on ``threads`` threads (default:
    the current count). ``compiled`` times ``torch.compile`` with the inductor backend
    (with freezing, so an int8 graph from torchao's x86 quantizer runs int8 kernels).
    ``runtime: onnxruntime`` times the model exported to ONNX in an ONNX Runtime CPU
    session with ``threads`` intra-op threads instead.

    Returns ``latency_ms_b<N>`` and ``latency_iqr_ms_b<N>`` (median and interquartile
    range, ms) per batch size, and ``latency_ms``/``latency_iqr_ms`` for the first.
    """
    if runtime not in RUNTIMES:
        raise ValueError(f"latency runtime {runtime!r}; allowed: {', '.join(RUNTIMES)}")
    threads = threads or torch.get_num_threads()
    if runtime == "onnxruntime":
        run = onnx_session(model, input_shape, threads)
        return _time_batches(lambda x: run(x.numpy()), input_shape, batch, threads, runs,
                             warmup)
    model = deployable(model)
    model = copy.deepcopy(model).cpu().eval() if _on_gpu(model) else model.eval()
    if not compiled:
        return _time_batches(model, input_shape, batch, threads, runs, warmup)
    import torch._inductor.config as inductor_config
    from torch import _dynamo

    # Freezing constant-folds the int8 weights into the kernels; compiling happens at the
    # first (warm-up) call, inside the patch, which leaves the process's settings alone.
    # One static graph per batch size, as a deployment at a fixed batch compiles. Models of
    # one class share their forward's compile cache, whose limit (8 graphs) would silently
    # leave a worker that measured many trials timing eager code: start each model afresh.
    _dynamo.reset()
    with inductor_config.patch(freezing=True):
        return _time_batches(torch.compile(model, backend="inductor", dynamic=False),
                             input_shape, batch, threads, runs, warmup)


def _time_batches(model, input_shape, batch, threads: int, runs: int, warmup: int) -> dict:
    """Median and IQR of ``runs`` calls of ``model`` (a module or any callable on a batch)."""
    from torch.utils import benchmark

    out: dict[str, float] = {}
    for b in batch:
        x = torch.randn((b, *input_shape))

        @torch.inference_mode()
        def forward(x=x):
            return model(x)

        for _ in range(warmup):
            forward()
        timer = benchmark.Timer(stmt="forward()", globals={"forward": forward},
                                num_threads=threads)
        times = [timer.timeit(1).times[0] * 1e3 for _ in range(runs)]
        q1, _, q3 = statistics.quantiles(times, n=4) if len(times) > 1 else (times[0],) * 3
        out[f"latency_ms_b{b}"] = statistics.median(times)
        out[f"latency_iqr_ms_b{b}"] = q3 - q1
    first = batch[0]
    out["latency_ms"], out["latency_iqr_ms"] = (out[f"latency_ms_b{first}"],
                                                out[f"latency_iqr_ms_b{first}"])
    return out


def _on_gpu(model: nn.Module) -> bool:
    return any(p.is_cuda for p in model.parameters())


def count_cost(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, int]:
    """``params``, ``nonzero_params``, ``macs`` and ``nonzero_macs`` of a float model.

    A layer's non-zero MACs are its MACs scaled by the share of its weights that are
    non-zero (unstructured pruning); other operations count in full.
    """
    params, nonzero = count_params(model)
    macs, per_layer = count_macs(model, input_shape)
    nonzero_macs = macs - sum(per_layer.values())
    for name, m in _weight_layers(deployable(model)).items():
        w = m.weight
        frac = float(torch.count_nonzero(w)) / max(1, w.numel())
        nonzero_macs += int(round(per_layer.get(name, 0) * frac))
    return {"params": params, "nonzero_params": nonzero, "macs": macs,
            "nonzero_macs": nonzero_macs}


def latency_columns(model: nn.Module, input_shape: tuple[int, ...],
                    latency: bool | dict = True) -> dict:
    """:func:`measure_latency` with a spec's ``latency`` (true, or options over
    ``LATENCY_DEFAULTS``)."""
    options = {**LATENCY_DEFAULTS, **(latency if isinstance(latency, dict) else {})}
    return measure_latency(model, input_shape, **options)


def measure(
    model: nn.Module,
    input_shape: tuple[int, ...],
    *,
    structure: nn.Module | None = None,
    with_latency: bool | dict = False,
) -> dict:
    """Every size and operation column for one model.

    ``structure`` is the float model a quantized one was converted from: its
    layers are counted for params and MACs, while the bytes are the quantized
    model's own. ``with_latency`` (true, or the options of :func:`measure_latency`) adds
    the latency columns.
    """
    counted = structure if structure is not None else model
    row = count_cost(counted, input_shape)
    row["ops"] = row["macs"] + count_activations(counted, input_shape)
    row["size_bytes"] = size_bytes(model)
    if with_latency:
        row.update(latency_columns(model, input_shape, with_latency))
    return row


def channel_counts(model: nn.Module) -> dict[str, int]:
    """Output channels of every conv layer, by name (for per-layer survival figures)."""
    return {n: m.out_channels for n, m in deployable(model).named_modules()
            if isinstance(m, nn.Conv2d)}


__all__ = [
    "ACTIVATIONS", "LATENCY_DEFAULTS", "channel_counts", "count_activations", "count_cost",
    "count_macs", "count_params", "deployable", "latency_columns", "latency_ms", "measure",
    "measure_latency", "parse_shape", "RUNTIMES", "size_bytes",
]
