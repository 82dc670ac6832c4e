"""The model zoo as a benchmark: which methods validate, and then run, on which networks.

For every torchvision classification model (``torchvision.models.list_models(module=
torchvision.models)``) and ~50 timm architectures across families, built untrained at a
small input size and width where the constructor allows it (TORCHVISION_SETTINGS, TIMM),
and for every registered method (``prune_core.methods.list_methods()``), one cell:

- **refused** at validate: ``studies.spec.parse_spec`` of a one-method spec (SPACES: a
  small space whose corners prune hard) raised ``SpecError``; the cell keeps its errors
  and a short reason (``refusal_kind``). Validation includes each method's cheap check
  and the rehearsal (prune_core/rehearsal.py) at the space's corners.
- **pruned**: validation accepted, then the method's real function ran through a real
  ``Context`` at a middle point of the space (POINTS) on 64/32/32 digits images at the
  model's size, one epoch per training phase; the eval-mode output shape is the one
  before, the output is finite, and a training step (forward, cross-entropy backward,
  SGD step) runs. MACs and params before and after (``count_cost``). ``quantize``'s int8
  model is terminal: its cell checks the output only (``quantized``).
- **failed** after validate: validation accepted but the short run raised, or its output
  was wrong. The project's floor is zero of these: each one is a bug.
- **diverged**: the short run's training loss went to nan or inf (``TrainingDiverged``),
  or the model's eval-mode output did after the method trained it (BatchNorm running
  statistics of an untrained network's exploding activations; ``FloatingPointError``):
  an untrained network on 64 images, not a structural failure. The output before the
  method is checked finite first, so a model that starts non-finite is a failure.
- **timeout**: the model's worker passed ``--timeout`` (per model, all its methods).
- **crashed**: validation raised something other than ``SpecError``, or the worker died.

Each model runs in a child process (``--one MODEL``, a subprocess of this script); the
JSON (``--json``, default docs/zoo.json) is rewritten after every model, so a run stopped
half-way continues with ``--resume`` (models already in it are skipped; other runs
merge their models into it). The Markdown (``--markdown``, default docs/zoo.md) is
written from the JSON at the end of every run, or alone with ``--report``.

    python -m benchmarks.zoo                       # the whole zoo: hours on 2 cores
    python -m benchmarks.zoo --resume              # go on where an interrupted run stopped
    python -m benchmarks.zoo --models torchvision:resnet18,timm:convnext_atto \\
        --methods slimming,magnitude
    python -m benchmarks.zoo --report              # docs/zoo.md again from docs/zoo.json
    python -m benchmarks.zoo --merge /tmp/timm.json  # fold a run of part of the zoo (its
                                                   # own --json) into docs/zoo.json
    python -m benchmarks.zoo --quick --json /tmp/z.json --markdown /tmp/z.md  # a minute
"""

from __future__ import annotations

import argparse
import copy
import faulthandler
import json
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from benchmarks._common import ROOT, Run, busy_note, load_1min, machine_load

DOCS = ROOT / "docs"
TIMEOUT_S = 600
THREADS = 2
SUBSET = {"train": 64, "val": 32, "test": 32}  # digits images of the short run
BATCH = 32
# Errors that mean the numbers went to nan or inf (the training loss, or the output).
DIVERGED = ("TrainingDiverged", "FloatingPointError")
OUTCOMES = {"pruned": "P", "refused": "R", "failed": "F", "diverged": "D", "timeout": "T",
            "crashed": "C"}

