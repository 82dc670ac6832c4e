"""A compressed model as data: its architecture (the base model and the method chain that
shaped it) and its float weights, enough to rebuild the module anywhere this package runs.

A trial keeps its final model as one ``torch.save`` file (:func:`save_kept`, loadable with
``weights_only=True``); ``prune-study export`` writes the same two parts as
``architecture.json`` and ``weights.safetensors``, which :func:`load_compressed` reads back
for further fine-tuning. Rebuilding repeats what a resumed trial does: build the base
architecture, repeat each stage's structural edit (``Method.restructure``), then load the
weights with the pruned shapes. A chain that ends in a terminal stage (int8 quantization)
keeps the float model that stage started from; :func:`apply_terminal` repeats the stage.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from torch import nn

import prune_core.models as models
from prune_core._io import atomic_save, safe_load
from prune_core.errors import InputError
from prune_core.measure import deployable
from prune_core.methods import Context, get_method
from prune_core.surgery import load_resized
from prune_core.train import TrainConfig, seed_everything

__all__ = ["FORMAT", "CompressedError", "apply_terminal", "architecture", "file_sha256",
           "float_state", "load_compressed", "read_kept", "rebuild", "save_kept"]

FORMAT = "prune-study-compressed/1"
# The seed offset run_trial gives each stage: a repeated stage draws the same numbers.
STAGE_SEED = 7919


class CompressedError(InputError):
    """A kept model or an export folder that cannot be read as a compressed model."""


def architecture(*, model: str, model_kw: dict, num_classes: int, stages: list, values: dict,
                 input_shape: tuple[int, ...], mean, std, seed: int, finetune: dict) -> dict:
    """The plain-data description of a trial's model: base architecture, the chain with
    each stage's resolved parameters, the input it expects, and what the stages drew on."""
    return {
        "format": FORMAT,
        "model": model,
        # A pretrained file the base started from is replaced by the trained weights.
        "model_kw": {k: v for k, v in model_kw.items() if k != "weights"},
        "num_classes": int(num_classes),
        "stages": [{"name": s.name, "method": s.method.name, "params": dict(values[s.name])}
                   for s in stages],
        "input": {"shape": [int(v) for v in input_shape], "dtype": "float32",
                  "mean": [float(v) for v in mean], "std": [float(v) for v in std],
                  "layout": "NCHW, RGB scaled to [0, 1], then (x - mean) / std per channel"},
        "seed": int(seed),
        "finetune": dict(finetune),
    }


def float_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The weights that rebuild ``model``: its own, or for an int8 model those of the float
    model it was converted from."""
    source = getattr(model, "float_structure", None) or model
    return {k: v.detach().cpu().clone() for k, v in source.state_dict().items()}


def _terminal(arch: dict) -> list[int]:
    return [i for i, s in enumerate(arch["stages"]) if get_method(s["method"]).terminal]


def rebuild(arch: dict, state_dict: dict[str, torch.Tensor]) -> nn.Module:
    """The float module of ``arch`` with ``state_dict`` loaded, in eval mode on the CPU
    (before any terminal stage: see :func:`apply_terminal`)."""
    if not isinstance(arch, dict) or arch.get("format") != FORMAT:
        raise CompressedError(f"not a compressed model's architecture (format "
                              f"{arch.get('format') if isinstance(arch, dict) else None!r}, "
                              f"expected {FORMAT!r})")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(arch["seed"])  # initial values are overwritten; keep RNG untouched
        model = models.build(arch["model"], num_classes=arch["num_classes"],
                             **arch["model_kw"])
        terminal = _terminal(arch)
        for i, stage in enumerate(arch["stages"]):
            if terminal and i >= terminal[0]:
                break
            method = get_method(stage["method"])
            if method.restructure is not None:
                model = method.restructure(model, stage["params"])
    if terminal:
        model = deployable(model)  # a terminal stage took the model without parametrizations
    load_resized(model, state_dict)
    return model.eval()


def apply_terminal(model: nn.Module, arch: dict, data) -> nn.Module:
    """Repeat the chain's terminal stages (int8 quantization) on the rebuilt float model,
    with the trial's seed and fine-tuning settings, as the trial ran them."""
    for i in _terminal(arch):
        stage = arch["stages"][i]
        seed_everything(arch["seed"] + STAGE_SEED * i)
        ctx = Context(data=data, train=TrainConfig.from_dict(arch["finetune"]),
                      stage=stage["name"], seed=arch["seed"])
        model = get_method(stage["method"])(model, stage["params"], ctx)
    return model


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save_kept(model: nn.Module, arch: dict, path: str | Path) -> str:
    """Write a trial's final model atomically (a temporary file, then a rename); returns the
    file's SHA-256."""
    path = Path(path)
    atomic_save({"format": FORMAT, "architecture_json": json.dumps(arch),
                 "state_dict": float_state(model)}, path)
    return file_sha256(path)


def read_kept(path: str | Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """``(architecture, state_dict)`` of a file written by :func:`save_kept`."""
    payload = safe_load(Path(path))
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CompressedError(f"{path} is not a kept model of this version ({FORMAT})")
    return json.loads(payload["architecture_json"]), payload["state_dict"]


def load_compressed(folder: str | Path, *, data=None) -> nn.Module:
    """The module an export folder holds (``architecture.json`` + ``weights.safetensors``),
    in float, ready for further fine-tuning. An int8 chain comes back as the float model it
    was quantized from unless ``data`` is given to calibrate the int8 stage again."""
    from safetensors.torch import load_file

    folder = Path(folder)
    for name in ("architecture.json", "weights.safetensors"):
        if not (folder / name).is_file():
            raise CompressedError(f"{folder} holds no {name}: not a folder written by "
                                  "`prune-study export`")
    try:
        arch = json.loads((folder / "architecture.json").read_text())
    except ValueError as e:
        raise CompressedError(f"{folder / 'architecture.json'} is not valid JSON ({e})") from e
    model = rebuild(arch, load_file(str(folder / "weights.safetensors")))
    return apply_terminal(model, arch, data) if data is not None else model
