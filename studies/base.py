"""A study's base model: from the cache, or trained once as a Ray task and cached, where
trials run. The study (``studies/runner.py``), the sensitivity scan and the benchmarks
start from it."""

from __future__ import annotations

import time

import ray

from prune_core.baseline import BaseModel, atomic_save, cache_path, load_cached
from studies.cluster import Log, log_stderr
from studies.progress import Progress, active
from studies.spec import StudySpec
from studies.trainable import train_base_task

__all__ = ["ensure_base"]


def ensure_base(spec: StudySpec, log: Log = log_stderr) -> tuple[BaseModel, dict]:
    """The study's base model from the cache, or trained once as a Ray task and cached."""
    ts = spec.trial_spec()
    bspec = ts.base_spec()
    path = cache_path(spec.cache_dir, bspec)
    base = load_cached(spec.cache_dir, bspec)
    if base is not None:
        log(f"base model {spec.model} found in the cache ({path.name}); not retrained")
        return base, {"key": bspec.key(), "path": str(path), "cached": True,
                      "weights_sha256": base.weights_hash()}
    log(f"training the base model {spec.model} on {spec.data} "
        f"({bspec.train.epochs} epochs) once for every trial")
    t0 = time.perf_counter()
    # Trained where trials run (a GPU worker on a cluster), with a trial's resources.
    task = ray.remote(train_base_task).options(
        num_cpus=spec.resources["cpu"], num_gpus=spec.resources["gpu"], max_retries=0)
    display = active()
    if display is None or not display.wants_epochs:
        base = ray.get(task.remote(ts.to_dict(), max(1, int(spec.resources["cpu"]))))
    else:
        base = _watch_base(task, ts, spec, display)
    atomic_save(base.to_payload(), path)
    log(f"base model: accuracy {base.row['accuracy']:.4f}, {base.row['macs'] / 1e6:.2f} M MACs, "
        f"{base.row['params'] / 1e6:.3f} M params ({time.perf_counter() - t0:.0f} s)")
    return base, {"key": bspec.key(), "path": str(path), "cached": False,
                  "weights_sha256": base.weights_hash()}


def _watch_base(task, ts, spec: StudySpec, display: Progress) -> BaseModel:
    """Run the base-model task, passing its epoch rows to the display as they come (through
    a Ray queue: the task may run on another node)."""
    from ray.util.queue import Queue

    queue = Queue(actor_options={"num_cpus": 0})
    display.base_started(spec.model, spec.trial_spec().base_spec().train.epochs)
    try:
        ref = task.remote(ts.to_dict(), max(1, int(spec.resources["cpu"])), queue)
        while True:
            finished, _ = ray.wait([ref], timeout=1.0)
            while not queue.empty():
                display.base_epoch(queue.get_nowait())
            if finished:
                return ray.get(ref)
    finally:
        display.base_done()
        queue.shutdown()
