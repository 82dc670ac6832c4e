"""Joining or starting Ray for a study: token authentication, reachability, one Ray
version on every node, and enough resources for one trial."""

from __future__ import annotations

import logging
import os
import re
import socket
import sys
from collections.abc import Callable

import ray

from prune_core.errors import PruneStudyError
from studies.spec import StudySpec

__all__ = ["ClusterError", "RayVersionMismatch", "check_ray_versions", "check_resources",
           "connect", "log_stderr", "node_versions"]

Log = Callable[[str], None]


def log_stderr(msg: str) -> None:
    """The default ``log`` of the study functions: one line to stderr, flushed."""
    print(msg, file=sys.stderr, flush=True)


class ClusterError(PruneStudyError, RuntimeError):
    """Ray could not be started or reached."""


class RayVersionMismatch(ClusterError):
    """The cluster runs another Ray than this driver."""


def connect(address: str | None = None, log: Log = log_stderr) -> None:
    """Start a local Ray, or join the cluster at ``address``; reuse one already started."""
    if ray.is_initialized():
        if not address:
            return
        # An explicit address must never be served by a Ray this process started earlier.
        ray.shutdown()
    if address:
        _check_reachable(address)
        try:
            ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
        except Exception as e:  # Ray raises several types here; all mean "not connected"
            if "Version mismatch" in str(e):
                # Ray compares its Ray and Python versions with those the cluster recorded
                # when it started; its message names them in a plain layout.
                raise RayVersionMismatch(_init_mismatch_text(address, str(e))) from e
            raise ClusterError(
                f"could not join the Ray cluster at {address}: {type(e).__name__}: "
                f"{str(e).splitlines()[0] if str(e) else ''}\nA cluster started with `ray start` "
                "(Ray 2.60) uses token authentication: set RAY_AUTH_MODE=token in the "
                "environment of every node and of this command, with the cluster's token in "
                "~/.ray/auth_token or RAY_AUTH_TOKEN."
            ) from e
        versions = node_versions(log=log)
        check_ray_versions(versions, address=address)
        log(f"joined the Ray cluster at {address}: {_resources_text()}, Ray {ray.__version__}"
            f" on {'every node' if versions else 'the head node'}")
        if not _token_auth():
            log(f"warning: the Ray cluster at {address} accepted this driver without token "
                "authentication: anyone who can reach its port can run code on every node. "
                "Start it with RAY_AUTH_MODE=token (the default of `ray start` in Ray 2.60), "
                "or keep its ports reachable from trusted machines only.")
        return
    try:
        ray.init(include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    except Exception as e:
        raise ClusterError(f"could not start a local Ray: {type(e).__name__}: {e}") from e
    log(f"started a local Ray: {_resources_text()}")


def node_versions(timeout_s: float = 60, log: Log = log_stderr) -> dict[str, str]:
    """The Ray version each alive node runs, from a tiny task on each: node -> version."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    def version() -> str:  # a local function: pickled by value, the node imports no project
        import ray

        return ray.__version__

    task = ray.remote(num_cpus=0, max_retries=0)(version)
    refs = {}
    for n in ray.nodes():
        if n.get("Alive"):
            node = f"{n.get('NodeManagerAddress')} (node {n['NodeID'][:8]})"
            refs[node] = task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
                n["NodeID"], soft=False)).remote()
    if not refs:
        return {}
    ready, late = ray.wait(list(refs.values()), num_returns=len(refs), timeout=timeout_s)
    if late:
        log(f"warning: {len(late)} node(s) did not say their Ray version within {timeout_s:g} s;"
            " not checked")
        for ref in late:
            ray.cancel(ref, force=True)
    out = {}
    for node, ref in refs.items():
        if ref in ready:
            try:
                out[node] = ray.get(ref)
            except Exception as e:  # the task's or Ray's error: say so, the study may still run
                log(f"warning: {node} could not say its Ray version ({type(e).__name__}); "
                    "not checked")
    return out


def check_ray_versions(versions: dict[str, str], driver: str | None = None,
                       address: str = "the cluster") -> None:
    """Raise :class:`RayVersionMismatch` when a node runs another Ray than ``driver`` (this
    process's by default): Ray needs one version everywhere, and a mismatched minor fails
    in obscure ways."""
    driver = driver or ray.__version__
    other = {node: f"Ray {v}" for node, v in versions.items() if v != driver}
    if other:
        raise RayVersionMismatch(_version_text(address, f"Ray {driver}", driver, other))


def _init_mismatch_text(address: str, message: str) -> str:
    """Ray's own refusal at ``ray.init``, retold with what to do."""
    rays = re.findall(r"Ray: (\S+)", message)
    pythons = re.findall(r"Python: (\S+)", message)
    if len(rays) < 2 or len(pythons) < 2:  # another layout: keep Ray's words
        return (f"the Ray cluster at {address} refused this driver: "
                f"{' '.join(message.split())}")

    def versions(i: int) -> str:
        return f"Ray {rays[i]}, Python {pythons[i]}"

    return _version_text(address, versions(1), rays[1], {"the cluster": versions(0)})


def _version_text(address: str, mine: str, ray_version: str, other: dict[str, str]) -> str:
    nodes = ", ".join(f"{node}: {v}" for node, v in sorted(other.items()))
    return (f"the Ray cluster at {address} runs other versions than this driver ({mine}): "
            f"{nodes}. Ray needs the same Ray and Python versions on every node and in the "
            f"driver. Start the cluster from an environment like this one (`pip install "
            f"'ray[default]=={ray_version}'` on every node, or `ray up cluster.yaml`, which "
            "installs the Ray prune-study pins), or run prune-study where the cluster's "
            "versions are installed")


def _token_auth() -> bool:
    """Whether this driver talks to Ray with token authentication; a cluster that requires
    it refuses drivers without it, so a join without it means the cluster has none."""
    try:
        from ray._private.authentication.authentication_utils import is_token_auth_enabled
    except ImportError:  # Ray moved it: judge by the documented variable
        return os.environ.get("RAY_AUTH_MODE", "").lower() == "token"
    return bool(is_token_auth_enabled())


def _check_reachable(address: str) -> None:
    """Fail in seconds, not minutes, when nothing listens at ``host:port``."""
    if address == "auto" or "://" in address:
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ClusterError(f"--address {address!r} is not host:port (for example "
                           "127.0.0.1:6379) or 'auto'")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as e:
        raise ClusterError(f"nothing answers at {address} ({e.strerror or e}); start the head "
                           "with `ray start --head --port=PORT` or `ray up cluster.yaml`") from e


def _resources_text() -> str:
    r = ray.cluster_resources()
    nodes = len([n for n in ray.nodes() if n.get("Alive")])
    return f"{nodes} node(s), {r.get('CPU', 0):g} CPUs, {r.get('GPU', 0):g} GPUs"


def check_resources(spec: StudySpec, address: str | None, log: Log) -> None:
    """Refuse a study on a local Ray whose one trial needs more CPUs or GPUs than Ray has;
    on a cluster, warn (an autoscaling cluster may grow)."""
    have = ray.cluster_resources()
    for key, name in (("cpu", "CPU"), ("gpu", "GPU")):
        need = spec.resources[key]
        if need > have.get(name, 0):
            msg = (f"each trial asks for {need:g} {name}(s) (resources.{key}) but the cluster "
                   f"has {have.get(name, 0):g}")
            if address is None:
                raise ClusterError(msg)
            log(f"warning: {msg}; trials wait until the cluster grows")
