"""``prune-study export``: take one trial's model out of a study, in the formats it ships
in, checked against the row the study measured.

The trial is named (``--trial``) or picked from the study's rows (``--pick knee``,
``cheapest`` under an accuracy drop, ``best`` under a cost). Its kept model
(``models/<trial_id>.pt``, SHA-256 in the trial file) is used when present; otherwise the
trial is run again from the cached base model with its parameters and seed, and the
rebuilt model must pass the same checks (the study's reproducibility test). Export reads
the study directory and never writes into it, so it works while the study runs.
"""

from __future__ import annotations

import difflib
import json
import shlex
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from analysis.results import load, summary, wilson_interval
from analysis.studydir import read_base, read_study, trial_records
from prune_core.errors import InputError
from studies.record import write_json

__all__ = ["PICKS", "COSTS", "ExportError", "Selection", "export_trial", "select_trial",
           "reproduce_command"]

PICKS = ("knee", "cheapest", "best")
# The cost columns ``--pick best --max-<cost>`` bounds and ``--pick cheapest`` minimises.
COSTS = ("macs", "params", "latency_ms")


class ExportError(InputError):
    """A trial that cannot be exported as asked (exit 2)."""


@dataclass(frozen=True)
class Selection:
    """The trial to export and how it was chosen."""

    record: dict
    why: str


def _ok_frame(study_dir: Path):
    df = load(study_dir)
    ok = df[(df["status"] == "ok") & df["feasible"].fillna(True).astype(bool)]
    return df, ok


def _describe(r) -> str:
    cols = [c for c in ("accuracy", "accuracy_drop", "macs", "params", "latency_ms")
            if c in r and r[c] == r[c]]
    return f"trial {int(r['number'])} ({r['trial_id']}): " + ", ".join(
        f"{c} {r[c]:.4g}" for c in cols)


def select_trial(study_dir: Path, *, trial: str | None = None, pick: str | None = None,
                 max_drop: float | None = None, bounds: dict[str, float] | None = None,
                 cost: str = "macs") -> Selection:
    """The trial ``--trial`` names or ``--pick`` chooses; :class:`ExportError` when none
    fits, naming the nearest ids or the closest trial."""
    records = {r["trial_id"]: r for r in trial_records(study_dir)}
    if trial is not None:
        by_number = {str(r.get("number")): r for r in records.values()}
        if any(r.get("repeat") for r in records.values()):
            # with repeats a number names a configuration: its run nearest the means
            df = load(study_dir)
            by_number = {str(n): records[t] for n, t in zip(df["number"], df["trial_id"],
                                                            strict=True) if t in records}
        rec = records.get(trial) or by_number.get(trial)
        if rec is None:
            near = difflib.get_close_matches(trial, [*records, *by_number], n=5, cutoff=0.3)
            raise ExportError(f"--trial {trial!r}: no such trial in {study_dir.name}; "
                              + (f"nearest: {', '.join(near)}" if near else
                                 f"its trials: {', '.join(sorted(by_number)[:20])}")
                              + " (a trial id or number, as `prune-study status` shows)")
        return Selection(rec, f"trial {rec.get('number')} as named")
    df, ok = _ok_frame(study_dir)
    if not len(ok):
        raise ExportError(f"{study_dir.name} has no finished feasible trial to pick from yet")
    if pick == "knee":
        knee = summary(study_dir).get("knee")
        if knee is None:
            raise ExportError(f"{study_dir.name} has no front yet to find a knee on")
        return Selection(records[knee["trial_id"]], "the knee of the front")
    if pick == "cheapest":
        if "accuracy_drop" not in ok:
            raise ExportError("--pick cheapest needs the accuracy_drop column; the study's "
                              "rows have none")
        fits = ok[ok["accuracy_drop"] <= max_drop]
        if cost not in ok:
            raise ExportError(f"--cost {cost}: the study's rows have no {cost} column")
        if not len(fits):
            near = ok.loc[ok["accuracy_drop"].idxmin()]
            raise ExportError(f"no finished trial loses at most {max_drop:g} accuracy against "
                              f"the base; the closest is {_describe(near)}")
        r = fits.loc[fits[cost].idxmin()]
        return Selection(records[r["trial_id"]], f"the lowest {cost} with an accuracy drop "
                         f"of at most {max_drop:g}")
    # best: the most accurate under every bound given
    fits = ok
    for column, limit in (bounds or {}).items():
        if column not in ok or ok[column].isna().all():
            raise ExportError(f"--max-{column.replace('_', '-')}: the study's rows have no "
                              f"{column} (measure it with the spec's latency)")
        fits = fits[fits[column] <= limit]
    if not len(fits):
        column, limit = next(iter(bounds.items()))
        near = ok.loc[(ok[column] - limit).abs().idxmin()]
        raise ExportError("no finished trial is within " + ", ".join(
            f"{c} <= {v:g}" for c, v in bounds.items()) + f"; the closest is {_describe(near)}")
    r = fits.loc[fits["accuracy"].idxmax()]
    return Selection(records[r["trial_id"]], "the most accurate within " + ", ".join(
        f"{c} <= {v:g}" for c, v in bounds.items()))


