"""A real two-node Ray cluster on 127.0.0.1 for tests, with token authentication.

The nodes are started with `ray start --block` in their own process groups, on their own
ports and temp dir; they are ended by process group, never with `ray stop` (which ends
every Ray process on the machine).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

# The environment running the tests: its `ray` and `prune-study` scripts.
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _node_args() -> list[str]:
    return ["--node-ip-address=127.0.0.1", "--num-cpus=1", "--block", "--disable-usage-stats",
            f"--node-manager-port={free_port()}", f"--object-manager-port={free_port()}",
            f"--dashboard-agent-listen-port={free_port()}",
            f"--dashboard-agent-grpc-port={free_port()}",
            f"--runtime-env-agent-port={free_port()}", f"--metrics-export-port={free_port()}"]


def end_group(proc: subprocess.Popen) -> None:
    """End a process started with ``start_new_session``: every process of its group."""
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


def group_alive(proc: subprocess.Popen) -> bool:
    try:
        os.killpg(proc.pid, 0)
    except ProcessLookupError:
        return False
    return True


@contextlib.contextmanager
def two_nodes(tmp: Path) -> Iterator[tuple[str, dict, list[subprocess.Popen]]]:
    """Start a head and a worker node of one CPU each; yields ``(address, env, nodes)``.

    ``env`` holds the cluster's own token (no other Ray on the machine shares it) and
    ``RAY_AUTH_MODE=token``: a client needs both to join.
    """
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16)}
    port = free_port()
    # Ray's session directory, short: its socket paths must fit in 107 bytes, which a
    # pytest-xdist worker's tmp_path (.../pytest-N/popen-gw0/...) does not leave room for.
    ray_tmp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    head = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", f"--port={port}", "--include-dashboard=false",
         f"--temp-dir={ray_tmp}", *_node_args()], env=env, start_new_session=True,
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
        yield f"127.0.0.1:{port}", env, nodes
    finally:
        for p in nodes:
            end_group(p)
        shutil.rmtree(ray_tmp, ignore_errors=True)
