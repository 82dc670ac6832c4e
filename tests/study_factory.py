"""Writes realistic study directories in the format of docs/study-directory.md, without
training anything, for the tests of ``analysis`` and anything that reads studies.

The numbers follow a VGG-11 at width 0.25 on digits (32x32): per-layer channel counts
give params, MACs, ops and bytes by the same formulas the model has (the base row equals
``prune-study measure vgg11 --width 0.25``), and accuracy falls with the share removed.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

# VGG-11 at width 0.25: conv layer -> (output channels, output side length).
LAYERS = {"features.conv0": (16, 32), "features.conv1": (32, 16), "features.conv2": (64, 8),
          "features.conv3": (64, 8), "features.conv4": (128, 4), "features.conv5": (128, 4),
          "features.conv6": (128, 2), "features.conv7": (128, 2)}
NUM_CLASSES = 10
BASE_ACCURACY = 0.983
METHODS = ("slimming", "magnitude", "branch", "repr", "slimming+quantize")


def cost(channels: dict[str, int]) -> dict:
    """params, MACs, ops and bytes of the VGG with these output channels per conv layer."""
    params = macs = acts = 0
    c_in = 3
    for name, (_, side) in LAYERS.items():
        c = channels[name]
        params += c_in * c * 9 + 2 * c  # conv weight + BN scale and shift
        macs += c_in * c * 9 * side * side
        acts += c * side * side  # one ReLU per output
        c_in = c
    params += c_in * NUM_CLASSES + NUM_CLASSES
    macs += c_in * NUM_CLASSES
    return {"params": params, "macs": macs, "ops": macs + acts, "size_bytes": 4 * params + 5568}


BASE_CHANNELS = {name: c for name, (c, _) in LAYERS.items()}


def base_row() -> dict:
    m = cost(BASE_CHANNELS)
    return {"accuracy": BASE_ACCURACY, "balanced_accuracy": 0.982, "val_accuracy": 0.979,
            "params": m["params"], "nonzero_params": m["params"] - 688, "macs": m["macs"],
            "nonzero_macs": m["macs"], "ops": m["ops"], "size_bytes": m["size_bytes"],
            "channels": dict(BASE_CHANNELS), "train_seconds": 14.2}


SPACE = {
    "slimming": {"lambda": {"type": "float", "low": 1e-4, "high": 3e-2, "log": True},
                 "prune_ratio": {"type": "float", "low": 0.1, "high": 0.9},
                 "sparsity_epochs": {"type": "int", "low": 3, "high": 6}},
    "magnitude": {"ratio": {"type": "float", "low": 0.2, "high": 0.95},
                  "scope": {"type": "categorical", "choices": ["layer", "global"]}},
    "branch": {"keep_ratio": {"type": "float", "low": 0.3, "high": 0.9},
               "alpha_schedule": {"type": "categorical",
                                  "choices": ["step", "linear", "cosine", "exponential"]}},
    "repr": {"ratio": {"type": "float", "low": 0.1, "high": 0.5},
             "cycles": {"type": "int", "low": 1, "high": 3}},
    "quantize": {"per_channel": {"type": "categorical", "choices": [True, False]}},
}


def _sample(rng: np.random.Generator, stage: str) -> dict:
    out = {}
    for name, s in SPACE[stage].items():
        if s["type"] == "categorical":
            v = s["choices"][int(rng.integers(len(s["choices"])))]
        elif s["type"] == "int":
            v = int(rng.integers(s["low"], s["high"] + 1))
        elif s.get("log"):
            v = float(math.exp(rng.uniform(math.log(s["low"]), math.log(s["high"]))))
        else:
            v = float(rng.uniform(s["low"], s["high"]))
        out[f"{stage}.{name}"] = v
    return out


def _shares(ratio: float) -> dict[str, float]:
    """Share of channels kept per layer when a global threshold removes ``ratio``: later,
    wider layers lose more, as in the network slimming paper."""
    depth = np.linspace(0.3, 1.4, len(LAYERS))
    return {n: float(np.clip(1 - ratio * d, 0.06, 1.0)) for n, d in zip(LAYERS, depth, strict=True)}


def _epoch(acc: float, rng, **extra) -> dict:
    return {"train_loss": float(max(0.02, 2.3 * (1 - acc) + rng.normal(0, 0.02))),
            "train_accuracy": float(min(1, acc + rng.normal(0, 0.004))),
            "val_accuracy": float(min(1, acc + rng.normal(0, 0.006))), "lr": 0.01, **extra}


def _trial(rng, method: str, base: dict) -> tuple[dict, dict, list[dict]]:
    """(params, row, history lines without ids) of one finished trial of ``method``."""
    stages = method.split("+")
    params: dict = {}
    for stage in stages:
        params.update(_sample(rng, stage))
    extra: dict = {}
    hist: list[dict] = []
    shares = {n: 1.0 for n in LAYERS}
    drop = abs(rng.normal(0.004, 0.003))
    nonzero_frac = 1.0
    if "slimming" in stages:
        lam, ratio = params["slimming.lambda"], params["slimming.prune_ratio"]
        shares = _shares(ratio)
        drop += 0.9 * max(0.0, ratio - 0.55) ** 2 + 0.4 * lam
        for e in range(1, params["slimming.sparsity_epochs"] + 1):
            sparsity = 1 - math.exp(-lam * 60 * e)
            acc = BASE_ACCURACY - 0.4 * lam * e - 0.01 * rng.random()
            hist.append(_epoch(acc, rng, stage="slimming", phase="sparsity", epoch=e,
                               sparsity=float(sparsity)))
        for e in range(1, 4):
            hist.append(_epoch(BASE_ACCURACY - drop * (1 + 1 / e), rng, stage="slimming",
                               phase="finetune", epoch=e))
        n_bn = sum(BASE_CHANNELS.values())
        # |gamma| shrinks towards zero with lambda; a heavy tail survives.
        gammas = np.abs(rng.lognormal(math.log(0.5), 0.5, n_bn)) * np.where(
            rng.random(n_bn) < min(0.95, lam * 40), lam * 0.05, 1.0)
        extra["slimming.gammas"] = [round(float(g), 6) for g in gammas]
        extra["slimming.accuracy_before_finetune"] = float(max(0.1, 0.98 - 1.2 * ratio ** 2))
    if "magnitude" in stages:
        nonzero_frac = 1 - params["magnitude.ratio"]
        drop += 0.5 * max(0.0, params["magnitude.ratio"] - 0.7) ** 2
        hist += [_epoch(BASE_ACCURACY - drop * (1 + 1 / e), rng, stage="magnitude",
                        phase="finetune", epoch=e) for e in range(1, 4)]
    if "branch" in stages:
        keep = params["branch.keep_ratio"]
        shares = {n: max(1, round(keep * c)) / c for n, c in BASE_CHANNELS.items()}
        collapse = params["branch.alpha_schedule"] in ("step", "exponential")
        drop += 0.15 * (1 - keep) ** 2 + (0.3 if collapse else 0.0)
        k = np.arange(1, 11) / 10
        alphas = {"linear": 1 - k, "cosine": 0.5 * (1 + np.cos(np.pi * k)),
                  "step": np.floor((1 - k) * 3 + 1e-9) / 3,
                  "exponential": np.where(k < 1, np.exp(-4 * k), 0.0)}
        for e, alpha in enumerate(alphas[params["branch.alpha_schedule"]], start=1):
            acc = BASE_ACCURACY - (0.2 + 0.3 * (0.4 - alpha) if collapse and alpha < 0.4
                                   else 0.02 * (1 - alpha))
            hist.append(_epoch(acc, rng, stage="branch", phase="schedule", epoch=e,
                               alpha=float(alpha)))
    if "repr" in stages:
        plain = BASE_ACCURACY + rng.normal(0.0, 0.003)
        drop = -rng.normal(-0.004, 0.004)  # RePr lands slightly below plain training
        extra["repr.plain_accuracy"] = float(plain)
        extra["repr.filters_dropped"] = int(params["repr.ratio"] * 688)
        # As the method runs: the plain control first, then the S1/S2 cycles.
        n = 6 * params["repr.cycles"]
        hist += [_epoch(0.9 + 0.08 * (1 - math.exp(-k / 3)), rng, stage="repr", phase="plain",
                        epoch=k) for k in range(1, n + 1)]
        e = 0
        for _cycle in range(params["repr.cycles"]):
            for phase, k in (("s1", 4), ("s2", 2)):
                for ep in range(1, k + 1):
                    e += 1
                    hist.append(_epoch(0.9 + 0.08 * (1 - math.exp(-e / 3)), rng, stage="repr",
                                       phase=phase, epoch=ep))
    channels = {n: max(1, round(s * BASE_CHANNELS[n])) for n, s in shares.items()}
    m = cost(channels)
    acc = float(np.clip(BASE_ACCURACY - drop, 0.05, 1.0))
    size = m["size_bytes"] // 4 + 2048 if "quantize" in stages else m["size_bytes"]
    row = {
        "status": "ok", "method": method, "accuracy": acc,
        "balanced_accuracy": acc - 0.001, "val_accuracy": float(min(1, acc + rng.normal(0, 0.004))),
        "base_accuracy": base["accuracy"], "accuracy_drop": base["accuracy"] - acc,
        "params": m["params"], "nonzero_params": int(m["params"] * nonzero_frac),
        "macs": m["macs"], "nonzero_macs": int(m["macs"] * nonzero_frac), "ops": m["ops"],
        "size_bytes": size, "compression": base["params"] / m["params"],
        "speedup": base["macs"] / m["macs"], "train_seconds": float(rng.uniform(5, 40)),
        "channels": {n: channels[n] / BASE_CHANNELS[n] for n in LAYERS},
        **params, **extra,
    }
    return params, row, hist


def make_study(
    root: str | Path,
    name: str = "fake",
    *,
    methods: tuple[str, ...] = ("slimming", "magnitude"),
    ok: int = 12,
    failed: int = 1,
    running: int = 1,
    pending: int = 0,
    objectives: dict | None = None,
    sampler: str = "tpe",
    seed: int = 0,
    base: bool = True,
    resumed: bool = True,
) -> Path:
    """Write a study directory under ``root/name`` and return its path.

    Finished trials take numbers 0..ok+failed-1 (the failed ones among them), then the
    running and pending ones. With ``resumed`` the first finished trial's history repeats
    two steps (the later values win), as after a resume from a checkpoint.
    """
    for m in methods:
        unknown = [s for s in m.split("+") if s not in SPACE]
        if unknown:
            raise ValueError(f"method {m!r}: unknown stage(s) {unknown}; known: {list(SPACE)}")
    rng = np.random.default_rng(seed)
    path = Path(root) / name
    (path / "trials").mkdir(parents=True, exist_ok=True)
    objectives = objectives or {"accuracy": "max", "macs": "min", "params": "min"}
    brow = base_row()
    stages = sorted({s for m in methods for s in m.split("+")})
    study = {
        "name": name, "objectives": objectives, "sampler": sampler, "sampler_seed": seed,
        "trials": ok + failed + running + pending + 2,
        "methods": methods[0] if len(methods) == 1 else list(methods),
        "space": {f"{s}.{p}": spec for s in stages for p, spec in SPACE[s].items()},
        "created": "2025-05-01T10:00:00+00:00",
        "environment": {"prune_study": "0.1.0", "torch": "2.14.1", "python": "3.11.2",
                        "cuda": None, "device": "x86_64", "git_commit": "0" * 40,
                        "ray": "2.60.0", "optuna": "5.0.0"},
    }
    (path / "study.json").write_text(json.dumps(study, indent=2))
    (path / "spec.yaml").write_text(f"name: {name}\nmodel: vgg11\ndata: digits\n")
    if base:
        (path / "base.json").write_text(json.dumps(brow, indent=2))
    n_finished = ok + failed
    failed_at = set(np.random.default_rng(seed + 1).choice(n_finished, failed, replace=False)
                    .tolist())
    history: list[dict] = []
    t0 = 1_746_000_000.0
    for number in range(n_finished + running + pending):
        method = methods[number % len(methods)]
        trial_id = f"{seed:03d}ab{number % 7}f_{number:05d}"
        params, row, hist = _trial(rng, method, brow)
        if len(methods) > 1:
            params = {**params, "pipeline": method}
        doc = {"trial_id": trial_id, "number": number, "params": params, "row": {},
               "last": None, "error": None, "node_id": "f" * 8, "hostname": "worker-1",
               "started": t0 + 40 * number, "ended": None}
        lines = [{"trial_id": trial_id, "step": k, **h} for k, h in enumerate(hist, start=1)]
        if number >= n_finished + running:
            doc["status"] = "pending"
            doc["params"] = {}
            doc["started"] = None
            lines = []
        elif number >= n_finished:
            doc["status"] = "running"
            lines = lines[: max(1, len(lines) // 2)]
            doc["last"] = {k: v for k, v in lines[-1].items() if k != "trial_id"}
        elif number in failed_at:
            doc["status"] = "failed"
            doc["error"] = ("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate "
                            "2.00 GiB")
            lines = lines[:2]
            doc["ended"] = t0 + 40 * number + 3
        else:
            doc["status"] = "ok"
            doc["row"] = row
            doc["last"] = {k: v for k, v in lines[-1].items() if k != "trial_id"}
            doc["ended"] = t0 + 40 * number + row["train_seconds"]
            if resumed and number == 0 and len(lines) > 3:
                # Killed after step 3, resumed from the step-1 checkpoint: steps 2 and 3
                # are reported again with new values; the earlier ones are stale.
                stale = [dict(line, val_accuracy=-1.0) for line in lines[1:3]]
                lines = lines[:1] + stale + lines[1:]
        history += lines
        (path / "trials" / f"{trial_id}.json").write_text(json.dumps(doc, indent=2))
    with open(path / "history.jsonl", "w") as f:
        for line in history:
            f.write(json.dumps(line) + "\n")
    return path