def reproduce_command(study_dir: Path, rec: dict) -> str:
    """The one command that runs the trial again, as the study ran it."""
    params = dict(sorted(rec.get("params", {}).items()))
    if rec.get("repeat"):  # one run of a repeated configuration: its own seed
        params["seed"] = (rec.get("row") or {}).get("seed")
    sets = " ".join(f"--set {shlex.quote(f'{k}={_yaml_value(v)}')}"
                    for k, v in params.items() if v is not None)
    return f"prune-study trial {shlex.quote(str(study_dir / 'spec.yaml'))} {sets}".strip()


def _yaml_value(v) -> str:
    return json.dumps(v) if isinstance(v, bool | list) or v is None else \
        repr(v) if isinstance(v, float) else str(v)


def _check_out(study_dir: Path, out: Path, force: bool) -> None:
    out = out.expanduser().resolve()
    if out == study_dir or study_dir in out.parents:
        raise ExportError(f"-o {out}: inside the study directory; export never writes there "
                          "(the study may still be running): choose a folder outside it")
    if out.exists() and not out.is_dir():
        raise ExportError(f"-o {out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise ExportError(f"-o {out}: exists and is not empty; choose a new folder, or add "
                          "--force to write into it")


def _kept_model(study_dir: Path, rec: dict, rebuild: bool, log):
    """The kept model's ``(architecture, state_dict)``, or None where it must be rebuilt."""
    from prune_core.compressed import file_sha256, read_kept

    kept = rec.get("model") or {}
    if rebuild:
        log("rebuilding the model (--rebuild)")
        return None
    if not kept.get("file") or kept.get("removed"):
        why = (f"its model was removed ({kept['removed']})" if kept.get("removed") else
               "no model was kept (keep_models: none, or a study from before models were kept)")
        log(f"trial {rec.get('number')}: {why}; rebuilding it by running the trial again from "
            "the cached base model with its parameters and seed")
        return None
    path = study_dir / kept["file"]
    if not path.is_file():
        log(f"trial {rec.get('number')}: its kept model {path} is missing; rebuilding it")
        return None
    got = file_sha256(path)
    if got != kept.get("sha256"):
        recorded = str(kept.get("sha256"))[:16]
        raise ExportError(f"{path}: SHA-256 {got[:16]}... differs from the {recorded}... "
                          f"recorded in trials/{rec['trial_id']}.json: the file was "
                          "changed or damaged. Add --rebuild to run the trial again from the "
                          "cached base model instead")
    return read_kept(path)


def _rebuild(study_dir: Path, spec, rec: dict, log):
    """Run the trial again as the study ran it; returns ``(model, architecture)``."""
    import torch

    from prune_core.baseline import cache_path, get_base
    from prune_core.trial import load_data, run_trial
    from studies.runner import check_base

    ts = spec.trial_spec()
    torch.set_num_threads(max(1, int(spec.resources["cpu"])))
    base, _ = get_base(ts.base_spec(), load_data(ts), spec.cache_dir, log=log)
    check_base(study_dir, base, cache_path(spec.cache_dir, ts.base_spec()))
    out: dict = {}
    t0 = time.perf_counter()
    run_trial({"study": ts.to_dict(), "params": rec.get("params", {})}, base=base,
              model_out=out)
    log(f"rebuilt in {time.perf_counter() - t0:.0f} s on {torch.get_num_threads()} thread(s)")
    return out["model"], out["architecture"]


