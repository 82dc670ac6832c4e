"""Damaged study directories: `status` and `report` never show a traceback, skip what is
damaged with a warning naming it, refuse a damaged study.json / base.json with exit 2, and
write the report only inside its output folder."""

from __future__ import annotations

import ctypes
import io
import json
import os
import re
import subprocess
from contextlib import contextmanager, nullcontext, redirect_stderr, redirect_stdout

import pytest
import yaml

from analysis import report, results
from benchmarks.reliability_dirs import DAMAGES, make_valid
from studies.cli import EXIT_BAD_INPUT, EXIT_OK, main
from tests.study_factory import make_study

# `report` draws figures: it runs on a few kinds alone, and on one study damaged in several
# ways at once; `status` runs on every kind.
REPORTED = ("no-trials-dir", "base-json-list", "study-objectives-direction", "dir-is-file")
TOGETHER = ("trial-utf16", "trial-macs-negative", "history-cut-last-line",
            "history-garbage-line", "base-json-missing")


@contextmanager
def file_modes_apply():
    """Root reads files of any mode: drop, for this thread, the two capabilities that let it
    (as ``setpriv --bounding-set=-dac_override,-dac_read_search`` does for a command)."""
    if os.geteuid() != 0:
        yield
        return

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                    ("inheritable", ctypes.c_uint32)]

    libc = ctypes.CDLL(None, use_errno=True)
    header, data = Header(0x20080522, 0), (Data * 2)()  # _LINUX_CAPABILITY_VERSION_3
    if libc.capget(ctypes.byref(header), data) != 0:
        pytest.skip("cannot read this process's capabilities")
    saved = data[0].effective
    data[0].effective &= ~((1 << 1) | (1 << 2))  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
    if libc.capset(ctypes.byref(header), data) != 0:
        pytest.skip("cannot drop the capabilities that read through file modes")
    try:
        yield
    finally:
        data[0].effective = saved
        libc.capset(ctypes.byref(header), data)


def _finished(study) -> int:
    return sum(json.loads(p.read_text())["status"] == "ok"
               for p in (study / "trials").glob("*.json"))


def _run(capsys, permissions: bool, *argv) -> tuple[int, str, str]:
    with file_modes_apply() if permissions else nullcontext():
        code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in err, err
    return code, out, err


def _lines(err: str, kind: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith(f"{kind}:")]


@pytest.fixture
def damaged(request, tmp_path):
    """(damage, study, text its message must name, finished trials expected after it)."""
    damage = DAMAGES[request.param]
    study = make_valid(tmp_path)
    text = damage.expected_text(study)
    expected = 0 if damage.lost is None else _finished(study) - damage.lost
    damage(study)
    yield damage, study, text, expected
    for p in [study, *study.rglob("*")] if study.is_dir() and not study.is_symlink() else []:
        if not p.is_symlink():
            p.chmod(0o755)  # let pytest remove it


def test_the_catalogue_is_large_and_every_kind_is_described():
    assert len(DAMAGES) >= 30
    assert all(d.doc and d.exit in (EXIT_OK, EXIT_BAD_INPUT) for d in DAMAGES.values())
    assert {d.exit for d in DAMAGES.values()} == {EXIT_OK, EXIT_BAD_INPUT}


@pytest.mark.parametrize("damaged", list(DAMAGES), indirect=True)
def test_status_skips_or_refuses_each_damage_without_a_traceback(damaged, capsys):
    damage, study, text, expected = damaged
    code, out, err = _run(capsys, damage.permissions, "status", study, "--json")
    assert code == damage.exit, err
    if damage.exit == EXIT_BAD_INPUT:
        assert out == "" and len(_lines(err, "error")) == 1 and text in _lines(err, "error")[0]
    else:
        doc = json.loads(out)  # still exactly one JSON document on stdout
        assert doc["finished"] == expected  # every undamaged trial is counted
        warned = _lines(err, "warning")
        assert doc["warnings"] == [w.removeprefix("warning: ") for w in warned]
        if damage.names is None or damage.history:  # status reads no history
            assert warned == []
        else:
            assert text in warned[0]
    code, out, err = _run(capsys, damage.permissions, "status", study)
    assert code == damage.exit
    if code == EXIT_OK:
        assert f"{expected} of " in out


@pytest.mark.parametrize("damaged", REPORTED, indirect=True)
def test_report_skips_or_refuses_damage_without_a_traceback(damaged, capsys, tmp_path):
    damage, study, text, _ = damaged
    out = tmp_path / "out"
    code, stdout, err = _run(capsys, damage.permissions, "report", study, "-o", out)
    assert code == damage.exit, err
    if code == EXIT_OK:
        assert (out / "report.html").is_file() and (out / "trials.csv").is_file()
        if damage.names:
            assert text in _lines(err, "warning")[0]
    else:
        assert text in _lines(err, "error")[0] and not out.exists()


def test_report_of_a_study_damaged_in_several_ways_names_each_damage(tmp_path, capsys):
    study = make_valid(tmp_path)
    finished = _finished(study)
    texts = []
    for name in TOGETHER:
        texts.append(DAMAGES[name].expected_text(study))
        DAMAGES[name](study)
    code, _, err = _run(capsys, False, "report", study, "-o", tmp_path / "out")
    assert code == EXIT_OK
    warned = _lines(err, "warning")
    assert len(warned) == len(TOGETHER)
    for text in texts:
        assert any(text in w for w in warned), (text, warned)
    csv = (tmp_path / "out" / "trials.csv").read_text().splitlines()
    assert sum(",ok," in line for line in csv) == finished - 2  # two trial files skipped