# The spec's space per method (its corners are rehearsed), and the point the short run
# takes in it (a middle one).
SPACES = {
    "none": {"none.finetune_epochs": 0},
    "slimming": {"slimming.prune_ratio": {"low": 0.3, "high": 0.9},
                 "slimming.sparsity_epochs": 1, "slimming.finetune_epochs": 1},
    "magnitude": {"magnitude.mode": "structured", "magnitude.ratio": {"low": 0.3, "high": 0.9},
                  "magnitude.finetune_epochs": 1},
    "transtailor": {"transtailor.step_ratio": {"low": 0.2, "high": 0.5},
                    "transtailor.max_rounds": 2, "transtailor.tau": 1.0,
                    "transtailor.alpha_epochs": 1, "transtailor.finetune_epochs": 1},
    "repr": {"repr.epochs": 3, "repr.s1": 1, "repr.s2": 1, "repr.cycles": 1,
             "repr.ratio": {"low": 0.1, "high": 0.5}},
    "branch": {"branch.keep_ratio": {"low": 0.25, "high": 0.75}, "branch.steps": 1,
               "branch.epochs_per_step": 1, "branch.finetune_epochs": 0},
    "factorize": {"factorize.variant": {"choices": ["orthogonal", "separable", "lowrank"]},
                  "factorize.layers": {"low": 1, "high": 4},
                  "factorize.rank": {"low": 0.25, "high": 1.0}, "factorize.finetune_epochs": 0},
    "quantize": {"quantize.calibration_batches": 1},
}
POINTS = {
    "slimming": {"slimming.prune_ratio": 0.5},
    "magnitude": {"magnitude.ratio": 0.5},
    "transtailor": {"transtailor.step_ratio": 0.35},
    "repr": {"repr.ratio": 0.3},
    "branch": {"branch.keep_ratio": 0.5},
    "factorize": {"factorize.variant": "lowrank", "factorize.layers": 2, "factorize.rank": 0.5},
}

# torchvision: every classification model at 32 px, except these sizes and settings.
TORCHVISION_SIZES = {"alexnet": 64, "inception_v3": 75, "maxvit_t": 224, "vit_h_14": 28}
AUX_OFF = {"aux_logits": False, "init_weights": True}
# timm: (name, kwargs, input size); every name checked with timm.is_model.
TIMM = [
    ("resnet10t", {}, 32), ("resnet18", {}, 32), ("resnet26d", {}, 32),
    ("seresnext26d_32x4d", {}, 32), ("regnetx_002", {}, 32), ("regnety_002", {}, 32),
    ("regnetz_b16", {}, 32), ("efficientnet_b0", {}, 32), ("tf_efficientnet_lite0", {}, 32),
    ("mobilenetv3_small_050", {}, 32), ("mobilenetv3_large_075", {}, 32),
    ("mobilenetv4_conv_small", {}, 32), ("ghostnet_050", {}, 32), ("ghostnetv2_100", {}, 64),
    ("densenet121", {}, 32), ("convnext_atto", {}, 32), ("convnextv2_atto", {}, 32),
    ("vit_tiny_patch16_224", {"img_size": 32}, 32), ("deit_tiny_patch16_224", {"img_size": 32}, 32),
    ("deit_tiny_distilled_patch16_224", {"img_size": 32}, 32),
    ("swin_tiny_patch4_window7_224", {"img_size": 32}, 32), ("pit_ti_224", {"img_size": 32}, 32),
    ("mixer_s32_224", {"img_size": 32}, 32), ("levit_128s", {"img_size": 64}, 64),
    ("mobilevit_xxs", {}, 32), ("mobilevitv2_050", {}, 32), ("edgenext_xx_small", {}, 32),
    ("efficientvit_b0", {}, 32), ("fastvit_t8", {}, 32), ("poolformer_s12", {}, 32),
    ("inception_next_atto", {}, 32), ("repvgg_a0", {}, 32), ("mobileone_s0", {}, 32),
    ("dla46_c", {}, 32), ("dla34", {}, 32), ("mixnet_s", {}, 32), ("lcnet_050", {}, 32),
    ("resnest14d", {}, 32), ("res2net50_14w_8s", {}, 32), ("dpn48b", {}, 32),
    ("cspresnet50", {}, 32), ("cs3darknet_s", {}, 32), ("hrnet_w18_small", {}, 32),
    ("rexnet_100", {}, 32), ("fbnetc_100", {}, 32), ("tinynet_e", {}, 32),
    ("xception41", {}, 32), ("inception_v3", {}, 75), ("hgnetv2_b0", {}, 32),
    ("ese_vovnet19b_slim", {}, 32), ("nf_resnet26", {}, 32), ("gernet_s", {}, 32),
    ("mnasnet_small", {}, 32),
]
QUICK = [
    {"model": "import:tests.user_models:dense_gate_net", "kw": {"width": 16}, "size": 16},
    {"model": "torchvision:mobilenet_v3_small", "kw": {"width_mult": 0.5}, "size": 32},
    {"model": "timm:resnet10t", "kw": {}, "size": 32},
]
QUICK_METHODS = ["slimming", "magnitude"]


