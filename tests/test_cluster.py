"""A study on a real two-node Ray cluster (both nodes on 127.0.0.1), and cluster.yaml.

The nodes are started with `ray start --block` in their own process groups, on their own
ports and temp dir, with token authentication on; they are ended by process group, never
with `ray stop` (which ends every Ray process on the machine).
"""

from __future__ import annotations

import copy
import json
import os
import secrets
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / ".venv" / "bin"


def test_cluster_yaml_passes_rays_own_validator():
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    validate_config(prepare_config(copy.deepcopy(raw)))
    nodes = raw["available_node_types"]
    assert nodes[raw["head_node_type"]]["resources"].get("GPU", 0) == 0
    assert all(n["resources"].get("GPU", 0) >= 1 for k, n in nodes.items()
               if k != raw["head_node_type"])
    for cmds in (raw["head_start_ray_commands"], raw["worker_start_ray_commands"]):
        start = next(c for c in cmds if "ray start" in c)
        assert "RAY_AUTH_MODE=token" in start
    head = next(c for c in raw["head_start_ray_commands"] if "ray start" in c)
    assert "--dashboard-host=127.0.0.1" in head
    assert any("pip install" in c and "prune-study" in c for c in raw["setup_commands"])
    # The validator is strict: a misspelt field is caught, so the check above means something.
    bad = copy.deepcopy(raw)
    bad["available_node_types"]["head"]["node_cnofig"] = {}
    with pytest.raises(Exception, match="node_cnofig"):
        validate_config(prepare_config(bad))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _node_args() -> list[str]:
    return ["--node-ip-address=127.0.0.1", "--num-cpus=1", "--block", "--disable-usage-stats",
            f"--node-manager-port={_free_port()}", f"--object-manager-port={_free_port()}",
            f"--dashboard-agent-listen-port={_free_port()}",
            f"--dashboard-agent-grpc-port={_free_port()}",
            f"--runtime-env-agent-port={_free_port()}", f"--metrics-export-port={_free_port()}"]


def _end_group(proc: subprocess.Popen) -> None:
    """End a node: every process of its `ray start --block` process group."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    deadline = time.time() + 15
    while time.time() < deadline:
        proc.poll()  # reap the group leader: a zombie still counts as a group member
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ray")
    # The token is this cluster's own, so no other Ray on the machine shares it.
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16)}
    port = _free_port()
    head = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", f"--port={port}", "--include-dashboard=false",
         f"--temp-dir={tmp}", *_node_args()], env=env, start_new_session=True,
        stdout=open(tmp / "head.log", "w"), stderr=subprocess.STDOUT)
    nodes = [head]
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert head.poll() is None, (tmp / "head.log").read_text()[-3000:]
                time.sleep(0.2)
        worker_log = tmp / "worker.log"
        nodes.append(subprocess.Popen(
            [str(BIN / "ray"), "start", f"--address=127.0.0.1:{port}", *_node_args()],
            env=env, start_new_session=True, stdout=open(worker_log, "w"),
            stderr=subprocess.STDOUT))
        deadline = time.time() + 120
        while "Ray runtime started" not in worker_log.read_text() and time.time() < deadline:
            assert nodes[1].poll() is None, worker_log.read_text()[-3000:]
            time.sleep(0.2)
        yield f"127.0.0.1:{port}", env, tmp
    finally:
        for p in nodes:
            _end_group(p)
        for p in nodes:
            with pytest.raises(ProcessLookupError):
                os.killpg(p.pid, 0)


@pytest.mark.slow
def test_a_study_runs_its_trials_on_both_nodes(two_nodes, tmp_path):
    address, env, _ = two_nodes
    spec = {
        "name": "cluster", "data": "digits", "model": {"name": "vgg11", "width": 0.25},
        "baseline": {"epochs": 1}, "methods": "none",
        "space": {"none.finetune_epochs": 1, "none.lr": {"low": 1e-3, "high": 1e-2}},
        "objectives": {"accuracy": "max", "params": "min"},
        "sampler": {"name": "random", "seed": 0}, "trials": 4, "storage": str(tmp_path),
        "resources": {"cpu": 1},
    }
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(spec))
    out = subprocess.run([str(BIN / "prune-study"), "run", str(path), "--address", address,
                          "--json"], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "joined the Ray cluster" in out.stderr and "2 node(s)" in out.stderr
    assert json.loads(out.stdout)["finished"] == 4
    recs = [json.loads(p.read_text()) for p in (tmp_path / "cluster" / "trials").glob("*.json")]
    assert [r["status"] for r in recs] == ["ok"] * 4
    assert len({r["node_id"] for r in recs}) == 2  # each node ran trials

    # Without the cluster's token the client is refused, with a message saying what to set.
    wrong = {**env, "RAY_AUTH_TOKEN": secrets.token_hex(16)}
    out = subprocess.run([str(BIN / "prune-study"), "run", str(path), "--address", address,
                          "--name", "refused"], env=wrong, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 1
    assert f"could not join the Ray cluster at {address}" in out.stderr
    assert "RAY_AUTH_MODE=token" in out.stderr
