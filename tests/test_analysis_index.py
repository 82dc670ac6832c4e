"""The trial index `status` reads (analysis.studydir.indexed_trials): it gives what reading
every trial file gives, reads only the files that changed, and is a cache that can be lost."""

from __future__ import annotations

import json
import os
import shutil

import pandas as pd
import pytest

from analysis import results, studydir
from analysis.studydir import INDEX, skipped_files
from tests.study_factory import make_study


@pytest.fixture
def study(tmp_path, monkeypatch):
    """A small study; files count as settled as soon as the index is written (the racy
    window is for file systems with coarse time stamps, tested on its own below)."""
    monkeypatch.setattr(studydir, "RACY_NS", 0)
    path = make_study(tmp_path, "idx", methods=("slimming", "magnitude"), ok=14, failed=2,
                      running=2, pending=1)
    for file in (path / "trials").glob("*.json"):  # accuracy intervals: near_front counts
        doc = json.loads(file.read_text())
        if doc["row"]:
            doc["row"]["test_images"] = 60
            file.write_text(json.dumps(doc))
    return path


@pytest.fixture
def parsed(monkeypatch):
    """The trial files parsed (by name) since the test started."""
    names: list[str] = []
    real = studydir.check_trial

    def counting(doc, file, space=None):
        names.append(file.name)
        return real(doc, file, space)

    monkeypatch.setattr(studydir, "check_trial", counting)
    return names


def _summary(path) -> tuple[dict, list[str]]:
    with skipped_files(lambda m: None) as seen:
        s = results.summary(path)
    return s, list(seen)


def _full_summary(path, monkeypatch) -> dict:
    """summary() computed from every trial file read in full (load's path), no index."""
    with monkeypatch.context() as m:
        m.setattr(results, "_summary_table", results._load)
        return results.summary(path)


def _trial_file(path, n: int):
    return sorted((path / "trials").glob("*.json"))[n]


def test_warm_summary_reads_no_file_and_equals_the_full_read(study, parsed, monkeypatch):
    cold, _ = _summary(study)
    assert (study / INDEX).is_file()
    assert len(parsed) == 19
    parsed.clear()
    warm, _ = _summary(study)
    assert parsed == []
    assert cold == warm == _full_summary(study, monkeypatch)
    assert warm["trials"] == 19 and warm["finished"] == 14 and warm["near_front"] > 0


def test_the_summary_columns_equal_those_of_load(study):
    info = results.study_info(study)
    results.summary(study)  # writes the index
    small = results._summary_table(info)
    full = results._load(info)
    cols = ["study", *results.SUMMARY_COLUMNS, *info.objectives, "feasible", "violated",
            "on_front", "accuracy_low", "accuracy_high", "near_front"]
    pd.testing.assert_frame_equal(small[cols], full[cols], check_exact=True)
    assert full["near_front"].any() and full["on_front"].any()


def test_a_changed_trial_file_is_read_again(study, parsed):
    before, _ = _summary(study)
    file = next(f for f in sorted((study / "trials").glob("*.json"))
                if json.loads(f.read_text())["status"] == "ok")
    doc = json.loads(file.read_text())
    doc["row"]["accuracy"] = 1.0  # better than every other trial
    tmp = file.with_name(".x.tmp")
    tmp.write_text(json.dumps(doc))
    os.replace(tmp, file)  # as the Recorder writes
    parsed.clear()
    after, _ = _summary(study)
    assert parsed == [file.name]
    assert after["best"]["accuracy"] == 1.0 != before["best"]["accuracy"]


def test_a_new_trial_appears_and_a_deleted_one_disappears(study, parsed):
    before, _ = _summary(study)
    src = _trial_file(study, 0)
    doc = json.loads(src.read_text())
    doc.update(trial_id="zzznew", number=99)
    (study / "trials" / "zzznew.json").write_text(json.dumps(doc))
    parsed.clear()
    added, _ = _summary(study)
    assert parsed == ["zzznew.json"]
    assert added["trials"] == before["trials"] + 1
    assert added[_status_key(doc)] == before[_status_key(doc)] + 1
    (study / "trials" / "zzznew.json").unlink()
    src.unlink()
    parsed.clear()
    removed, _ = _summary(study)
    assert parsed == []
    assert removed["trials"] == before["trials"] - 1
    assert "zzznew.json" not in json.loads((study / INDEX).read_text())["files"]


def _status_key(doc: dict) -> str:
    return "finished" if doc["status"] == "ok" else doc["status"]


@pytest.mark.parametrize("damage", [b"", b"{\"format\": 1, \"files\": [", b"\x00\xff",
                                    b"[1, 2]", b"{\"format\": 1, \"key\": 3}"])
