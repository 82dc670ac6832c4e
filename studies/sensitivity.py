"""`prune-study sensitivity`: a study's base model scanned group by group, on Ray.

The spec names the model, data and base model; :func:`run_scan` trains or finds the base
model as a study does (:func:`studies.base.ensure_base`), lists the channel groups the
method prunes with their stages, and scans each group as its own Ray task
(:func:`prune_core.sensitivity.scan_group`), so the groups run in parallel over the
cluster's CPUs. The result is cached under ``<storage>/_cache/sensitivity/`` by base
model, method and ratios: a second scan of the same base is read back, not recomputed.
It is written beside the study as ``sensitivity-<method>.json`` and drawn as a heat map
(groups x ratio, the validation accuracy lost) in ``sensitivity-<method>.png``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

from prune_core.sensitivity import RANKING, RATIOS

CACHE = "sensitivity"
VERSION = 1  # of the scan's rows: a change to what a row means starts a new cache entry

Log = Callable[[str], None]


def _groups_task(ts: dict, base, method: str, threads: int) -> dict:
    import torch

    from prune_core.sensitivity import group_info, reference
    from prune_core.trial import TrialSpec, load_data

    torch.set_num_threads(threads)
    data = load_data(TrialSpec.from_dict(ts))
    model = base.build(data.device)
    return {"groups": [vars(g) for g in group_info(model, data.input_shape, method)],
            "base": reference(model, data)}


def _scan_task(ts: dict, base, method: str, root: str, ratios: tuple[float, ...],
               threads: int) -> list[dict]:
    import torch

    from prune_core.sensitivity import scan_group
    from prune_core.trial import TrialSpec, load_data

    torch.set_num_threads(threads)
    data = load_data(TrialSpec.from_dict(ts))
    return scan_group(base.build(data.device), data, method, root, ratios)


def method_of(spec, method: str | None) -> str:
    """The method to scan: ``method``, or the first stage of the spec's chains a scan
    covers."""
    if method is not None:
        if method not in RANKING:
            raise ValueError(f"--method {method!r}: the scan covers "
                             f"{', '.join(sorted(RANKING))}")
        return method
    from prune_core.methods import parse_chain

    found = [s.method.name for c in spec.chains for s in parse_chain(list(c))]
    for name in found:
        if name in RANKING:
            return name
    raise ValueError(f"the spec's methods ({', '.join(dict.fromkeys(found))}) have no "
                     f"sensitivity scan; name one with --method "
                     f"({', '.join(sorted(RANKING))})")


def cache_key(base_key: str, method: str, ratios: tuple[float, ...]) -> str:
    text = json.dumps([VERSION, base_key, method, [round(r, 6) for r in ratios]])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def run_scan(spec, method: str, ratios: tuple[float, ...] = RATIOS,
             address: str | None = None, log: Log = print) -> dict:
    """The scan of ``spec``'s base model for ``method``: from the cache, or computed on Ray
    and cached. Returns ``{"method", "ratios", "base", "groups", "rows", ...}``."""
    import ray

    from studies.base import ensure_base
    from studies.cluster import connect
    from studies.record import write_json

    connect(address, log=log)
    base, info = ensure_base(spec, log=log)
    path = Path(spec.cache_dir) / CACHE / f"{cache_key(info['key'], method, ratios)}.json"
    if path.is_file():
        log(f"sensitivity of {spec.model} to {method} found in the cache ({path.name})")
        return {**json.loads(path.read_text()), "cached": True}
    threads = max(1, int(spec.resources["cpu"]))
    opts = {"num_cpus": spec.resources["cpu"], "num_gpus": spec.resources["gpu"],
            "max_retries": 0}
    ts = spec.trial_spec().to_dict()
    ref = ray.put(base)
    found = ray.get(ray.remote(_groups_task).options(**opts).remote(ts, ref, method, threads))
    groups = found["groups"]
    log(f"scanning {len(groups)} channel groups of {spec.model} at {len(ratios)} ratios "
        f"as Ray tasks ({method}'s ranking, no fine-tuning)")
    task = ray.remote(_scan_task).options(**opts)
    pending = {task.remote(ts, ref, method, g["root"], tuple(ratios), threads): g["root"]
               for g in groups}
    rows: dict[str, list[dict]] = {}
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        root = pending.pop(done[0])
        rows[root] = ray.get(done[0])
        worst = min(r["val_accuracy"] for r in rows[root])
        log(f"  [{len(rows)}/{len(groups)}] {root}: validation accuracy down to "
            f"{worst:.3f} at ratio {max(ratios)} (base {found['base']['val_accuracy']:.3f})")
    doc = {"model": spec.model, "data": spec.data, "method": method,
           "ratios": [float(r) for r in ratios], "base_key": info["key"],
           "base": found["base"], "groups": groups,
           "rows": [r for g in groups for r in rows[g["root"]]]}
    write_json(path, doc)
    return {**doc, "cached": False}


def write_outputs(doc: dict, out_dir: Path) -> tuple[Path, Path]:
    """``sensitivity-<method>.json`` and the heat map ``sensitivity-<method>.png``."""
    from analysis._sensitivity_figure import draw_sensitivity
    from studies.record import write_json  # (not at the top: Ray's workers import this module)

    stem = f"sensitivity-{doc['method']}"
    data_path, figure = out_dir / f"{stem}.json", out_dir / f"{stem}.png"
    write_json(data_path, {k: v for k, v in doc.items() if k != "cached"})
    figure.write_bytes(draw_sensitivity(doc))
    return data_path, figure


def table(doc: dict) -> str:
    """The scan as text: one line per group, validation accuracy lost per ratio (points)."""
    base = doc["base"]["val_accuracy"]
    by = {}
    for r in doc["rows"]:
        by.setdefault(r["group"], {})[r["ratio"]] = r["val_accuracy"]
    head = f"{'group':<28} {'stage':<16} {'ch':>4} " + " ".join(
        f"{int(round(r * 100)):>5}%" for r in doc["ratios"])
    lines = [head]
    for g in doc["groups"]:
        cells = " ".join(f"{(base - by[g['root']][r]) * 100:>6.1f}" for r in doc["ratios"])
        lines.append(f"{g['root'][:28]:<28} {g['stage'][:16]:<16} {g['size']:>4} {cells}")
    return "\n".join(lines)


def warm_stage(spec):
    """``(stage, method)``: the stage ``warm_start: sensitivity`` starts from, the first
    whose method a scan covers and whose allocation is per_stage or per_group; None where
    the spec has none."""
    from prune_core.methods import parse_chain
    from prune_core.methods._allocation import GENERATED

    for chain in spec.chains:
        for s in parse_chain(list(chain)):
            entry = spec.space.get(f"{s.name}.allocation")
            if s.method.name in RANKING and entry is not None and entry.kind == "fixed" \
                    and entry.value in GENERATED:
                return s.name, s.method
    return None


def allocation_points(spec, doc: dict, covered: dict[str, list[str]], stage: str,
                      levels: int) -> list[dict]:
    """The study's points for ``warm_start: sensitivity``: the scan's greedy allocations at
    ``levels`` evenly spaced MAC targets, each as the searched ``ratio@`` values of
    ``stage`` (``covered``: what each covers, :func:`prune_core.methods._allocation.units`).
    A stage takes the share of its channels its groups lose together; a group the scan
    did not cover loses none; each value is clipped into its range."""
    from prune_core.sensitivity import allocation_levels

    size = {g["root"]: g["size"] for g in doc["groups"]}
    points = []
    for found in allocation_levels(doc, levels):
        point = {}
        for name, roots in covered.items():
            key = f"{stage}.ratio@{name}"
            p = spec.space.get(key)
            if p is None or p.kind not in ("float", "int"):
                continue
            total = sum(size.get(r, 0) for r in roots)
            share = sum(found["ratios"].get(r, 0.0) * size.get(r, 0) for r in roots) / total \
                if total else 0.0
            point[key] = min(max(share, p.low), p.high)
        if point and point not in points:
            points.append(point)
    return points


def warm_start_points(spec, study_dir: Path, log: Log = print) -> list[dict]:
    """``warm_start: sensitivity``: the scan of the spec's base model (from the cache, or run
    on Ray) turned into allocations to enqueue before the sampler's own trials. The scan
    and its heat map are written into the study directory, where the report finds them."""
    from prune_core import models
    from prune_core.methods._allocation import units
    from studies._check_model import _input_shape

    stage, method = warm_stage(spec)
    doc = run_scan(spec, method.name, log=log)
    study_dir.mkdir(parents=True, exist_ok=True)
    write_outputs(doc, study_dir)
    kw = {k: v for k, v in spec.model_kw.items() if k != "weights"}
    model = models.build(spec.model, num_classes=10, **kw)
    shape = _input_shape(spec.data, spec.data_kw)
    how = spec.space[f"{stage}.allocation"].value
    covered = units(model, method.allocation.groups(model, shape), shape, how)
    points = allocation_points(spec, doc, covered, stage,
                               spec.warm_start["sensitivity"]["levels"])
    log(f"warm start: {len(points)} allocation(s) from the sensitivity scan enqueued "
        f"(greedy equal-loss at evenly spaced MAC levels)")
    return points


__all__ = ["CACHE", "allocation_points", "cache_key", "method_of", "run_scan", "table",
           "warm_stage", "warm_start_points", "write_outputs"]
