"""A study on a two-node Ray cluster whose Optuna record lives on a real PostgreSQL server.

The server runs from PostgreSQL's own binaries (initdb, pg_ctl) on a temporary data
directory, on a free port of 127.0.0.1 with its socket in that directory, and asks every
connection for a password (SCRAM). The study's role gets its password from PGPASSWORD
in the driver's environment only, as a user's spec must never hold it.

Where PostgreSQL is not installed the test fails (`.ci/run` installs Debian's
`postgresql`); PRUNE_STUDY_SKIP_POSTGRES=1 in the environment skips it instead.
"""

from __future__ import annotations

import json
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from prune_core.baseline import get_base
from prune_core.trial import load_data
from studies.record import trial_records
from studies.spec import SpecError, parse_spec
from tests import ray_cluster
from tests.ray_cluster import BIN

pytestmark = pytest.mark.slow
SKIP_VAR = "PRUNE_STUDY_SKIP_POSTGRES"
TRIALS = 4


def _pg_bin() -> Path | None:
    """The directory of PostgreSQL's server programs: on PATH, else Debian's newest."""
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).resolve().parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"),
                      key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit()
                      else 0)
    return versions[-1].parent if versions else None


class Server:
    """A throwaway PostgreSQL server; as root its programs run as the `postgres` user
    (initdb and postgres refuse to run as root)."""

    def __init__(self, bindir: Path, root: Path):
        self.bindir, self.root = bindir, root
        self.data, self.log = root / "data", root / "server.log"
        self.port = ray_cluster.free_port()
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")  # Debian's postgresql package creates it
            os.chown(root, user.pw_uid, user.pw_gid)
            self.as_user = ["runuser", "-u", "postgres", "--"]

    def run(self, program: str, *args: str) -> None:
        out = subprocess.run([*self.as_user, str(self.bindir / program), *args],
                             capture_output=True, text=True, timeout=120)
        log = self.log.read_text()[-3000:] if self.log.exists() else ""
        assert out.returncode == 0, f"{program}: {out.stdout[-2000:]}{out.stderr[-2000:]}{log}"

    def start(self, superuser_password: str) -> None:
        pwfile = self.root / "superuser-password"
        pwfile.write_text(superuser_password + "\n")
        if self.as_user:
            shutil.chown(pwfile, "postgres", "postgres")
        self.run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "scram-sha-256",
                 f"--pwfile={pwfile}", "-E", "UTF8", "--locale=C", "--no-sync",
                 "--no-instructions")
        pwfile.unlink()
        # A test server: durability traded for speed on a loaded 2-core machine.
        options = (f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
                   "-c fsync=off -c synchronous_commit=off -c full_page_writes=off")
        self.run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w",
                 "-t", "60", "start")

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self.run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")


@pytest.fixture(scope="module")
def postgres() -> Iterator[dict]:
    """A server with a role and database `study` whose password is the role's only way in."""
    bindir = _pg_bin()
    if bindir is None:
        if os.environ.get(SKIP_VAR) == "1":
            pytest.skip(f"PostgreSQL is not installed and {SKIP_VAR}=1")
        pytest.fail("PostgreSQL's pg_ctl is neither on PATH nor in /usr/lib/postgresql/*/bin; "
                    f"install it (Debian: apt-get install postgresql) or set {SKIP_VAR}=1")
    import psycopg
    from psycopg import sql

    # Not pytest's tmp_path: that is private to the user running the tests.
    root = Path(tempfile.mkdtemp(prefix="prune-study-pg-"))
    server = Server(bindir, root)
    try:
        superuser = secrets.token_hex(12)
        server.start(superuser)
        password = secrets.token_hex(12)
        with psycopg.connect(host="127.0.0.1", port=server.port, user="postgres",
                             password=superuser, dbname="postgres", autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE ROLE study LOGIN PASSWORD {}").format(
                sql.Literal(password)))
            conn.execute("CREATE DATABASE study OWNER study")
        # The password is asked for: a wrong one is refused.
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            psycopg.connect(host="127.0.0.1", port=server.port, user="study",
                            password="wrong", dbname="study").close()
        yield {"url": f"postgresql+psycopg://study@127.0.0.1:{server.port}/study",
               "password": password, "root": root}
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory):
    with ray_cluster.two_nodes(tmp_path_factory.mktemp("ray")) as (address, env, _):
        yield address, env


