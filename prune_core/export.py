"""Write a compressed model in the formats it ships in, then prove each is the model the
study measured.

:func:`write_artifacts` writes ``model.pt2`` (``torch.export``), ``model.onnx`` (the
dynamo exporter, batch dimension dynamic), ``weights.safetensors`` + ``architecture.json``
(:func:`prune_core.compressed.load_compressed`). :func:`check_artifacts` loads each back
and runs it on the test split: a float model's artifacts must predict exactly what the
model predicts and score the row's accuracy; an int8 model's must stay within the row's
confidence interval; ONNX Runtime's outputs are compared with torch's; MACs are recounted
from the exported graph. Plain PyTorch: no Ray, no study files.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from prune_core.compressed import float_state, load_compressed
from prune_core.deploy import deployed_module, exported_program, is_int8, onnx_export
from prune_core.errors import PruneStudyError
from prune_core.measure import count_macs

__all__ = ["ONNX_ATOL", "Check", "ExportCheckError", "check_artifacts", "write_artifacts"]

# Largest |ONNX Runtime - torch| accepted on a float model's logits: kernels sum in other
# orders, so outputs differ in the last bits, never by this much.
ONNX_ATOL = 1e-3


class ExportCheckError(PruneStudyError):
    """An exported artifact does not reproduce the model the study measured."""


@dataclass
class Check:
    """One check of an exported artifact against the model or the study's row."""

    name: str
    ok: bool
    detail: str
    values: dict = field(default_factory=dict)


def write_artifacts(model: nn.Module, arch: dict, out: Path, *, onnx: bool = True,
                    log=lambda _m: None) -> dict[str, str]:
    """Write every artifact into ``out``; returns ``{artifact: path or why it is missing}``.
    ONNX of an int8 model is written where the exporter can; a refusal is recorded, not
    raised."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, str] = {}
    program = exported_program(model, arch["input"]["shape"])
    torch.export.save(program, out / "model.pt2")
    written["model.pt2"] = str(out / "model.pt2")
    save_file(float_state(model), str(out / "weights.safetensors"))
    (out / "architecture.json").write_text(json.dumps(arch, indent=1) + "\n")
    written["weights.safetensors"] = str(out / "weights.safetensors")
    written["architecture.json"] = str(out / "architecture.json")
    if onnx:
        written["model.onnx"] = _write_onnx(program, out / "model.onnx", is_int8(model), log)
    return written


def _write_onnx(program, path: Path, int8: bool, log) -> str:
    try:
        import onnxscript  # noqa: F401 (the dynamo exporter needs it; say so if it is missing)
    except ImportError:
        return ("not written: ONNX export needs onnx, onnxscript and onnxruntime "
                "(pip install 'prune-study[onnx]')")
    try:
        onnx_export(program, path)
    except Exception as e:  # the exporter raises many types; each means "not exportable"
        path.unlink(missing_ok=True)
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        why = (f"not written: torch.onnx's dynamo exporter cannot export "
               f"{'this int8 (PT2E) graph' if int8 else 'this model'} ({type(e).__name__}: "
               f"{first}); model.pt2 holds it")
        log(why)
        return why
    return str(path)


# --------------------------------------------------------------------------- checks


@torch.no_grad()
def _logits(fn, batches) -> torch.Tensor:
    return torch.cat([fn(x).float() for x, _ in batches])


@torch.no_grad()
def _graph_macs(module: nn.Module, input_shape) -> int:
    with FlopCounterMode(display=False) as counter:
        module(torch.zeros((1, *input_shape)))
    return sum(counter.get_flop_counts().get("Global", {}).values()) // 2


def check_artifacts(model: nn.Module, arch: dict, out: Path, written: dict[str, str],
                    data, row: dict, interval: tuple[float, float]) -> list[Check]:
    """Load every artifact back, run it on the test split and compare (module docstring);
    ``interval`` is the row's accuracy interval, which an int8 artifact must stay in. A
    float row measured on a GPU (in autocast, ``data`` on CUDA) is matched within that
    interval too; the artifacts must still predict exactly what the model does in fp32.
    Raises :class:`ExportCheckError` naming each failed check; returns the checks."""
    test = [(x.cpu(), y.cpu()) for x, y in data.batches("test", 256, shuffle=False,
                                                         augment=False)]
    labels = torch.cat([y for _, y in test])
    n = len(labels)
    int8 = is_int8(model)
    autocast = data.device.type == "cuda"
    module = deployed_module(model)
    reference = _logits(module, test)
    row_acc = float(row["accuracy"])
    lo, hi = interval
    checks: list[Check] = []

    def accuracy_check(name: str, logits: torch.Tensor) -> None:
        preds = logits.argmax(1)
        acc = float((preds == labels).float().mean())
        same = int((preds == reference.argmax(1)).sum())
        if int8:
            ok = lo <= acc <= hi
            detail = (f"accuracy {acc:.4f} against the row's {row_acc:.4f} (difference "
                      f"{acc - row_acc:+.4f}; the row's 95 % interval {lo:.4f}-{hi:.4f})")
        else:
            ok = same == n and (lo <= acc <= hi if autocast else
                                round(acc * n) == round(row_acc * n))
            detail = (f"accuracy {acc:.4f} against the row's {row_acc:.4f}"
                      + (" (measured on the GPU in autocast: within its 95 % interval "
                         f"{lo:.4f}-{hi:.4f})" if autocast else "")
                      + f"; {same} of {n} predictions equal the model's")
        checks.append(Check(name, ok, detail, {"accuracy": acc, "same_predictions": same}))

    accuracy_check("model (as exported)", reference)
    program = torch.export.load(str(out / "model.pt2")).module()
    accuracy_check("model.pt2 (torch.export.load)", _logits(program, test))
    rebuilt = load_compressed(out, data=data if int8 else None)
    accuracy_check("weights.safetensors + architecture.json (load_compressed)",
                   _logits(deployed_module(rebuilt), test))
    onnx_path = written.get("model.onnx", "")
    if onnx_path.endswith(".onnx"):
        checks.append(_onnx_check(Path(onnx_path), test, reference, int8, accuracy_check))
    # An int8 row's MACs were counted on the float model its quantize stage started from.
    macs = count_macs(rebuilt.float_structure, tuple(arch["input"]["shape"]))[0] if int8 \
        else _graph_macs(program, arch["input"]["shape"])
    checks.append(Check(
        "MACs", macs == row["macs"],
        f"{macs:,} MACs recounted from {'the float structure' if int8 else 'model.pt2'}, "
        f"the row has {int(row['macs']):,}", {"macs": macs}))
    bad = [c for c in checks if not c.ok]
    if bad:
        raise ExportCheckError("the exported model does not match the study's row: "
                               + "; ".join(f"{c.name}: {c.detail}" for c in bad))
    return checks


def _onnx_check(path: Path, test, reference: torch.Tensor, int8: bool, accuracy_check) -> Check:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    logits = torch.cat([torch.from_numpy(session.run(None, {name: x.numpy()})[0]).float()
                        for x, _ in test])
    diff = float((logits - reference).abs().max())
    accuracy_check("model.onnx (ONNX Runtime)", logits)
    ok = int8 or diff <= ONNX_ATOL
    return Check("ONNX Runtime against torch", ok,
                 f"max |ONNX Runtime - torch| {diff:.3g} on the logits"
                 + ("" if int8 else f" (bound {ONNX_ATOL:g})"), {"max_abs_diff": diff})
