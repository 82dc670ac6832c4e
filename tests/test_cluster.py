"""A study on a real two-node Ray cluster (both nodes on 127.0.0.1, tests/ray_cluster.py),
and cluster.yaml."""

from __future__ import annotations

import copy
import json
import re
import secrets
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

from tests import ray_cluster
from tests.ray_cluster import BIN

ROOT = Path(__file__).resolve().parent.parent


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
    # Every node (setup_commands run on the head and the workers alike) installs torch pinned
    # as the Makefile does, then this checkout with its cluster extra (Ray at the pinned
    # version, boto3); no node-specific setup installs anything else.
    setup = raw["setup_commands"]
    torch_pin = re.search(r"torch==\S+ torchvision==\S+", (ROOT / "Makefile").read_text())
    torch_at = next(i for i, c in enumerate(setup) if "pip install" in c and "torch==" in c)
    assert torch_pin.group(0) in setup[torch_at]
    project_at = next(i for i, c in enumerate(setup) if "pip install" in c and "-e" in c)
    assert torch_at < project_at
    assert re.search(r"cd ~/prune-study && \S*pip install (-q )?-e '\.\[cluster\]'$",
                     setup[project_at]), setup[project_at]
    assert raw["file_mounts"]["~/prune-study"] == "."
    for key in ("head_setup_commands", "worker_setup_commands"):
        assert not any("pip install" in c for c in raw.get(key) or [])
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    assert any(r.startswith("ray[default]") for r in extras["cluster"])
    # The validator is strict: a misspelt field is caught, so the check above means something.
    bad = copy.deepcopy(raw)
    bad["available_node_types"]["head"]["node_cnofig"] = {}
    with pytest.raises(Exception, match="node_cnofig"):
        validate_config(prepare_config(bad))


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory):
    with ray_cluster.two_nodes(tmp_path_factory.mktemp("ray")) as (address, env, nodes):
        yield address, env
    assert not any(ray_cluster.group_alive(p) for p in nodes)


@pytest.mark.slow
def test_a_study_runs_its_trials_on_both_nodes(two_nodes, tmp_path):
    address, env = two_nodes
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