def _check_record(study_dir: Path, url: str, password: str) -> tuple[dict[int, dict], list]:
    """Every trial told to Optuna once, COMPLETE, as the study directory records it;
    returns the records by trial number and Optuna's trials."""
    recs = trial_records(study_dir)
    assert len(recs) == TRIALS and all(r["status"] == "ok" for r in recs), recs
    by_number = {r["number"]: r for r in recs}
    assert len(by_number) == TRIALS
    storage = optuna.storages.RDBStorage(
        url, engine_kwargs={"connect_args": {"password": password}})
    trials = optuna.load_study(study_name=study_dir.name, storage=storage).get_trials()
    numbers = [t.number for t in trials]
    assert len(numbers) == len(set(numbers)) == TRIALS
    assert {t.state for t in trials} == {TrialState.COMPLETE}
    assert set(numbers) == set(by_number)
    for t in trials:
        rec = by_number[t.number]
        assert t.params["none.lr"] == rec["params"]["none.lr"]
        assert t.values == [rec["row"]["accuracy"], rec["row"]["params"]]
    return by_number, trials


def test_a_cluster_study_keeps_its_optuna_record_on_postgres(postgres, two_nodes, tmp_path):
    address, cluster_env = two_nodes
    url = postgres["url"]
    # The spec names the server, never the password.
    with pytest.raises(SpecError, match="holds a password"):
        parse_spec({"name": "x", "methods": "none", "objectives": {"accuracy": "max"},
                    "optuna_storage": url.replace("study@", "study:secret@")})
    spec = {
        "name": "pg", "data": {"name": "digits", "image_size": 16},
        "model": {"name": "c3", "k": 8}, "baseline": {"epochs": 1}, "methods": "none",
        "space": {"none.finetune_epochs": 1, "none.lr": {"low": 1e-3, "high": 1e-1}},
        "objectives": {"accuracy": "max", "params": "min"},
        "sampler": {"name": "random", "seed": 0}, "trials": TRIALS,
        "resources": {"cpu": 0.5}, "max_concurrent": TRIALS,  # all four at once on 2 CPUs
        "storage": str(tmp_path), "optuna_storage": url,
    }
    path = tmp_path / "pg.yaml"
    path.write_text(yaml.safe_dump(spec))
    # The base model is trained here into the storage's cache, as an earlier study would
    # have left it (tests/test_cluster.py trains one through Ray): the run reuses it.
    study = parse_spec(spec)
    get_base(study.trial_spec().base_spec(), load_data(study.trial_spec()), study.cache_dir,
             log=lambda _m: None)
    # libpq reads the password from the environment; no ~/.pgpass of this machine is read.
    env = {**cluster_env, "PGPASSWORD": postgres["password"],
           "PGPASSFILE": str(postgres["root"] / "no-pgpass")}
    out = subprocess.run([str(BIN / "prune-study"), "run", str(path), "--address", address,
                          "--json"], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout)["finished"] == TRIALS
    assert "found in the cache" in out.stderr
    study_dir = tmp_path / "pg"
    assert not (study_dir / "optuna.db").exists()
    assert url in (study_dir / "spec.yaml").read_text()
    before, trials = _check_record(study_dir, url, postgres["password"])
    # The four were open in the storage at once: each asked before any was told.
    assert max(t.datetime_start for t in trials) < min(t.datetime_complete for t in trials)

    # Resuming the finished study restores its searcher (pickled with the storage's URL,
    # which reconnects with PGPASSWORD) and adds nothing, to Optuna or to the directory.
    out = subprocess.run([str(BIN / "prune-study"), "resume", str(study_dir), "--address",
                          address, "--json"], env=env, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout)["finished"] == TRIALS
    after, _ = _check_record(study_dir, url, postgres["password"])
    assert {n: r["ended"] for n, r in after.items()} == {n: r["ended"] for n, r in
                                                         before.items()}
    # The password reached the driver through its environment only: no file of the study
    # (spec, records, Tune's pickled searcher with its storage) holds it.
    secret = postgres["password"].encode()
    assert not [p for p in study_dir.rglob("*") if p.is_file() and secret in p.read_bytes()]
