"""Static int8 post-training quantization through torchao's PT2E flow.

The float model is exported (``torch.export.export(...).module()``), annotated by
torchao's ``X86InductorQuantizer`` (``prepare_pt2e``), calibrated on training batches
so the observers see real activation ranges, and converted (``convert_pt2e``). The
converted graph stores int8 weights (per output channel or per tensor) with their
scales, uint8 activations in between, and runs without compiling on the CPU.

Eager-mode ``torch.ao.quantization`` (QuantStub, fuse_modules), which seed 002 uses,
is deprecated; PT2E folds BatchNorm into the convs by itself. The quantized model is
terminal: it is evaluated and measured, not trained further. It carries
``float_structure`` (the float model) so params and MACs count the layers while
``size_bytes`` counts the int8 tensors.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import TYPE_CHECKING

import torch
from torch import nn

from prune_core.measure import deployable
from prune_core.methods._registry import Param, register_method

if TYPE_CHECKING:
    from prune_core.methods._context import Context

KEEP_FLOAT = ("none", "first", "last", "first_last")


class QuantizedModel(nn.Module):
    """An exported int8 graph behind the usual module surface.

    Exported graphs refuse ``train()``/``eval()``; both are no-ops here (the graph has no
    training behaviour left). Inputs move to the CPU, where the int8 kernels run, and
    outputs back to the caller's device.
    """

    def __init__(self, graph: nn.Module, float_structure: nn.Module):
        super().__init__()
        self.graph = graph
        # A plain attribute, not a submodule: the float copy is bookkeeping for counting,
        # not part of what is deployed (and must not be counted in size_bytes).
        object.__setattr__(self, "float_structure", float_structure)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.graph(x.cpu().contiguous()).to(x.device)

    def train(self, mode: bool = True) -> QuantizedModel:
        return self


def _weight_config(per_channel: bool):
    from torchao.quantization.pt2e.observer import MinMaxObserver
    from torchao.quantization.pt2e.quantizer import QuantizationSpec
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
        get_default_x86_inductor_quantization_config,
    )

    config = get_default_x86_inductor_quantization_config()  # per-channel int8 weights
    if per_channel:
        return config
    weight = QuantizationSpec(
        dtype=torch.int8, quant_min=-128, quant_max=127, qscheme=torch.per_tensor_symmetric,
        is_dynamic=False, observer_or_fake_quant_ctr=MinMaxObserver.with_args(eps=2**-12))
    return dataclasses.replace(config, weight=weight)


def float_layers(model: nn.Module, keep_float: str) -> list[str]:
    """Names of the conv / linear layers left in float by ``keep_float``."""
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    if not names or keep_float == "none":
        return []
    out = []
    if keep_float in ("first", "first_last"):
        out.append(names[0])
    if keep_float in ("last", "first_last") and names[-1] not in out:
        out.append(names[-1])
    return out


def _drop_unused(graph: torch.fx.GraphModule) -> None:
    """Delete parameters and buffers no graph node reads (the float weights that
    convert_pt2e replaced by int8 constants), so the deployed model does not store them."""
    used = {n.target for n in graph.graph.nodes if n.op == "get_attr"}
    called = {n.target for n in graph.graph.nodes if n.op == "call_module"}
    named = list(graph.named_parameters(remove_duplicate=False)) + \
        list(graph.named_buffers(remove_duplicate=False))
    for name, _ in named:
        owner, _, attr = name.rpartition(".")
        if name in used or any(owner == c or owner.startswith(c + ".") for c in called):
            continue
        delattr(graph.get_submodule(owner) if owner else graph, attr)


def _split_shared_calls(graph: torch.fx.GraphModule) -> None:
    """Give each call of a module called more than once its own name in the graph.

    The quantizer groups nodes into patterns by the module they came from; a module
    called twice (torchvision's ResNet blocks apply one ``self.relu`` after the first
    conv and after the residual addition) made one group with two outputs, and
    annotation failed ("Input partition has more than one output node"). torch.export
    already tells the calls apart in ``nn_module_stack``'s keys (``layer1.0.relu@1``);
    the innermost entry's name takes the same suffix.
    """
    for node in graph.graph.nodes:
        stack = node.meta.get("nn_module_stack")
        if node.op != "call_function" or not stack:
            continue
        key, (fqn, cls) = list(stack.items())[-1]
        _, at, call = key.rpartition("@")
        if at and call.isdigit():
            stack[key] = (f"{fqn}@{call}", cls)


@torch.no_grad()
def quantize_model(model: nn.Module, data, *, calibration_batches: int, per_channel: bool,
                   keep_float: str = "none", batch_size: int = 128,
                   seed: int = 0) -> QuantizedModel:
    """int8 copy of ``model`` calibrated on ``calibration_batches`` training batches."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import X86InductorQuantizer

    float_model = deployable(model)
    cpu = copy.deepcopy(float_model).cpu().eval()
    cpu = cpu.to(memory_format=torch.contiguous_format)
    example = (torch.zeros((2, *data.input_shape)),)
    batch = torch.export.Dim("batch")
    graph = torch.export.export(cpu, example, dynamic_shapes=({0: batch},)).module()
    _split_shared_calls(graph)
    quantizer = X86InductorQuantizer().set_global(_weight_config(per_channel))
    for name in float_layers(cpu, keep_float):
        quantizer.set_module_name_qconfig(name, None)  # None: leave this layer in float
    prepared = prepare_pt2e(graph, quantizer)
    gen = torch.Generator().manual_seed(seed)
    for i, (x, _) in enumerate(data.batches("train", batch_size, augment=False, generator=gen)):
        if i >= calibration_batches:
            break
        prepared(x.cpu().contiguous())
    converted = convert_pt2e(prepared)
    _drop_unused(converted)
    return QuantizedModel(converted, float_model)


def compatible(model: nn.Module, input_shape: tuple[int, ...]) -> str | None:
    """Why int8 quantization cannot take ``model``: torch.export must capture its graph."""
    cpu = copy.deepcopy(model).cpu().eval()
    try:
        torch.export.export(cpu, (torch.zeros((2, *input_shape)),),
                            dynamic_shapes=({0: torch.export.Dim("batch")},))
    except Exception as e:  # export raises many kinds; each means "not exportable"
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        return f"torch.export cannot capture its graph ({type(e).__name__}: {first})"
    return None


@register_method(
    "quantize",
    check=compatible,
    doc="static int8 post-training quantization (torchao PT2E, x86 quantizer)",
    seed="002",
    terminal=True,
    params=[
        Param(name="calibration_batches", kind="int", default=8, low=1, high=10000,
              doc="training batches the observers see before conversion (digits has 12)",
              search={"low": 1, "high": 16, "log": True}),
        Param(name="per_channel", kind="bool", default=True,
              doc="one weight scale per output channel (else one per tensor)",
              search={"choices": [True, False]}),
        Param(name="keep_float", kind="categorical", default="none", choices=KEEP_FLOAT,
              doc="conv / linear layers left in float: none, the first, the last, or both",
              search={"choices": list(KEEP_FLOAT)}),
    ],
)
def quantize(model: nn.Module, params: dict, ctx: Context) -> nn.Module:
    """Quantize the model to static int8 after calibration."""
    q = quantize_model(model, ctx.data, calibration_batches=params["calibration_batches"],
                       per_channel=params["per_channel"], keep_float=params["keep_float"],
                       batch_size=ctx.train.batch_size, seed=ctx.seed)
    ctx.result("float_layers", float_layers(model, params["keep_float"]))
    return q


__all__ = ["KEEP_FLOAT", "QuantizedModel", "float_layers", "quantize_model"]