def export_trial(study_dir: str | Path, out: str | Path, selection: Selection, *,
                 force: bool = False, rebuild: bool = False, onnx: bool = True,
                 log=lambda _m: None) -> dict:
    """Write the selected trial's model into ``out`` and check it; returns the card."""
    from prune_core.compressed import apply_terminal
    from prune_core.compressed import rebuild as rebuild_module
    from prune_core.export import check_artifacts, write_artifacts
    from prune_core.trial import load_data
    from studies.spec import load_spec

    study_dir = Path(study_dir).expanduser().resolve()
    out = Path(out).expanduser().resolve()
    rec = selection.record
    if rec.get("status") != "ok":
        raise ExportError(f"trial {rec.get('number')} ({rec['trial_id']}) ended "
                          f"{rec.get('status')}"
                          + (f": {str(rec.get('error')).splitlines()[0]}" if rec.get("error")
                             else "") + "; only finished (ok) trials have a model to export")
    _check_out(study_dir, out, force)
    spec = load_spec(study_dir / "spec.yaml", rehearse=False)
    data = load_data(spec.trial_spec())
    kept = _kept_model(study_dir, rec, rebuild, log)
    if kept is None:
        model, arch = _rebuild(study_dir, spec, rec, log)
        source = "rebuilt"
    else:
        arch, state = kept
        model = rebuild_module(arch, state)
        model = apply_terminal(model, arch, data)
        source = "kept"
    row = rec["row"]
    interval = wilson_interval(float(row["accuracy"]), int(row.get("test_images") or 0))
    staging = out.with_name(f".{out.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    t0 = time.perf_counter()
    written = write_artifacts(model, arch, staging, onnx=onnx, log=log)
    try:
        checks = check_artifacts(model, arch, staging, written, data, row, interval)
    except Exception:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    card = _card(study_dir, spec, rec, arch, selection, source, checks, interval)
    card["export_seconds"] = round(time.perf_counter() - t0, 2)
    card["files"] = {name: {"bytes": (staging / name).stat().st_size}
                     if (staging / name).is_file() else {"missing": why}
                     for name, why in written.items()}
    write_json(staging / "card.json", card)
    (staging / "model-card.md").write_text(_card_markdown(card))
    out.mkdir(parents=True, exist_ok=True)
    for p in staging.iterdir():
        p.replace(out / p.name)
    staging.rmdir()
    return card


def _card(study_dir: Path, spec, rec: dict, arch: dict, selection: Selection, source: str,
          checks, interval) -> dict:
    from studies.record import environment

    study = read_study(study_dir)
    row = {k: v for k, v in rec["row"].items() if k != "channels"}
    return {
        "study": study.get("name"), "study_dir": str(study_dir),
        "trial_id": rec["trial_id"], "number": rec.get("number"), "chosen": selection.why,
        "model_source": source,
        "methods": [{"stage": s["name"], "method": s["method"], "params": s["params"]}
                    for s in arch["stages"]],
        "metrics": row,
        "accuracy_interval_95": list(interval),
        "base": {"model": arch["model"], **arch["model_kw"],
                 "accuracy": read_base(study_dir).get("accuracy"),
                 "weights_sha256": (study.get("base") or {}).get("weights_sha256")},
        "data": study.get("data"),
        "input": arch["input"],
        "kept_model_sha256": (rec.get("model") or {}).get("sha256"),
        "checks": [{"name": c.name, "ok": c.ok, "detail": c.detail, **c.values}
                   for c in checks],
        "environment": environment(),
        "reproduce": reproduce_command(study_dir, rec),
    }


def _card_markdown(card: dict) -> str:
    m = card["metrics"]
    lo, hi = card["accuracy_interval_95"]
    lines = [
        f"# {card['study']}: trial {card['number']} ({card['trial_id']})",
        "",
        f"Chosen as {card['chosen']}; the model is "
        + ("the file the trial kept." if card["model_source"] == "kept" else
           "the trial run again from the cached base model with its parameters and seed."),
        "",
        "## Methods",
        "",
        *[f"- `{s['stage']}` ({s['method']}): " + ", ".join(
            f"{k} = {v}" for k, v in s["params"].items()) for s in card["methods"]],
        "",
        "## Metrics (the study's row)",
        "",
        f"- accuracy {m['accuracy']:.4f} (95 % interval {lo:.4f} to {hi:.4f}, "
        f"{m.get('test_images')} test images)",
        *[f"- {k}: {v:.6g}" if isinstance(v, float) else f"- {k}: {v}"
          for k, v in m.items() if k != "accuracy" and not isinstance(v, dict | list)],
        "",
        "## Base model",
        "",
        f"- {card['base']['model']} " + ", ".join(
            f"{k}={v}" for k, v in card["base"].items()
            if k not in ("model", "weights_sha256", "accuracy")),
        f"- weights SHA-256 {card['base']['weights_sha256']}",
        "",
        "## Input",
        "",
        f"- shape {card['input']['shape']} ({card['input']['layout']}), "
        f"{card['input']['dtype']}",
        f"- mean {card['input']['mean']}, std {card['input']['std']}",
        "",
        "## Checks at export",
        "",
        *[f"- {'ok' if c['ok'] else 'FAILED'}: {c['name']}: {c['detail']}"
          for c in card["checks"]],
        "",
        "## Files",
        "",
        *[f"- `{name}`: " + (f"{f['bytes']:,} bytes" if "bytes" in f else f["missing"])
          for name, f in card.get("files", {}).items()],
        "- `card.json`: this card as data",
        "",
        "## Reproduce",
        "",
        "```bash",
        card["reproduce"],
        "```",
        "",
        "Versions: " + ", ".join(f"{k} {card['environment'].get(k)}" for k in
                                  ("prune_study", "torch", "ray", "optuna", "python")
                                  if card["environment"].get(k)),
        "",
    ]
    return "\n".join(lines)

