"""A model as it is deployed: parametrizations materialised, on the CPU in eval mode, an
int8 model as its exported graph; captured with ``torch.export`` (batch dimension dynamic)
and, for ONNX Runtime, through torch.onnx's dynamo exporter. Shared by measurement
(latency in ONNX Runtime) and ``prune_core.export``.
"""

from __future__ import annotations

import copy
import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils import parametrize

__all__ = ["deployable", "deployed_module", "exported_program", "is_int8", "onnx_export",
           "onnx_session"]


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


def is_int8(model: nn.Module) -> bool:
    """Whether ``model`` is an int8 model (a quantized chain's result)."""
    return getattr(model, "float_structure", None) is not None


def deployed_module(model: nn.Module) -> nn.Module:
    """What is exported: the int8 graph, or the float model without parametrizations, on
    the CPU in eval mode."""
    graph = getattr(model, "graph", None) if is_int8(model) else None
    if graph is not None:
        return graph
    return copy.deepcopy(deployable(model)).cpu().eval()


def _example(input_shape) -> tuple[torch.Tensor]:
    # Batch 2: torch.export specialises a dimension of size 1.
    return (torch.zeros((2, *input_shape)),)


def exported_program(model: nn.Module, input_shape) -> torch.export.ExportedProgram:
    """``torch.export`` of the deployed module, the batch dimension dynamic."""
    batch = torch.export.Dim("batch", min=1, max=4096)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.export.export(deployed_module(model), _example(input_shape),
                                   dynamic_shapes=({0: batch},))


def onnx_export(program, path: Path) -> None:
    """Write an exported program to ``path`` as ONNX (torch.onnx's dynamo exporter)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # One file: the weights inside the model, not in a model.onnx.data beside it.
        torch.onnx.export(program, (), str(path), dynamo=True, verbose=False, optimize=True,
                          external_data=False)


def onnx_session(model: nn.Module, input_shape, threads: int):
    """``run(array) -> logits array``: the model exported to ONNX, in an ONNX Runtime CPU
    session on ``threads`` intra-op threads (how ``latency: {runtime: onnxruntime}`` times
    a trial's model)."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="prune-study-onnx-") as d:
        path = Path(d) / "model.onnx"
        onnx_export(exported_program(model, input_shape), path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        session = ort.InferenceSession(path.read_bytes(), options,
                                       providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})[0]


