"""`python -m benchmarks.reproduce` at tiny scale on data fabricated in the real on-disk formats:
every seed's points run through its shipped spec and land in one table."""

from __future__ import annotations

import json

import pytest

from benchmarks import reproduce
from tests.test_data import cifar_files, cifar_root, cub  # noqa: F401 (fixtures)


def _check(result: dict, out, seed: str) -> None:
    rows = result["rows"]
    assert [r["point"] for r in rows] == [p.label for p in reproduce.SEEDS[seed].points]
    assert all(r["status"] == "ok" for r in rows), rows
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in rows)
    doc = json.loads((out / f"reproduce-{seed}.json").read_text())
    assert doc["rows"] == json.loads(json.dumps(rows)) and doc["tiny"] is True
    md = (out / f"reproduce-{seed}.md").read_text()
    assert all(r["point"] in md for r in rows) and "--tiny" in md


@pytest.mark.parametrize("seed", ["001", "002", "003", "004"])
def test_cifar_seeds_run_every_point(seed, cifar_root, tmp_path):  # noqa: F811
    out = tmp_path / "out"
    result = reproduce.main([seed, "--root", str(cifar_root), "--tiny",
                             "--storage", str(tmp_path / "runs"), "--out", str(out)])
    _check(result, out, seed)
    rows = {r["point"]: r for r in result["rows"]}
    if seed == "002":
        base, pruned = rows["base network"], rows["L1 weight pruning, global, 90%"]
        assert pruned["nonzero_params"] < 0.2 * base["nonzero_params"]
    if seed == "003":
        assert all(r["repr.plain_accuracy"] is not None for r in rows.values())


def test_cub_seed_runs_both_alpha_starts(cub, tmp_path):  # noqa: F811
    out = tmp_path / "out"
    result = reproduce.main(["000", "--root", str(cub[0]), "--tiny",
                             "--storage", str(tmp_path / "runs"), "--out", str(out)])
    _check(result, out, "000")


def test_missing_root_is_refused_before_anything_runs(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        reproduce.main(["003", "--root", str(tmp_path / "nope")])
    assert e.value.code == 2 and "is not a directory" in capsys.readouterr().err