def torchvision_entry(name: str) -> dict:
    kw: dict = {}
    if name.startswith("mobilenet_v"):
        kw = {"width_mult": 0.5}
    elif name in ("googlenet", "inception_v3"):
        kw = dict(AUX_OFF)
    size = TORCHVISION_SIZES.get(name, 32)
    if name.startswith("vit_"):
        kw = {"image_size": size}
    return {"model": f"torchvision:{name}", "kw": kw, "size": size}


def zoo() -> list[dict]:
    """Every model of the benchmark: ``{"model": "<source>:<name>", "kw", "size"}``."""
    import torchvision.models as tvm

    return ([torchvision_entry(n) for n in tvm.list_models(module=tvm)]
            + [{"model": f"timm:{n}", "kw": kw, "size": s} for n, kw, s in TIMM])


def find(key: str) -> dict:
    for entry in [*zoo(), *QUICK]:
        if entry["model"] == key:
            return entry
    raise SystemExit(f"unknown zoo model {key!r}")


def spec_model(entry: dict) -> dict:
    name = entry["model"]
    if name.startswith("import:"):
        return {"import": name.partition(":")[2], "kwargs": dict(entry["kw"])}
    return {"name": name, **entry["kw"]}


def spec(entry: dict, method: str) -> dict:
    """The one-method study spec ``parse_spec`` validates for this cell."""
    return {"name": "zoo", "model": spec_model(entry),
            "data": {"name": "digits", "image_size": entry["size"]},
            "baseline": {"epochs": 1}, "methods": method,
            "space": copy.deepcopy(SPACES.get(method, {})),
            "objectives": {"accuracy": "max", "macs": "min"}, "trials": 1}


def run_point(method: str) -> dict:
    """The short run's ``{stage.param: value}``: the space's fixed values, then POINTS."""
    fixed = {k: v for k, v in SPACES.get(method, {}).items() if not isinstance(v, dict)}
    return {**fixed, **POINTS.get(method, {})}


# ------------------------------------------------------------------------ the worker


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:300] if text else ''}"


def _where(e: BaseException) -> str | None:
    """The innermost frame of the project's own code (prune_core/, studies/)."""
    frames = [f for f in traceback.extract_tb(e.__traceback__)
              if f.filename.startswith(str(ROOT / "prune_core"))
              or f.filename.startswith(str(ROOT / "studies"))]
    if not frames:
        return None
    f = frames[-1]
    return f"{Path(f.filename).relative_to(ROOT)}:{f.lineno} in {f.name}"


def refusal_kind(errors: list[str]) -> str:
    """A short reason for a refusal, the same for every model refused alike."""
    methods = [e for e in errors if e.startswith("methods:")]
    if not methods:
        return "spec: " + "; ".join(sorted({e.partition(":")[0] for e in errors}))
    text = methods[0]
    if "does not load into the rebuilt model" in text:
        return "rehearsal failed: checkpoint does not reload"
    for pattern, kind in (
            (r"rehearsed on random images, .*? failed(?: in .*?)?: ([A-Za-z_][\w.]*): ",
             "rehearsal failed: {}"),
            (r"tracing the model failed \(([A-Za-z_][\w.]*)", "tracing failed: {}"),
            (r"torch\.export cannot capture its graph \(([A-Za-z_][\w.]*)",
             "torch.export failed: {}"),
            (r"building the model failed: ([A-Za-z_][\w.]*)", "building failed: {}")):
        m = re.search(pattern, text)
        if m:
            return kind.format(m.group(1))
    if "carry a BatchNorm scale factor" in text:
        return "no BatchNorm"
    reason = text.split("': ", 1)[-1]
    return re.split(r" \(|;|:", reason, maxsplit=1)[0][:80]


def _eval_shape(model, x) -> list[int]:
    import torch

    model.eval()
    with torch.no_grad():
        out = model(x)
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"eval-mode forward returns {type(out).__name__}, not a tensor")
    if not torch.isfinite(out).all():
        raise FloatingPointError("eval-mode output is not finite")
    return list(out.shape)


def _train_step(model, data) -> float:
    import torch
    import torch.nn.functional as F

    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.01, momentum=0.9)
    x, y = data.normalize(data.train.x[:BATCH]), data.train.y[:BATCH]
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    if not math.isfinite(loss.item()):
        raise FloatingPointError(f"training loss is {loss.item()}")
    return loss.item()