def test_a_study_without_trials_reports_that_it_has_none(tmp_path, capsys):
    study = make_study(tmp_path, "new", ok=0, failed=0, running=0)
    (study / "history.jsonl").unlink()
    code, out, _ = _run(capsys, False, "status", study)
    assert code == EXIT_OK and "0 of 2 trials finished" in out and "no trial files yet" in out
    code, _, _ = _run(capsys, False, "report", study, "-o", tmp_path / "out")
    assert code == EXIT_OK
    assert "No finished trials yet" in (tmp_path / "out" / "report.md").read_text()


def test_report_to_a_file_or_below_one_is_refused(tmp_path, capsys):
    study = make_valid(tmp_path)
    file = tmp_path / "report.html"
    file.write_text("keep me")
    for target, says in ((file, "is a file, not a folder"),
                         (file / "sub", "cannot create the report folder")):
        code, _, err = _run(capsys, False, "report", study, "-o", target)
        assert code == EXIT_BAD_INPUT and says in err and "-o names the folder" in err
    assert file.read_text() == "keep me"


HOSTILE = {"magnitude": "../../etc/passwd", "branch": "a/b\x00c<img src=x onerror=alert(1)>"}


def test_report_file_names_from_the_data_stay_inside_the_output_folder(tmp_path):
    root = tmp_path / "inside"
    study = make_study(root, "hostile", methods=tuple(HOSTILE), ok=6, failed=0, running=0)
    (study / "history.jsonl").unlink()  # no training curves: fewer figures to draw
    for file in (study / "trials").glob("*.json"):
        doc = json.loads(file.read_text())
        method = HOSTILE[doc["params"]["pipeline"]]
        doc["params"]["pipeline"] = doc["row"]["method"] = method
        file.write_text(json.dumps(doc))
    out = root / "a" / "b" / "out"
    out.mkdir(parents=True)
    victim = tmp_path / "victim.txt"
    victim.write_text("untouched")
    (out / "report.html").symlink_to(victim)  # replaced, never written through
    before = {p for p in tmp_path.rglob("*") if not p.is_relative_to(out)}
    report.write_report([study], out)
    assert {p for p in tmp_path.rglob("*") if not p.is_relative_to(out)} == before
    assert victim.read_text() == "untouched" and not (out / "report.html").is_symlink()
    names = sorted(p.name for p in out.iterdir())
    assert all(re.fullmatch(r"[A-Za-z0-9_-]+\.png|report\.(html|md)|trials\.csv", n)
               for n in names), names
    params = [n for n in names if n.startswith("params-")]
    assert len(params) == len(HOSTILE)  # one figure per method, none lost to a clash
    md = (out / "report.md").read_text()
    assert sorted(re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)) == [n for n in names
                                                                if n.endswith(".png")]
    page = (out / "report.html").read_text()
    assert "<img src=x" not in page and "<img src=x" not in md


def test_file_stems_are_plain_distinct_and_short():
    stems = report.file_stems(["params-../../x", "params-..-..-x", "a\x00b", "", "PARAMS-X",
                               "params-x", "k" * 300])
    assert stems[:6] == ["params-x", "params-x-2", "a-b", "figure", "PARAMS-X-3", "params-x-4"]
    assert len(stems[6]) == 80 and len(set(stems)) == len(stems)


def test_the_reader_warns_once_per_damaged_file_and_reads_the_rest(tmp_path):
    study = make_valid(tmp_path)
    (study / "trials" / "005ab0f_00000.json").write_text("{")
    with pytest.warns(results.StudyDirWarning, match=r"005ab0f_00000\.json skipped") as seen:
        df = results.load(study)
    assert len(df) == 5 and len(seen) == 1


def test_the_reliability_run_records_exit_traceback_and_first_message(tmp_path, monkeypatch):
    from benchmarks import reliability_dirs

    def in_process(cmd, **kw):  # a fresh interpreter per command would take seconds each
        assert cmd[1:3] == ["-m", "studies.cli"] and kw["env"]["PYTHONPATH"]
        out, err = io.StringIO(), io.StringIO()
        with redirect_stdout(out), redirect_stderr(err):
            code = main(cmd[3:])
        return subprocess.CompletedProcess(cmd, code, out.getvalue(), err.getvalue())

    monkeypatch.setattr(reliability_dirs.subprocess, "run", in_process)
    good, bad = reliability_dirs.run_all(tmp_path, ["trial-truncated", "study-json-null"])
    assert [good[c]["exit"] for c in reliability_dirs.COMMANDS] == [0, 0, 0]
    assert good["status"]["message"].startswith("warning: <study>/trials/")
    assert good["finished"] == good["expected_finished"] == 3 and good["ok"]
    assert [bad[c]["exit"] for c in reliability_dirs.COMMANDS] == [2, 2, 2] and bad["ok"]
    assert bad["report"]["message"].startswith("error: <study>/study.json: it holds a JSON null")
    table = reliability_dirs.markdown([good, bad]).splitlines()
    assert len(table) == 4 and all(row.endswith("| yes |") for row in table[2:])


def test_resume_reports_a_skipped_file_as_one_warning_line(tmp_path, capsys):
    d = make_study(tmp_path, running=0, pending=0)
    (d / "spec.yaml").write_text(yaml.safe_dump({
        "name": d.name, "data": "digits", "model": {"name": "vgg11", "width": 0.25},
        "methods": "magnitude", "objectives": {"accuracy": "max", "macs": "min"},
        "trials": 13, "storage": str(tmp_path)}))
    damaged = sorted((d / "trials").iterdir())[0]
    damaged.write_text("{not json")
    main(["resume", str(d)])  # refused further on: this study has no Tune state
    err = capsys.readouterr().err.splitlines()
    warned = [line for line in err if damaged.name in line]
    assert len(warned) == 1 and warned[0].startswith(f"warning: {damaged}")
    assert not any("StudyDirWarning" in line or "warnings.warn" in line for line in err)