def test_a_damaged_index_is_rebuilt(study, parsed, damage, monkeypatch):
    good, _ = _summary(study)
    (study / INDEX).write_bytes(damage)
    parsed.clear()
    again, seen = _summary(study)
    assert again == good and seen == []
    assert len(parsed) == 19
    assert json.loads((study / INDEX).read_text())["format"] == studydir.INDEX_FORMAT


def test_a_damaged_entry_is_read_again(study, parsed):
    good, _ = _summary(study)
    index = json.loads((study / INDEX).read_text())
    name = _trial_file(study, 3).name
    index["files"][name][4] = {"trial_id": "someone-else", "status": "ok"}
    (study / INDEX).write_text(json.dumps(index))
    parsed.clear()
    again, _ = _summary(study)
    assert parsed == [name] and again == good


def test_an_index_for_other_objectives_is_rebuilt(study, parsed, monkeypatch):
    _summary(study)
    doc = json.loads((study / "study.json").read_text())
    doc["objectives"] = {"accuracy": "max", "size_bytes": "min"}
    (study / "study.json").write_text(json.dumps(doc))
    parsed.clear()
    s, _ = _summary(study)
    assert len(parsed) == 19
    assert s == _full_summary(study, monkeypatch)
    assert set(s["best"]) == {"accuracy", "size_bytes"}


def test_a_damaged_trial_file_warns_with_and_without_the_index(study, parsed):
    bad = _trial_file(study, 2)
    bad.write_text('{"trial_id": "cut off')
    cold, seen_cold = _summary(study)
    parsed.clear()
    warm, seen_warm = _summary(study)
    assert parsed == []  # the fault is remembered, not parsed again
    assert seen_cold == seen_warm and len(seen_warm) == 1
    assert str(bad) in seen_warm[0] and "not valid JSON" in seen_warm[0]
    assert cold == warm and warm["trials"] == 18


def test_a_study_that_cannot_be_written_is_read_without_an_index(study, parsed, monkeypatch):
    def refuse(src, dst):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(studydir.os, "replace", refuse)
    first, _ = _summary(study)
    parsed.clear()
    second, _ = _summary(study)
    assert len(parsed) == 19  # nothing cached: every file read again
    assert first == second == _full_summary(study, monkeypatch)
    assert not (study / INDEX).exists()
    assert [p.name for p in study.iterdir() if p.name.startswith(".")] == []



def test_a_read_only_copy_with_an_index_uses_it(tmp_path, study, parsed, monkeypatch):
    _summary(study)
    copy = tmp_path / "copy"
    shutil.copytree(study, copy)  # new inodes: the copy's index does not describe its files
    parsed.clear()
    s, _ = _summary(copy)
    assert len(parsed) == 19 and s["trials"] == 19


def test_recently_changed_files_are_not_trusted(tmp_path, parsed):
    path = make_study(tmp_path, "racy", ok=3, failed=0, running=0)
    _summary(path)
    parsed.clear()
    _summary(path)  # the files are younger than RACY_NS before the index: read again
    assert len(parsed) == 3


def test_a_changed_stamp_is_read_again_whatever_the_clocks_say(study, parsed):
    """A file server's clock may run behind the reader's: a file changed after the index
    was written can look older than it. Its stamp (inode, ctime, size) still differs."""
    _summary(study)
    file = _trial_file(study, 5)
    doc = json.loads(file.read_text())
    doc["number"] = 500
    tmp = file.with_name(".y.tmp")
    tmp.write_text(json.dumps(doc))
    os.replace(tmp, file)
    index = json.loads((study / INDEX).read_text())
    index["written_ns"] += 10**15  # the index looks far newer than the change
    (study / INDEX).write_text(json.dumps(index))
    parsed.clear()
    s, _ = _summary(study)
    assert parsed == [file.name]
    table = results._summary_table(results.study_info(study))
    assert 500 in set(table["number"]) and s["trials"] == 19


def test_trial_states_come_from_the_index_and_the_running_files(study, parsed):
    results.summary(study)  # writes the index
    parsed.clear()
    states = results.trial_states(study)
    assert parsed == []  # no trial file checked again: only the running ones read for `last`
    records = studydir.trial_records(study)
    assert [(s["trial_id"], s["number"], s["status"], s["started"], s["ended"])
            for s in states] == [(r["trial_id"], r["number"], r["status"], r.get("started"),
                                  r.get("ended")) for r in records]
    running = {r["trial_id"]: r["last"] for r in records if r["status"] == "running"}
    assert len(running) == 2
    assert {s["trial_id"]: s["last"] for s in states if "last" in s} == running
    assert all(isinstance(s["last"].get("epoch"), int) for s in states if "last" in s)