def short_run(entry: dict, method: str, data) -> dict:
    """The method's real function at its middle point on a fresh model: the cell of a
    method that validation accepted (``pruned`` or ``failed``)."""
    import torch

    from prune_core import models
    from prune_core.measure import count_cost
    from prune_core.methods import Context, parse_chain, split_params
    from prune_core.train import TrainConfig, seed_everything

    def build(seed: int = 0):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return models.build(entry["model"], num_classes=10, **entry["kw"])

    shape = data.input_shape
    x = data.normalize(data.val.x[:4])
    step = "setup"
    try:
        stage = parse_chain([method])[0]
        values = split_params([stage], run_point(method))[stage.name]
        model = build()
        before = count_cost(model, shape)
        shape_before = _eval_shape(model, x)
        ctx = Context(data=data, train=TrainConfig(epochs=1, batch_size=BATCH, lr=0.01),
                      stage=stage.name, results={}, base_model=copy.deepcopy(model), seed=0,
                      fresh_model=build)
        seed_everything(0)
        step = "method"
        model = stage.method(model, values, ctx)
        step = "eval forward"
        shape_after = _eval_shape(model, x)
        if shape_after != shape_before:
            raise ValueError(f"eval output shape {shape_after}, before {shape_before}")
        cell = {"outcome": "pruned", "point": values, "shape": shape_after,
                "params_before": before["params"], "macs_before": before["macs"]}
        if stage.method.terminal:
            return {**cell, "quantized": True}
        step = "train step"
        loss = _train_step(model, data)
        step = "measure"
        after = count_cost(model, shape)
    except Exception as e:  # the point of the benchmark: recorded, never hidden
        # The loss of an untrained network on 64 images went to nan or inf, or its output
        # after the method's training did: numbers, not structure (the rehearsal does not
        # count it either); listed apart from failures.
        outcome = "diverged" if type(e).__name__ in DIVERGED else "failed"
        return {"outcome": outcome, "step": step, "error": _first_line(e), "where": _where(e)}
    return {**cell, "params_after": after["params"], "macs_after": after["macs"],
            "nonzero_macs_after": after["nonzero_macs"], "train_loss": loss}


def cell(entry: dict, method: str, data) -> dict:
    """Validate the spec; where it is accepted, the short run."""
    from studies.spec import SpecError, parse_spec

    t0 = time.perf_counter()
    try:
        parse_spec(spec(entry, method), source=f"zoo {entry['model']} {method}")
    except SpecError as e:
        return {"outcome": "refused", "reason": refusal_kind(e.errors), "errors": e.errors,
                "validate_s": time.perf_counter() - t0}
    except Exception as e:  # validation must answer with SpecError
        return {"outcome": "crashed", "step": "validate", "error": _first_line(e),
                "where": _where(e), "validate_s": time.perf_counter() - t0}
    validate_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    out = short_run(entry, method, data)
    return {**out, "validate_s": validate_s, "run_s": time.perf_counter() - t1}


def worker(key: str, methods: list[str], cells_path: Path, threads: int) -> None:
    """``--one``: one model's cells, each appended to ``cells_path`` as a JSON line
    (``{"start": method}`` first, so the parent knows which cell a timeout cut)."""
    import warnings

    import torch

    from prune_core import data as datasets
    from prune_core import models
    from prune_core.data import Split
    from prune_core.measure import count_cost

    faulthandler.enable()  # a crash leaves its Python stack in the log
    warnings.simplefilter("ignore")
    torch.set_num_threads(threads)
    entry = find(key)

    def emit(line: dict) -> None:
        with open(cells_path, "a") as f:
            f.write(json.dumps(line) + "\n")

    full = datasets.load("digits", image_size=entry["size"])
    data = replace(full, **{s: Split(getattr(full, s).x[:n], getattr(full, s).y[:n])
                            for s, n in SUBSET.items()})
    info: dict = {}
    try:
        torch.manual_seed(0)
        cost = count_cost(models.build(entry["model"], num_classes=10, **entry["kw"]),
                          data.input_shape)
        info = {"params": cost["params"], "macs": cost["macs"]}
    except Exception as e:
        info = {"error": _first_line(e)}
    emit({"info": info})
    for method in methods:
        emit({"start": method, "t": time.time()})
        emit({"method": method, "cell": cell(entry, method, data)})


