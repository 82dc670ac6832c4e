"""`python -m benchmarks.reproduce` at tiny scale on data fabricated in the real on-disk formats:
each seed's points become a study (enqueued points, repeats), run through `prune-study run`
on a local Ray, resumed when run again, and land in one table beside the seed's numbers."""

from __future__ import annotations

import json
import os

import pytest

from benchmarks import reproduce
from studies.record import trial_records
from tests.cifar_trust import ROOT_ENV
from tests.conftest import ROOT
from tests.test_data import cifar_files, cifar_root, cub  # noqa: F401 (fixtures)
from tests.test_sampler_studies import _interrupt_after_first_trial

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def local_ray(cifar_files):  # noqa: F811
    """A local Ray whose workers trust the fabricated CIFAR files as this process does
    (``cifar_root``): the studies' trials load them there."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
    env = {ROOT_ENV: str(cifar_files[0]),
           "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH"))
                                         if p)}
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": env,
                          "worker_process_setup_hook": "tests.cifar_trust.trust"})
    yield
    ray.shutdown()


def _check(result: dict, out, seed: str, seeds: int = 1) -> None:
    rows = result["rows"]
    assert [r["point"] for r in rows] == [p.label for p in reproduce.SEEDS[seed].points]
    assert all(r["runs"] == r["ok"] == seeds for r in rows), rows
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in rows)
    doc = json.loads((out / f"reproduce-{seed}.json").read_text())
    assert doc["rows"] == json.loads(json.dumps(rows)) and doc["tiny"] is True
    md = (out / f"reproduce-{seed}.md").read_text()
    assert all(r["point"] in md for r in rows) and "--tiny" in md
    assert all(c in md for c in result["commands"])


def _main(seed: str, root, tmp_path, *extra: str) -> dict:
    return reproduce.main([seed, "--root", str(root), "--tiny", "--seeds", "1",
                           "--storage", str(tmp_path / "runs"), "--out", str(tmp_path / "out"),
                           *extra])


# 002 (several chains, a choice between them) and 003 (two data settings, two studies) run;
# 001 and 004 build their studies the same way and are validated below, without running.
@pytest.mark.parametrize("seed", ["002", "003"])
def test_cifar_seeds_run_every_point_as_a_study(seed, cifar_root, tmp_path,  # noqa: F811
                                                local_ray):
    result = _main(seed, cifar_root, tmp_path)
    _check(result, tmp_path / "out", seed)
    rows = {r["point"]: r for r in result["rows"]}
    if seed == "002":
        base, pruned = rows["base network"], rows["L1 weight pruning, global, 90%"]
        assert pruned["nonzero_params"] < 0.2 * base["nonzero_params"]
        # orthogonal factorization reports its degrees of freedom beside its stored params
        ortho = rows["orthogonal factorization, every conv"]
        assert ortho["factorize.dof_params"] < ortho["params"] == base["params"]
    if seed == "003":  # one study per data setting: random crops, and none
        assert [s["study"] for s in result["rows"]].count("reproduce-003-augment-false") == 1
        assert all(r["repr.plain_accuracy"] is not None for r in rows.values())
        # train beside test accuracy, and the moment right after re-initialisation
        for column in ("repr.train_accuracy", "repr.plain_train_accuracy",
                       "cycle 1: right after re-initialisation (val)"):
            assert all(0.0 <= r[column] <= 1.0 for r in rows.values()), column


def test_seed_000_runs_each_point_with_two_seeds_resumes_and_reads_the_seeds_moments(
        cub, tmp_path, local_ray):  # noqa: F811
    """--seeds 2 runs each point twice; interrupted after its first run, the same command
    resumes the study and keeps what had finished. TransTailor's rows are read at the
    moments the seed reports: alpha as drawn, pruned before fine-tuning, fine-tuned."""
    study_dir = tmp_path / "runs" / "reproduce-000"
    watcher = _interrupt_after_first_trial(study_dir)
    with pytest.raises(SystemExit, match="run this command again to resume"):
        _main("000", cub[0], tmp_path, "--seeds", "2")
    watcher.join(timeout=5)
    first = {r["trial_id"]: r["row"] for r in trial_records(study_dir) if r["status"] == "ok"}
    assert first

    result = _main("000", cub[0], tmp_path, "--seeds", "2")
    assert result["commands"] == [f"prune-study resume {study_dir}"]
    _check(result, tmp_path / "out", "000", seeds=2)
    ok = {r["trial_id"]: r["row"] for r in trial_records(study_dir) if r["status"] == "ok"}
    assert len(ok) == 6 and all(ok[t] == row for t, row in first.items())
    # The trials decoded CUB once into the storage's data cache and mapped it after that.
    cached = [d for d in (tmp_path / "runs" / "_cache" / "data").iterdir() if d.is_dir()]
    assert [json.loads((d / "manifest.json").read_text())["dataset"] for d in cached] == [
        "cub200"]
    assert all(r["accuracy sd"] is not None for r in result["rows"])
    spec = (tmp_path / "out" / "reproduce-000.yaml").read_text()
    assert "repeats: 2" in spec and "enqueue:" in spec
    rows = {r["point"].split(" (")[0]: r for r in result["rows"]}
    for r in rows.values():
        assert r["round 1: alpha as drawn"] is not None
        assert r["round 1: pruned, before fine-tuning"] is not None
    ones = rows["alpha from ones, alpha into the weights"]
    # alpha at one is the starting model, on the split tau is checked on
    assert ones["round 1: alpha as drawn"] == pytest.approx(ones["transtailor.start_val_accuracy"])


@pytest.mark.parametrize("seed", sorted(reproduce.SEEDS))
def test_every_seeds_studies_validate_and_enqueue_each_point(seed, tmp_path):
    from studies.spec import parse_spec

    planned = reproduce.studies_of(seed, str(tmp_path), tiny=True, storage=str(tmp_path),
                                   seeds=3)
    points = [p for _, pts in planned for p, _ in pts]
    assert [p.label for p in points] == [p.label for p in reproduce.SEEDS[seed].points]
    for study, pts in planned:
        spec = parse_spec(study, source=seed, rehearse=False)
        assert spec.trials == len(pts) and spec.repeats == 3 and spec.sampler == "random"
        # each point's searched values are enqueued, in order, and nothing else is searched
        assert len(spec.enqueue) in (0, len(pts))
        for point, (_, params) in zip(spec.enqueue, pts, strict=False):
            assert all(params.get(k) == v for k, v in point.items())


def test_missing_root_and_weights_are_refused_before_anything_runs(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        reproduce.main(["003", "--root", str(tmp_path / "nope")])
    assert e.value.code == 2 and "is not a directory" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        reproduce.main(["000", "--root", str(tmp_path), "--weights", str(tmp_path / "w.pth")])
    assert e.value.code == 2 and "--weights" in capsys.readouterr().err


def test_seed_004_columns_read_the_last_pass_of_the_alpha_schedule():
    derived = reproduce.SEEDS["004"].derived
    row = {"branch.val_accuracy_per_step": [
        {"pass": 0, "alpha": 0.5, "val_accuracy": 0.1}, {"pass": 0, "alpha": 0.0,
                                                         "val_accuracy": 0.2},
        {"pass": 1, "alpha": 0.9, "val_accuracy": 0.9}, {"pass": 1, "alpha": 0.45,
                                                         "val_accuracy": 0.7},
        {"pass": 1, "alpha": 0.0, "val_accuracy": 0.3}]}
    assert [derived[c](row) for c in ("first alpha step (val)", "alpha nearest 0.4 (val)",
                                      "alpha 0 (val)")] == [0.9, 0.7, 0.3]
    assert all(f({}) is None for f in derived.values())
    first = reproduce.SEEDS["003"].derived["cycle 1: right after re-initialisation (val)"]
    assert first({"repr.reinit_val_accuracy_per_cycle": [0.4, 0.6]}) == 0.4
    assert first({}) is None
