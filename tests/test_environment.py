"""One environment record beside every study and benchmark: its keys, and a git call that
answers None rather than failing where there is no git or no checkout."""

from __future__ import annotations

import ast
import json
import re
import shutil
import subprocess

import pytest

from prune_core import environment as env_module
from prune_core.environment import environment, git_state

# What study.json and the Optuna study stored before the record had one source; readers
# (report, tests, users' scripts) rely on them.
STUDY_KEYS = {"prune_study", "torch", "python", "cuda", "device", "git_commit", "ray", "optuna"}


def test_environment_is_flat_json_with_versions_machine_and_load():
    env = environment()
    assert json.loads(json.dumps(env)) == env
    assert {"prune_study", "torch", "python", "cuda", "device", "machine", "cpus",
            "torch_threads", "git_commit", "dirty", "load_average"} <= set(env)
    assert env["cpus"] >= 1 and env["torch_threads"] >= 1
    assert f"{env['cpus']} logical CPUs" in env["machine"]
    assert env["load_average"] is None or len(env["load_average"]) == 3


@pytest.mark.skipif(shutil.which("git") is None, reason="no git on this machine")
def test_git_state_names_this_checkouts_commit():
    inside = subprocess.run(["git", "-C", str(env_module.ROOT), "rev-parse", "HEAD"],
                            capture_output=True, text=True)
    if inside.returncode != 0:
        pytest.skip("the package does not run from a git checkout here")
    commit, dirty = git_state()
    assert commit == inside.stdout.strip() and re.fullmatch(r"[0-9a-f]{40}", commit)
    assert isinstance(dirty, bool)


def test_git_state_is_none_outside_a_checkout(tmp_path, monkeypatch):
    monkeypatch.setattr(env_module, "ROOT", tmp_path)
    assert git_state() == (None, None)


@pytest.mark.skipif(shutil.which("git") is None, reason="no git on this machine")
def test_a_repository_merely_containing_the_package_is_not_its_checkout(tmp_path, monkeypatch):
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    subprocess.run(["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t",
                    "commit", "-q", "--allow-empty", "-m", "x"], check=True)
    site = tmp_path / "lib" / "site-packages"
    site.mkdir(parents=True)
    monkeypatch.setattr(env_module, "ROOT", site)
    assert git_state() == (None, None)


@pytest.mark.parametrize("error", [FileNotFoundError("git"),
                                   subprocess.TimeoutExpired(["git"], 5.0),
                                   PermissionError("git")])
def test_git_state_never_raises(monkeypatch, error):
    def fail(*_args, **_kwargs):
        raise error

    monkeypatch.setattr(env_module.subprocess, "run", fail)
    assert git_state() == (None, None)
    assert environment()["git_commit"] is None


def test_the_study_record_keeps_its_keys():
    from studies.record import environment as study_environment

    env = study_environment()
    assert STUDY_KEYS <= set(env)
    assert set(environment()) <= set(env)


def test_the_module_needs_torch_and_the_standard_library_only():
    tree = ast.parse(open(env_module.__file__).read())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import)
                for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree)
                 if isinstance(n, ast.ImportFrom) and n.module}
    assert imported <= {"__future__", "os", "platform", "subprocess", "pathlib", "torch",
                        "prune_core"}