# ------------------------------------------------------------------------ the parent


def _worker(entry: dict, methods: list[str], timeout: float, threads: int
            ) -> tuple[list[dict], int | None, str]:
    """A worker process on ``methods``: its JSON lines, its exit code (None: killed at
    ``timeout``) and its log."""
    with tempfile.TemporaryDirectory(prefix="zoo-") as d:
        cells_path, log_path = Path(d) / "cells.jsonl", Path(d) / "log.txt"
        cmd = [sys.executable, "-m", "benchmarks.zoo", "--one", entry["model"],
               "--methods", ",".join(methods), "--cells", str(cells_path),
               "--threads", str(threads)]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
        with open(log_path, "w") as log:
            proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                    env=env, start_new_session=True)
            try:
                rc = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)  # the worker's own process group
                proc.wait()
                rc = None
        lines = [json.loads(s) for s in cells_path.read_text().splitlines()] \
            if cells_path.exists() else []
        return lines, rc, log_path.read_text(errors="replace")


def crash_cell(rc: int, log: str) -> dict:
    """A worker that died: its exit code or signal, the C library's or Python's last
    words, and the project's frames of the faulthandler stack (innermost first)."""
    what = f"signal {signal.Signals(-rc).name}" if rc < 0 and -rc in signal.valid_signals() \
        else f"exit code {rc}"
    lines = [s.strip() for s in log.splitlines() if s.strip()]
    fatal = [s for s in lines if s.startswith("Fatal Python error") or "corruption" in s
             or s.startswith(("Traceback", "RuntimeError", "MemoryError"))]
    frames = [re.sub(r'File "' + re.escape(str(ROOT)) + r'/(.*)", line (\d+) in (.*)',
                     r"\1:\2 in \3", s) for s in lines
              if s.startswith(f'File "{ROOT}/prune_core') or s.startswith(f'File "{ROOT}/studies')]
    step = "validate" if any(f.startswith("studies/spec.py") for f in frames) else \
        "run" if frames else "worker"
    return {"outcome": "crashed", "step": step,
            "error": f"the worker died ({what}){': ' + '; '.join(fatal[:3]) if fatal else ''}",
            "where": frames[0] if frames else None, "stack": frames[:8],
            "log_tail": [s[:300] for s in lines if "Extension modules" not in s][-15:]}


def run_model(entry: dict, methods: list[str], timeout: float, threads: int) -> dict:
    """One model's record, from worker processes limited to ``timeout`` seconds in all. A
    worker that dies leaves its cell ``crashed``; a new one takes the methods left."""
    t0 = time.perf_counter()
    record = {"source": entry["model"].partition(":")[0], "model": entry["model"],
              "kw": entry["kw"], "size": entry["size"], "cells": {}}
    todo = list(methods)
    while todo:
        left = timeout - (time.perf_counter() - t0)
        lines, rc, log = _worker(entry, todo, left, threads) if left > 0 else ([], None, "")
        current = None  # the method the worker had started and not finished
        for line in lines:
            if "info" in line:
                record.update(line["info"])
            elif "start" in line:
                current = line["start"]
            else:
                record["cells"][line["method"]] = line["cell"]
                current = None
        todo = [m for m in todo if m not in record["cells"]]
        if rc is None:
            for m in todo:
                record["cells"][m] = {"outcome": "timeout", "timeout_s": timeout,
                                      "cut": m == current}
            break
        if todo:  # died: the cell it was in, or (before any cell) every cell left
            for m in [current] if current else todo:
                record["cells"][m] = crash_cell(rc, log)
            todo = [m for m in todo if m not in record["cells"]]
    record["cells"] = {m: record["cells"][m] for m in methods}
    record["seconds"] = time.perf_counter() - t0
    return record


def outcome(c: dict) -> str:
    """A cell's outcome as classified now (records written before ``diverged`` existed, or
    before it counted a non-finite output, called such a run failed)."""
    if c.get("outcome") == "failed" and c.get("error", "").startswith(DIVERGED):
        return "diverged"
    return c.get("outcome", "-")


def letters(record: dict, methods: list[str]) -> str:
    return "".join(OUTCOMES.get(outcome(record["cells"].get(m, {})), "-") for m in methods)


