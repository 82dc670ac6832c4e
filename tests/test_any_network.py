"""Every method on every kind of network, a fixed subset of the zoo (benchmarks/zoo.py,
docs/zoo.md) with one model per structure: a plain VGG, a ResNet (residual additions),
torchvision's MobileNetV3-Small (depthwise convs, squeeze-excite gates, hard-swish, BatchNorm
averaging at momentum 0.01) and a user's own model given by import path (a dense block
concatenating a conv's output with its input, a depthwise conv, a gate, an addition).

Each cell validates as a study spec and runs a short trial on digits, or validate refuses
it with the reason: structured methods physically remove channels and cut MACs, and every
result stays above chance. Resuming a trial at any of its checkpoints gives the
uninterrupted trial's result, and the MACs a trial reports are those of its final model
measured afresh.
"""

from __future__ import annotations

import subprocess

import pytest
import yaml

from prune_core.measure import measure
from prune_core.trial import TrialSpec, run_trial
from studies.spec import SpecError, parse_spec
from tests.conftest import ROOT, TEST_CACHE

# name, arguments, image size. Digits at 16 x 16 pixels asks the same structure
# questions as at 32 x 32 with each epoch 4x cheaper; MobileNetV3 downsamples 32x and
# does not learn digits below 32 x 32.
MODELS = {
    "vgg11": ("vgg11", {"width": 0.25}, 16),
    "resnet20": ("resnet20", {"width": 0.5}, 16),
    "mobilenet_v3": ("torchvision:mobilenet_v3_small", {"width_mult": 0.5}, 32),
    "user": ("import:tests.user_models:dense_gate_net", {"width": 16}, 16),
}
# Cells validate refuses, and what its reason says.
REFUSED = {("user", "branch"): "no conv layer that a branch can replace"}
BASELINE = {"epochs": 10, "lr": 0.05}
# One short setting per method; structured ones remove half the channels or more.
CELLS = {
    "none": {"finetune_epochs": 1},
    "slimming": {"lambda": 1e-2, "prune_ratio": 0.5, "sparsity_epochs": 2,
                 "finetune_epochs": 3},
    "magnitude": {"mode": "structured", "ratio": 0.5, "finetune_epochs": 3},
    "factorize": {"variant": "separable", "layers": 2, "rank": 0.5, "finetune_epochs": 2},
    "quantize": {"calibration_batches": 2},
    "transtailor": {"tau": 1.0, "step_ratio": 0.4, "max_rounds": 1, "alpha_epochs": 1,
                    "finetune_epochs": 2, "patience": 2},
    "repr": {"epochs": 5, "s1": 2, "s2": 1, "cycles": 1, "ratio": 0.3, "lr": 0.05},
    "branch": {"keep_ratio": 0.5, "steps": 2, "epochs_per_step": 1, "finetune_epochs": 2},
}
# Methods that remove channels: at least this many times fewer MACs at the cell's setting.
STRUCTURED = {"slimming": 1.3, "magnitude": 1.3, "transtailor": 1.3}


def _spec(model: str, method: str) -> TrialSpec:
    name, kw, size = MODELS[model]
    return TrialSpec(model=name, model_kw=kw, methods=method, data="digits",
                     data_kw={"image_size": size}, baseline=BASELINE, finetune={"lr": 0.01},
                     cache_dir=str(TEST_CACHE))


def _study(model: str, method: str) -> dict:
    name, kw, size = MODELS[model]
    model_field = ({"import": name.removeprefix("import:"), "kwargs": kw}
                   if name.startswith("import:") else {"name": name, **kw})
    return {"name": f"{model}-{method}", "model": model_field, "methods": method,
            "data": {"name": "digits", "image_size": size},
            "baseline": BASELINE, "trials": 1,
            "space": {f"{method}.{k}": v for k, v in CELLS[method].items()},
            "objectives": {"accuracy": "max", "macs": "min"}}


def _run(model: str, method: str, resume: dict | None = None):
    reports, checkpoints = [], []

    def report(metrics, checkpoint=None):
        reports.append(metrics)
        if checkpoint is not None:
            checkpoints.append(checkpoint)

    params = {f"{method}.{k}": v for k, v in CELLS[method].items()}
    out: dict = {}
    row = run_trial({"study": _spec(model, method).to_dict(), "params": params}, report,
                    resume=resume, model_out=out)
    return row, checkpoints, out["model"]


