"""The worker side of a study: the Ray Tune function trainable that runs one trial, and
the Ray tasks that train and time the base model where trials run."""

from __future__ import annotations

import socket
import tempfile
import time
import traceback
from pathlib import Path

import ray
import torch
from ray import tune

from prune_core.baseline import BaseModel, safe_load, train_base
from prune_core.compressed import save_kept
from prune_core.measure import latency_columns
from prune_core.trial import TrialSpec, load_data, run_trial, save_json_safe
from studies.cluster import log_stderr
from studies.record import MODEL_FILE
from studies.spec import StudySpec

__all__ = ["CHECKPOINT_FILE", "REPEAT_SEED", "base_latency_task", "make_trainable",
           "train_base_task", "train_trial"]

CHECKPOINT_FILE = "trial.pt"
# Repeat r of a configuration runs with the study's seed + REPEAT_SEED * r (a prime: no
# overlap with the offsets a trial adds per stage and per training call).
REPEAT_SEED = 104_729


def train_base_task(study: dict, threads: int, queue=None) -> BaseModel:
    """Ray task: train the base model where trials run; each epoch's row goes to ``queue``
    (a ``ray.util.queue.Queue``), where given, for the driver's progress display."""
    torch.set_num_threads(threads)
    spec = TrialSpec.from_dict(study)
    on_epoch = None if queue is None else queue.put_nowait
    return train_base(spec.base_spec(), load_data(spec), log=log_stderr, on_epoch=on_epoch)


def base_latency_task(study: dict, base: BaseModel, threads: int) -> dict:
    """Ray task: time the base model as a trial times its final model."""
    torch.set_num_threads(threads)
    spec = TrialSpec.from_dict(study)
    return latency_columns(base.build("cpu"), load_data(spec).input_shape, spec.latency)


class _TuneReport:
    """``run_trial``'s report callback: one ``tune.report`` per epoch, with its checkpoint.

    A method reports an epoch's metrics, then saves its checkpoint for the same
    step; the two become one Tune result, so each epoch is one training iteration.
    """

    def __init__(self, extra: dict, hold_final: bool = False):
        self.extra = extra
        self.pending: dict | None = None
        self.seconds = 0.0  # spent reporting and checkpointing: Tune's cost inside a trial
        # Keep the final row back, to report it with the model (:meth:`final_with_model`).
        self.hold_final = hold_final
        self.final: dict | None = None

    def __call__(self, metrics: dict, checkpoint: dict | None = None) -> None:
        t0 = time.perf_counter()
        metrics = save_json_safe(metrics)
        if checkpoint is None and not metrics.get("final"):
            self.flush()
            self.pending = metrics
        elif checkpoint is None:
            self.flush()
            self.seconds += time.perf_counter() - t0
            if self.hold_final:
                self.final = metrics
                return
            tune.report({**metrics, **self.extra, "report_seconds": self.seconds})
            return
        else:
            if self.pending is not None and self.pending.get("step") == metrics.get("step"):
                metrics = {**self.pending, **metrics}
                self.pending = None
            else:
                self.flush()
            with tempfile.TemporaryDirectory(prefix="prune-study-ckpt-") as d:
                torch.save(checkpoint, Path(d) / CHECKPOINT_FILE)
                tune.report({**metrics, **self.extra},
                            checkpoint=tune.Checkpoint.from_directory(d))
        self.seconds += time.perf_counter() - t0

    def flush(self) -> None:
        if self.pending is not None:
            tune.report({**self.pending, **self.extra})
            self.pending = None

    def final_with_model(self, model, arch: dict) -> None:
        """Report the held final row with the compressed model as its checkpoint; the
        driver's Recorder keeps it in the study directory."""
        with tempfile.TemporaryDirectory(prefix="prune-study-model-") as d:
            sha = save_kept(model, arch, Path(d) / MODEL_FILE)
            tune.report({**self.final, **self.extra, "report_seconds": self.seconds,
                         "model_sha256": sha}, checkpoint=tune.Checkpoint.from_directory(d))


def train_trial(config: dict, *, base: BaseModel, study: dict, threads: int = 1,
                done: dict | None = None, keep_model: bool = False) -> None:
    """Ray Tune function trainable: one trial of the study.

    A trial that raises (a diverged loss, a method's error) reports a final
    ``failed`` row instead of raising, so Tune does not retry what would fail
    again; a lost worker is retried from the last checkpoint by Tune.
    """
    torch.set_num_threads(threads)
    extra = {"node_id": ray.get_runtime_context().get_node_id(),
             "hostname": socket.gethostname()}
    trial_id = tune.get_context().get_trial_id()
    if done and trial_id in done:
        # Finished before the driver was killed, after its last experiment checkpoint:
        # hand back the recorded row rather than running it again.
        tune.report({**done[trial_id], "final": True, **extra})
        return
    resume = None
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            resume = safe_load(Path(d) / CHECKPOINT_FILE)
    params = {k: v for k, v in config.items() if not k.startswith("_")}
    if "_repeat" in config:  # one run of a repeated configuration: its own seed
        study = {**study, "seed": study["seed"] + REPEAT_SEED * int(config["_repeat"])}
        extra["seed"] = study["seed"]
    report = _TuneReport(extra, hold_final=keep_model)
    out: dict | None = {} if keep_model else None
    try:
        run_trial({"study": study, "params": params}, report, base=base, resume=resume,
                  log=log_stderr, model_out=out)
    except Exception as e:
        if type(e).__module__.split(".")[0] == "ray":
            raise  # Tune's own signals (stop, lost session) are not trial failures
        report.flush()
        tune.report({"final": True, "status": "failed", "error": f"{type(e).__name__}: {e}",
                     "traceback": traceback.format_exc()[-4000:], **extra})
        return
    report.flush()
    if keep_model:
        report.final_with_model(out["model"], out["architecture"])


def make_trainable(spec: StudySpec, base: BaseModel, done: dict | None = None):
    """The study's trainable with the base model and trial spec bound, and a trial's resources."""
    threads = max(1, int(spec.resources["cpu"]))
    fn = tune.with_parameters(train_trial, base=base, study=spec.trial_spec().to_dict(),
                              threads=threads, done=done or {},
                              keep_model=spec.keep_models != "none")
    return tune.with_resources(fn, {"cpu": spec.resources["cpu"], "gpu": spec.resources["gpu"]})