def progress(record: dict, methods: list[str]) -> str:
    failed = [f"{m}: {c.get('error', '')[:100]}" for m, c in record["cells"].items()
              if c["outcome"] in ("failed", "crashed")]
    line = f"{record['model']:<48} {record['seconds']:7.1f} s  {letters(record, methods)}"
    return line + ("  FAILED " + "; ".join(failed) if failed else "")


def save(doc: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    tmp.replace(path)


def merge(path: Path, others: list[Path]) -> dict:
    """The results at ``path`` (if any) with every model and run of ``others`` added, in
    zoo order; a model in several keeps the cells of the last, over those before."""
    docs = [json.loads(p.read_text()) for p in [path, *others] if p.exists()]
    doc = docs[0]
    for other in docs[1:]:
        for key, record in other["models"].items():
            old = doc["models"].get(key)
            if old:
                record = {**record, "cells": {**old["cells"], **record["cells"]}}
            doc["models"][key] = record
        doc["runs"] += other["runs"]
        doc["settings"]["methods"] = list(dict.fromkeys(
            [*doc["settings"]["methods"], *other["settings"]["methods"]]))
    order = {e["model"]: i for i, e in enumerate([*zoo(), *QUICK])}
    doc["models"] = dict(sorted(doc["models"].items(), key=lambda kv: order.get(kv[0], 1e9)))
    return doc


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("torch", "torchvision", "timm", "torch-pruning"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


# ------------------------------------------------------------------------ the report


def counts(doc: dict) -> dict[str, dict[str, int]]:
    """method -> outcome -> number of models."""
    order = [*SPACES, *doc["settings"]["methods"]]
    methods = sorted(set(doc["settings"]["methods"]), key=order.index)
    out = {m: dict.fromkeys(OUTCOMES, 0) for m in methods}
    for record in doc["models"].values():
        for m, c in record["cells"].items():
            out.setdefault(m, dict.fromkeys(OUTCOMES, 0))[outcome(c)] += 1
    return out


def _n(x: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if x >= scale:
            return f"{x / scale:.3g}{unit}"
    return f"{x:.0f}"


def cell_text(c: dict) -> str:
    o = outcome(c)
    if o == "refused":
        return f"refused: {refusal_kind(c['errors'])}"
    if o in ("failed", "crashed", "diverged"):
        return f"{o.upper()}: {c['step']}: {c['error'][:90]}"
    if o == "timeout":
        return "timeout"
    if c.get("quantized"):
        return "quantized, shape ok"
    return (f"{_n(c['macs_before'])}→{_n(c['macs_after'])} "
            f"({c['macs_after'] / max(1, c['macs_before']):.2f})")


def _md(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown(doc: dict) -> str:
    s = doc["settings"]
    n = counts(doc)
    methods = list(n)
    failed = sum(v["failed"] for v in n.values())
    lines = [
        "# Model zoo: which methods validate, and then run, on which networks", "",
        f"{len(doc['models'])} of the zoo's {len(zoo())} models (torchvision's "
        "classification models and timm architectures across families, untrained, at a "
        "small input size and width), each "
        f"with every method: `parse_spec` of a one-method spec validates it (the method's "
        "check and the rehearsal at the space's corners); where it is accepted, the "
        "method's real function runs at a middle point of the space on "
        f"{s['subset']['train']}/{s['subset']['val']}/{s['subset']['test']} digits images "
        "(one epoch per training phase), then the eval output shape is compared with the "
        "one before and a training step (cross-entropy, SGD) runs. Each model ran in its "
        f"own process, limited to {s['timeout_s']} s. Generated by `benchmarks/zoo.py` "
        "from the JSON beside this file.", "",
        "## Outcomes", "",
        "**failed after validate** must be 0: validation accepted the pair and the run "
        f"then raised (a bug). Here: **{failed}**. **crashed** (validation raised "
        "something other than SpecError, or the worker process died) must be 0 too: "
        f"here {sum(v['crashed'] for v in n.values())}. **diverged**: the short run's loss, "
        "or the model's output after the method trained it, went to nan or inf (an "
        "untrained network, 64 images, one epoch a phase: numbers, not structure; the "
        "rehearsal does not count it either). **timeout**: the model's "
        "worker passed its time limit before this cell.", "",
        "| method | pruned | refused | failed after validate | diverged | timeout | crashed |",
        "|---|---|---|---|---|---|---|"]
    for m in methods:
        v = n[m]
        lines.append(f"| {m} | {v['pruned']} | {v['refused']} | {v['failed']} | "
                     f"{v['diverged']} | {v['timeout']} | {v['crashed']} |")
    lines += ["", "## Refusal reasons", "", "| method | reason | models |", "|---|---|---|"]
    for m in methods:
        reasons: dict[str, int] = {}
        for r in doc["models"].values():
            c = r["cells"].get(m)
            if c and c["outcome"] == "refused":
                reason = refusal_kind(c["errors"])  # as classified now (--report)
                reasons[reason] = reasons.get(reason, 0) + 1
        for reason, k in sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0])):
            lines.append(f"| {m} | {_md(reason)} | {k} |")
    bad = [(r["model"], m, c) for r in doc["models"].values() for m, c in r["cells"].items()
           if outcome(c) in ("failed", "crashed", "diverged")]
    if bad:
        lines += ["", "## Failed after validate, diverged, and crashes", "",
                  "| model | method | step | error | where |", "|---|---|---|---|---|"]
        lines += [f"| {model} | {m} | {c['step']} | {_md(c['error'])} | {c.get('where') or ''} |"
                  for model, m, c in bad]
    lines += ["", "## Models", "",
              "Per method: MACs before→after (after / before), or why not. Spaces: "
              + "; ".join(f"`{m}` {json.dumps(s['spaces'][m])}" for m in methods
                          if m in s["spaces"]) + ". Run at: "
              + "; ".join(f"`{m}` {json.dumps(s['points'][m])}" for m in methods
                          if m in s["points"]) + ".", "",
              "| source | model | build kwargs | input | params (M) | s (last run) | "
              + " | ".join(methods) + " |", "|---" * (6 + len(methods)) + "|"]
    for r in doc["models"].values():
        kw = ", ".join(f"{k}={v}" for k, v in r["kw"].items())
        params = f"{r['params'] / 1e6:.2f}" if "params" in r else "?"
        cells = [_md(cell_text(r["cells"][m])) if m in r["cells"] else "" for m in methods]
        name = r["model"].partition(":")[2]
        lines.append(f"| {r['source']} | {name} | {_md(kw)} | {r['size']} | {params} | "
                     f"{r['seconds']:.0f} | " + " | ".join(cells) + " |")
    lines += ["", "## Runs", ""]
    for run in doc["runs"]:
        end = (f"load before and after {run['load_before']}, {run['load_after']}"
               if "load_after" in run else f"load before {run['load_before']}; interrupted")
        lines += [f"- `{run['command']}`: {run['models_run']} models in "
                  f"{run['seconds'] / 60:.1f} min, torch threads per worker "
                  f"{run.get('threads')}, started {run['started']}; {end}"
                  + (f". {run['busy_note']}" if run.get("busy_note") else "")]
    total = sum(run["seconds"] for run in doc["runs"])
    env = doc["environment"]
    lines += ["", f"Total wall time: {total / 60:.1f} min. Machine: {env.get('machine')}, "
              f"{env.get('cpus')} cores; "
              + ", ".join(f"{k} {v}" for k, v in doc["versions"].items())
              + f"; git {env.get('git_commit')}{' (dirty)' if env.get('dirty') else ''}."]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> dict:
    from prune_core.methods import list_methods

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", help="comma-separated model keys (torchvision:resnet18, "
                                     "timm:resnet10t) or bare names; default: the whole zoo")
    ap.add_argument("--methods", help="comma-separated methods; default: every registered one")
    ap.add_argument("--json", type=Path, help="results cache (default docs/zoo.json; with "
                                              "--quick, docs/zoo-quick.json)")
    ap.add_argument("--markdown", type=Path, help="report (default: the JSON's path, .md)")
    ap.add_argument("--resume", action="store_true", help="skip models already in the JSON")
    ap.add_argument("--report", action="store_true", help="only write the Markdown from the JSON")
    ap.add_argument("--merge", type=Path, nargs="+", metavar="JSON",
                    help="fold these results (runs with their own --json, e.g. on other "
                         "machines) into --json, then write the Markdown; their models win")
    ap.add_argument("--quick", action="store_true",
                    help=f"{len(QUICK)} small models, methods {', '.join(QUICK_METHODS)}")
    ap.add_argument("--timeout", type=float, default=TIMEOUT_S,
                    help=f"seconds per model, all its methods (default {TIMEOUT_S})")
    ap.add_argument("--threads", type=int, default=THREADS,
                    help=f"torch threads per worker (default {THREADS}; on a machine other "
                         "processes keep busy, 1: two threads' spin-waits then slow small "
                         "models down many times over)")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # the worker: one model
    ap.add_argument("--cells", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    registered = [m for m in SPACES if m in list_methods()] + \
        [m for m in list_methods() if m not in SPACES]  # a new method: its defaults
    methods = args.methods.split(",") if args.methods else \
        (QUICK_METHODS if args.quick else registered)
    unknown = sorted(set(methods) - set(list_methods()))
    if unknown:
        ap.error(f"unknown method(s) {', '.join(unknown)}; known: {', '.join(list_methods())}")
    if args.one:
        worker(args.one, methods, args.cells, args.threads)
        return {}

    json_path = args.json or DOCS / ("zoo-quick.json" if args.quick else "zoo.json")
    md_path = args.markdown or json_path.with_suffix(".md")
    if args.merge:
        missing = [str(p) for p in args.merge if not p.exists()]
        if missing:
            ap.error(f"--merge: no such file {', '.join(missing)}")
        doc = merge(json_path, args.merge)
        save(doc, json_path)
    if args.report or args.merge:
        doc = json.loads(json_path.read_text())
        md_path.write_text(markdown(doc))
        return doc
    entries = QUICK if args.quick else zoo()
    if args.models:
        wanted = args.models.split(",")
        entries = [e for e in [*zoo(), *QUICK] if e["model"] in wanted
                   or e["model"].partition(":")[2] in wanted]
        entries = list({e["model"]: e for e in entries}.values())
        if not entries:
            ap.error(f"no zoo model matches {args.models!r}")

    started = Run(__file__, argv)
    doc = json.loads(json_path.read_text()) if json_path.exists() else {"models": {}, "runs": []}
    doc["settings"] = {"methods": list(dict.fromkeys([*doc.get("settings", {}).get(
                           "methods", []), *methods])),
                       "timeout_s": args.timeout, "threads": args.threads, "subset": SUBSET,
                       "spaces": SPACES, "points": {m: run_point(m) for m in SPACES}}
    from prune_core.environment import environment

    doc["environment"], doc["versions"] = environment(), versions()
    run = {"command": started.command, "started": datetime.now(UTC).isoformat(
        timespec="seconds"), "load_before": started.load_before, "threads": args.threads,
        "models_run": 0, "seconds": 0.0}
    doc["runs"].append(run)
    t0 = time.perf_counter()
    done = [e for e in entries if args.resume and e["model"] in doc["models"]
            and all(m in doc["models"][e["model"]]["cells"] for m in methods)]
    print(f"{len(entries) - len(done)} models ({len(done)} already in {json_path}) x "
          f"{len(methods)} methods ({', '.join(methods)}); P pruned, R refused, F failed "
          "after validate, T timeout, C crashed", flush=True)
    for entry in entries:
        if entry in done:
            continue
        old = doc["models"].get(entry["model"])
        record = run_model(entry, methods, args.timeout, args.threads)
        if old:  # cells of other methods from an earlier run stay
            record["cells"] = {**old["cells"], **record["cells"]}
        doc["models"][entry["model"]] = record
        run["models_run"] += 1
        run["seconds"] = time.perf_counter() - t0
        save(doc, json_path)
        print(progress(record, methods), flush=True)
    order = {e["model"]: i for i, e in enumerate([*zoo(), *QUICK])}
    doc["models"] = dict(sorted(doc["models"].items(), key=lambda kv: order.get(kv[0], 1e9)))
    load = machine_load(run["load_before"], load_1min(), started.others.stop())
    run.update(load, seconds=time.perf_counter() - t0, busy_note=busy_note(load))
    save(doc, json_path)
    md_path.parent.mkdir(parents=True, exist_ok=True)
    md_path.write_text(markdown(doc))
    n = counts(doc)
    print("failed after validate: " + ", ".join(f"{m} {v['failed']}" for m, v in n.items())
          + f"; crashed: {sum(v['crashed'] for v in n.values())}", flush=True)
    return doc


if __name__ == "__main__":
    main()