def _one_per_phase(checkpoints: list[dict]) -> list[dict]:
    seen, out = set(), []
    for c in checkpoints:
        key = (c["stage"], None if c["inner"] is None else c["inner"]["fit_call"])
        if key not in seen:
            seen.add(key)
            out.append(c)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("model", list(MODELS))
@pytest.mark.parametrize("method", list(CELLS))
def test_every_method_runs_on_every_network(model, method, digits):
    if (model, method) in REFUSED:
        with pytest.raises(SpecError, match=REFUSED[model, method]):
            parse_spec(_study(model, method))
        return
    spec = parse_spec(_study(model, method))  # validates: a spec that validates runs
    assert spec.model == MODELS[model][0]
    row, checkpoints, final = _run(model, method)
    assert row["status"] == "ok"
    assert row["accuracy"] > 2 / digits.num_classes, row["accuracy"]  # twice chance
    if method in STRUCTURED:
        assert row["speedup"] >= STRUCTURED[method], row["speedup"]
        assert row["compression"] > 1.0
    if method == "branch":
        assert row["speedup"] > 1.0 and row["branch.layers_branched"]
    # What the row reports is what the final model measures.
    size = MODELS[model][2]
    fresh = measure(getattr(final, "float_structure", final), (3, size, size))
    assert (row["macs"], row["params"]) == (fresh["macs"], fresh["params"])
    # Resuming ends where the uninterrupted trial ended, from a checkpoint in every
    # training phase and at every stage boundary (later epochs of one phase resume
    # through the same code: load the weights and the optimizer, continue the loop).
    # MobileNetV3, several times the cost of the others per trial, resumes from its last
    # phase only: the one whose weights are loaded into the pruned structure.
    phases = _one_per_phase(checkpoints)
    for ckpt in phases[-1:] if model == "mobilenet_v3" else phases:
        again, _, _ = _run(model, method, resume=ckpt)
        for key in ("accuracy", "val_accuracy", "macs", "params", "nonzero_params"):
            assert again[key] == row[key], (key, ckpt["stage"], ckpt["step"])


def test_the_matrix_covers_every_registered_method():
    """A new method gets a cell here (its short setting) or this fails: the matrix is not a
    hand-kept list that can leave a method out without a word."""
    from prune_core.methods import list_methods

    assert sorted(CELLS) == list_methods(), (
        "add a short setting for each new method to CELLS (and STRUCTURED if it removes "
        f"channels): missing {sorted(set(list_methods()) - set(CELLS))}, "
        f"unknown {sorted(set(CELLS) - set(list_methods()))}")
    assert set(STRUCTURED) <= set(CELLS) and {m for m, _ in REFUSED} <= set(MODELS)


def test_validate_refuses_a_method_with_nothing_to_act_on(tmp_path):
    spec = {"name": "c3-slimming", "model": {"name": "c3", "k": 8},
            "methods": ["slimming", "branch"], "trials": 1,
            "objectives": {"accuracy": "max", "macs": "min"}}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    proc = subprocess.run([str(ROOT / ".venv/bin/prune-study"), "validate", str(path)],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    out = proc.stdout + proc.stderr
    assert "method 'slimming'" in out and "method 'branch'" in out and "'c3'" in out
    assert "BatchNorm" in out and "Traceback" not in out


@pytest.mark.slow
def test_a_study_of_a_users_own_model_runs_on_ray(tmp_path):
    """The user's module is imported again in Ray's worker processes, from the directory
    the study was started in."""
    spec = _study("user", "slimming")
    spec.update({"trials": 2, "storage": str(tmp_path), "max_concurrent": 2,
                 "sampler": {"name": "random", "seed": 0}})
    spec["space"]["slimming.prune_ratio"] = {"type": "float", "low": 0.3, "high": 0.6}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    proc = subprocess.run([str(ROOT / ".venv/bin/prune-study"), "run", str(path)],
                          capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    status = subprocess.run([str(ROOT / ".venv/bin/prune-study"), "status",
                             str(tmp_path / "user-slimming"), "--json"],
                            capture_output=True, text=True, cwd=ROOT, timeout=120)
    doc = yaml.safe_load(status.stdout)
    assert doc["finished"] == 2 and doc["failed"] == 0, doc
