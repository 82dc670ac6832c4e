"""The terminal while a study runs: the progress views and lines, the live display under a
pseudo-terminal, ``run --set`` through a resume, ``status --watch``, ``--version``."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from studies.progress import Progress, base_view, duration, line, study_view
from tests.study_factory import make_study

ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "studies.cli"]
ETA = re.compile(r"ETA (\d+s|\d+m\d\ds|\d+h\d\dm)\b")
STAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d ")


def _rec(number, status, started=None, ended=None, **last):
    return {"trial_id": f"t{number}", "number": number, "status": status,
            "started": started, "ended": ended, "last": last}


# --------------------------------------------------------------------------- views


def test_study_view_counts_and_eta_spread_over_the_slots():
    records = [_rec(0, "ok", 0, 10), _rec(1, "failed", 0, 20),
               _rec(2, "running", 95, None, stage="slimming", phase="sparsity", epoch=2,
                    epochs=5, val_accuracy=0.5),
               _rec(3, "stopped", 0, 5) | {"lost": True}, _rec(4, "pending")]
    v = study_view(records, name="s", requested=6, slots=2, now=100.0)
    assert v["counts"] == {"ok": 1, "failed": 1, "timeout": 0, "stopped": 0, "running": 1,
                           "pending": 1}
    assert v["ended"] == 2  # the lost trial was replaced: it does not count
    assert v["mean_trial_s"] == 15.0
    # running #2 needs 15 - 5 s more; 3 trials (6 - 2 ended - 1 running) need 15 s each
    assert v["eta_s"] == pytest.approx((10 + 3 * 15) / 2)
    assert v["running"] == [{"number": 2, "trial_id": "t2", "stage": "slimming",
                             "phase": "sparsity", "epoch": 2, "epochs": 5,
                             "val_accuracy": 0.5, "seconds": 5.0}]
    # no free slot known: the trials running now are the slots
    assert study_view(records, name="s", requested=6, now=100.0)["eta_s"] == \
        pytest.approx(10 + 3 * 15)


def test_eta_is_unknown_before_a_trial_ends_and_zero_once_complete():
    assert study_view([_rec(0, "running", 0)], name="s", requested=3, now=5)["eta_s"] is None
    done = [_rec(0, "ok", 0, 10), _rec(1, "ok", 0, 12)]
    assert study_view(done, name="s", requested=2, now=50)["eta_s"] == 0.0


def test_plain_line_names_running_trials_and_an_eta_without_control_characters():
    records = [_rec(0, "ok", 0, 70), _rec(1, "running", 60, None, stage="repr", phase="s2",
                                          epoch=1, epochs=3)]
    text = line(study_view(records, name="q", requested=4, now=100,
                           front={"front_size": 1, "hypervolume": 0.25}))
    assert "[q] 1/4 ended (1 ok), 1 running: #1 repr/s2 epoch 1/3" in text
    assert "front 1, hypervolume 0.25" in text
    # #1 needs 70 - 40 s more, two trials not started 70 s each, on the one running slot
    assert ETA.search(text).group(1) == "2m50s"
    assert not re.search(r"[\x00-\x1f\x7f]", text)


def test_durations_read_as_people_read_them():
    assert [duration(s) for s in (0, 42.4, 250, 7500, None)] == ["0s", "42s", "4m10s",
                                                                  "2h05m", "?"]


def test_base_view_eta_from_seconds_per_epoch_over_every_phase():
    rows = [{"epoch": e, "phase": "source", "epochs": 3, "total_epochs": 5,
             "epoch_seconds": 2.0, "train_loss": 1.0 / e, "val_accuracy": 0.5}
            for e in (1, 2)]
    v = base_view(rows, model="vgg11", epochs=3)
    assert (v["done"], v["epochs"], v["eta_s"]) == (2, 5, 6.0)
    text = line(v)
    assert text.startswith("base vgg11: epoch 2/5 (source 2/3), loss 0.5")
    assert "2.0 s/epoch" in text and ETA.search(text).group(1) == "6s"


def test_lines_come_at_most_every_n_seconds(tmp_path):
    now = [0.0]
    out = open(tmp_path / "log", "w")  # noqa: SIM115 (read back below)
    display = Progress("lines", every=10, stream=out, clock=lambda: now[0])
    with display:
        display.study_started(name="s", requested=5, slots=1, study_dir=tmp_path / "none")
        for t in range(0, 35, 2):
            now[0] = float(t)
            display.trials({"a": _rec(0, "running", 0, None, stage="x", epoch=t)})
    out.close()
    lines = (tmp_path / "log").read_text().splitlines()
    # events at 0, 2, ..., 34: lines at 0, 10, 20, 30, and the closing one
    assert len(lines) == 5 and all(STAMP.match(x) for x in lines)
    assert [re.search(r"epoch (\d+)", x).group(1) for x in lines[:4]] == ["0", "10", "20", "30"]


def test_quiet_shows_neither_lines_nor_trial_lines(tmp_path, capsys):
    display = Progress("quiet", every=0.0)
    with display:
        display.study_started(name="s", requested=1, slots=1, study_dir=tmp_path)
        display.trials({"a": _rec(0, "running", 0)})
        display.trial_line("[s] trial 0 ok")
        display.log("kept: a warning")
    err = capsys.readouterr().err
    assert err == "kept: a warning\n"


# --------------------------------------------------------------------------- commands


def test_version_text_and_json():
    from importlib import metadata

    out = subprocess.run([*CLI, "--version"], capture_output=True, text=True, check=True)
    assert out.stdout == f"prune-study {metadata.version('prune-study')}\n"
    out = subprocess.run([*CLI, "-V", "--json"], capture_output=True, text=True, check=True)
    doc = json.loads(out.stdout)
    assert doc["python"] == ".".join(map(str, sys.version_info[:3]))
    for name in ("torch", "ray", "optuna", "torch_pruning", "torchao"):
        assert doc[name] == metadata.version(name.replace("_", "-"))
    out = subprocess.run(CLI, capture_output=True, text=True)
    assert out.returncode == 2 and "COMMAND" in out.stderr


def test_run_set_names_fields_and_parameters(tmp_path):
    from studies.spec import SpecError, apply_settings, load_spec

    raw = yaml.safe_load((ROOT / "studies/specs/quickstart.yaml").read_text())
    got = apply_settings(raw, ["slimming.prune_ratio=0.5", "baseline.epochs=3",
                               "sampler.name=nsga2", "data.image_size=16", "trials=4",
                               "model.width=0.125"])
    assert got["space"]["slimming.prune_ratio"] == 0.5
    assert got["baseline"] == {"epochs": 3, "lr": 0.05}
    assert got["sampler"] == {"name": "nsga2", "seed": 0}
    assert got["data"] == {"name": "digits", "image_size": 16}  # a bare name became a mapping
    assert raw["data"] == "digits" and raw["trials"] == 12  # the spec itself is untouched
    for bad, says in ((["nope=1"], "neither a spec field"),
                      (["baseline.epochs.x=1"], "baseline.epochs is int 15"),
                      (["x"], "expected FIELD=VALUE")):
        with pytest.raises(SpecError, match=re.escape(says)):
            apply_settings(raw, bad)
    path = tmp_path / "q.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(SpecError, match=r"space\.slimming\.nope: method 'slimming' has no"):
        load_spec(path, rehearse=False, settings=["slimming.nope=1"])
    with pytest.raises(SpecError, match=r"trials: 0 is not valid"):
        load_spec(path, rehearse=False, settings=["trials=0"])


def test_status_watch_redraws_until_the_study_is_complete(tmp_path):
    study = make_study(tmp_path, ok=3, failed=0, running=1)
    info = json.loads((study / "study.json").read_text())
    info["trials"] = 4
    (study / "study.json").write_text(json.dumps(info))
    proc = subprocess.Popen([*CLI, "status", str(study), "--watch", "0.2"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = proc.stdout.readline()
        assert STAMP.match(first) and "3 of 4 trials finished, 1 running" in first
        running = next(x for x in iter(proc.stdout.readline, "") if "running:" in x)
        assert re.search(r"#3 \w+/\w+ epoch \d+", running) and ETA.search(running)
        # the running trial ends: the watch draws the complete study and exits by itself
        for f in (study / "trials").glob("*.json"):
            rec = json.loads(f.read_text())
            if rec["status"] == "running":
                rec.update(status="failed", ended=rec["started"] + 30, error="x")
                f.write_text(json.dumps(rec))
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "3 of 4 trials finished, 0 running, 1 failed" in out and "ETA 0s" in out
    assert "\x1b" not in out


# --------------------------------------------------------------------------- a real study


def _pane(session: str) -> str:
    return subprocess.run(["tmux", "capture-pane", "-p", "-t", session], capture_output=True,
                          text=True).stdout


def test_live_display_then_resume_with_lines_keep_the_set_values(tmp_path):
    """One study on a local Ray: run under a pseudo-terminal (tmux) shows the running
    trials' stage and epoch live; Ctrl-C; resume into a pipe prints timestamped lines;
    every trial ran with the --set value, which the study's spec copy keeps."""
    if shutil.which("tmux") is None:
        pytest.fail("tmux is needed (Debian package tmux; .ci/run installs it)")
    storage = tmp_path / "runs"
    sets = ["slimming.prune_ratio=0.5", "baseline.epochs=2", "data.image_size=16",
            "model.width=0.125", "slimming.sparsity_epochs=3", "slimming.finetune_epochs=3",
            "trials=2", "max_concurrent=1"]
    cmd = [str(ROOT / ".venv/bin/prune-study") if (ROOT / ".venv/bin/prune-study").exists()
           else "prune-study", "run", str(ROOT / "studies/specs/quickstart.yaml"),
           "--storage", str(storage), *[a for s in sets for a in ("--set", s)]]
    session = f"ps{os.getpid()}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    env["TERM"] = "xterm-256color"
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "160", "-y", "50",
                    "-e", f"PATH={os.path.dirname(sys.executable)}:{env['PATH']}",
                    " ".join(cmd) + f"; echo exit=$? > {tmp_path / 'rc'}; sleep 600"],
                   check=True, cwd=ROOT, env=env)
    row = re.compile(r"#\d+\s+slimming\s+(sparsity|finetune)\s+\d/3\s+\d+(s|m\d\ds)")
    seen, pane = None, ""
    try:
        deadline = time.time() + 300
        while time.time() < deadline and not (tmp_path / "rc").exists():
            pane = _pane(session)
            if seen is None and row.search(pane):
                seen = pane
            if seen is not None and "trial 0 ok" in pane:
                break
            time.sleep(0.5)
        assert seen is not None, pane
        assert "\x1b" not in seen  # capture-pane gives the screen's text
        assert re.search(r"quickstart\s.*\d/2 ended .*ETA", seen), seen
        subprocess.run(["tmux", "send-keys", "-t", session, "C-c"], check=True)
        deadline = time.time() + 120
        while time.time() < deadline and not (tmp_path / "rc").exists():
            time.sleep(0.5)
        rc = (tmp_path / "rc").read_text().strip()
        assert rc in ("exit=130", "exit=0"), _pane(session)
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)
    study = storage / "quickstart"
    spec = yaml.safe_load((study / "spec.yaml").read_text())
    assert spec["space"]["slimming.prune_ratio"] == 0.5 and spec["trials"] == 2
    resumed = subprocess.run([cmd[0], "resume", str(study), "--progress-every", "0.5",
                              "--json"], capture_output=True, text=True, cwd=ROOT, timeout=400)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["complete"]  # progress never reaches stdout
    err = resumed.stderr
    assert "\x1b" not in err and "\r" not in err
    progress = [x for x in err.splitlines() if STAMP.match(x) and "[quickstart]" in x]
    assert progress, err
    assert any(re.search(r"running: #\d+ slimming/(sparsity|finetune) epoch \d/3", x)
               for x in progress), err
    assert ETA.search(progress[-1]) and "2/2 ended" in progress[-1]
    records = [json.loads(f.read_text()) for f in (study / "trials").glob("*.json")]
    ended = [r for r in records if r["status"] == "ok"]
    assert len(ended) == 2
    assert all(r["params"]["slimming.prune_ratio"] == 0.5 for r in records)
    assert all(r["row"]["slimming.prune_ratio"] == 0.5 for r in ended)
