"""tools/docs_check.py: the docs' numbers are in the data they cite, and each benchmark's data
is newer than the code it measures."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from tools import docs_check
from tools.docs_check import ROOT, check_fresh, check_numbers


@pytest.fixture(autouse=True)
def _fresh_cache():
    docs_check._values.cache_clear()
    yield
    docs_check._values.cache_clear()


def test_the_repositorys_docs_and_data_pass():
    """Every measured number of README.md, docs/results.md and docs/benchmarks.md is in the
    data it cites, and no benchmark's data is older than the code it measures (other than
    the reruns PENDING_RERUN names and says why)."""
    assert check_numbers(ROOT) == []
    assert check_fresh(ROOT) == []


def _copy_docs(tmp_path):
    """The docs and their data, outside the repository, and the problems the copy has before
    anything is planted (numbers of earlier runs cannot be looked up without the history)."""
    shutil.copy(ROOT / "README.md", tmp_path / "README.md")
    shutil.copytree(ROOT / "docs", tmp_path / "docs")
    return tmp_path / "docs" / "results.md", set(check_numbers(tmp_path))


def test_a_planted_wrong_number_fails(tmp_path):
    results, before = _copy_docs(tmp_path)
    text = results.read_text()
    row = next(line for line in text.splitlines() if line.startswith("| TPE |"))
    mean = row.split("|")[2].split()[0]  # "1.026": TPE's final hypervolume in search.json
    wrong = f"{float(mean) + 0.137:.3f}"
    values, _ = docs_check._values(ROOT, "docs/benchmarks/search.json", None)
    assert not any(abs(v - float(wrong)) < 0.0006 for v in values)  # really wrong
    results.write_text(text.replace(row, row.replace(mean, wrong, 1)))
    problems = sorted(set(check_numbers(tmp_path)) - before)
    assert len(problems) == 1, problems
    assert f"{wrong!r} is in none of docs/benchmarks/search.json" in problems[0]
    assert problems[0].startswith("docs/results.md:")


def test_a_number_never_measured_and_one_without_a_source_fail(tmp_path):
    results, before = _copy_docs(tmp_path)
    text = results.read_text()
    results.write_text(text.replace(
        "TPE and GP finished above random", "TPE kept 123.45 % of its trials. TPE and GP "
        "finished above random", 1) + "\n## A new section\n\nIt ran 4.25x faster.\n")
    problems = set(check_numbers(tmp_path)) - before
    assert any("'123.45 %' is in none of docs/benchmarks/search.json" in p for p in problems)
    assert any("4.25x stated with no data cited" in p for p in problems), problems
    assert len(problems) == 2


def _git(repo, *args):
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                   env={"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
                        "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t",
                        "PATH": "/usr/bin:/bin"})


def _repo(tmp_path, monkeypatch):
    """A repository with one benchmark, its data and a results page citing it."""
    repo = tmp_path / "repo"
    (repo / "benchmarks").mkdir(parents=True)
    (repo / "docs" / "benchmarks").mkdir(parents=True)
    (repo / "benchmarks" / "bench_fake.py").write_text("SPEED = 1\n")
    (repo / "prune_core").mkdir()
    (repo / "prune_core" / "fast.py").write_text("x = 1\ndef f(a):\n    return a * 2\n")
    data = repo / "docs" / "benchmarks" / "fake.json"
    data.write_text(json.dumps({"speedup": 2.5, "command": "python -m benchmarks.bench_fake"}))
    (repo / "docs" / "results.md").write_text(
        "# Results\n\n## Fake\n\n`python -m benchmarks.bench_fake` ([details]"
        "(benchmarks/fake.md)): 2.5x faster.\n")
    _git(repo, "init", "-q")
    _git(repo, "add", ".")
    _git(repo, "commit", "-q", "-m", "first run")
    monkeypatch.setitem(docs_check.MEASURED_CODE, "bench_fake",
                        ("benchmarks/bench_fake.py", "prune_core/"))
    return repo, data


def test_data_older_than_the_code_it_measures_is_stale(tmp_path, monkeypatch):
    repo, data = _repo(tmp_path, monkeypatch)
    assert check_fresh(repo) == []
    # words and types only: no number can move
    (repo / "prune_core" / "fast.py").write_text(
        '"""Fast."""\nfrom typing import TYPE_CHECKING\nif TYPE_CHECKING:\n'
        '    from prune_core.x import Speed\n\nx: int = 1  # the speed\n\n\n'
        'def f(a: Speed) -> int:\n'
        '    """Twice."""\n    return a * 2\n')
    _git(repo, "commit", "-qam", "words")
    assert check_fresh(repo) == [], "a docstring, comment or annotation is not a change"
    (repo / "prune_core" / "fast.py").write_text("x = 2\ndef f(a):\n    return a * 2\n")
    _git(repo, "commit", "-qam", "faster")
    (problem,) = check_fresh(repo)
    assert problem.startswith("docs/benchmarks/fake.json: older than prune_core/fast.py")
    assert problem.endswith("rerun python -m benchmarks.bench_fake")
    # a rerun awaited on purpose: listed, not failed
    waiting: list[str] = []
    assert check_fresh(repo, pending={"bench_fake": "an idle machine"}, verbose=waiting) == []
    assert waiting == [f"pending (an idle machine): {problem}"]
    data.write_text(json.dumps({"speedup": 3.0, "command": "python -m benchmarks.bench_fake"}))
    _git(repo, "commit", "-qam", "rerun")
    assert check_fresh(repo) == []
    (problem,) = check_fresh(repo, pending={"bench_fake": "an idle machine"})
    assert "PENDING_RERUN names 'bench_fake', whose data is fresh" in problem
    monkeypatch.delitem(docs_check.MEASURED_CODE, "bench_fake")
    (problem,) = check_fresh(repo)
    assert "written by 'bench_fake', which has no entry in MEASURED_CODE" in problem


def test_data_merged_from_several_runs_is_checked_by_their_commands(tmp_path, monkeypatch):
    """The zoo's JSON holds the runs merged into it, each with its command, and no
    command of its own."""
    repo, data = _repo(tmp_path, monkeypatch)
    data.write_text(json.dumps({"speedup": 2.5, "runs": [
        {"command": "python -m benchmarks.bench_fake --models a"},
        {"command": "python -m benchmarks.bench_fake --models b"}]}))
    _git(repo, "commit", "-qam", "merged runs")
    assert check_fresh(repo) == []
    (repo / "prune_core" / "fast.py").write_text("x = 2\ndef f(a):\n    return a * 2\n")
    _git(repo, "commit", "-qam", "faster")
    (problem,) = check_fresh(repo)
    assert problem.startswith("docs/benchmarks/fake.json: older than prune_core/fast.py")


def test_an_earlier_runs_number_is_found_at_its_commit(tmp_path, monkeypatch):
    repo, data = _repo(tmp_path, monkeypatch)
    first = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"],
                           capture_output=True, text=True, check=True).stdout.strip()
    data.write_text(json.dumps({"speedup": 3.0, "command": "python -m benchmarks.bench_fake"}))
    _git(repo, "commit", "-qam", "rerun")
    results = repo / "docs" / "results.md"
    results.write_text(results.read_text().replace(
        "2.5x faster.", "3.0x faster (an earlier run gave 2.5x)."))
    (problem,) = check_numbers(repo)
    assert "'2.5x' is in none of docs/benchmarks/fake.json" in problem
    results.write_text(results.read_text().replace(
        "an earlier run gave", f"an earlier run, commit {first}, gave"))
    assert check_numbers(repo) == []
