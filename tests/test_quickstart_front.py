"""tools/quickstart_front.py: the README's quickstart paragraph and figure come from the
study's own files."""

from __future__ import annotations

import json

from analysis.results import load
from tests.study_factory import make_study
from tools import quickstart_front


def test_the_paragraph_states_the_studys_own_front(tmp_path):
    study = make_study(tmp_path, "quickstart", methods=("slimming",), ok=12, failed=1,
                       running=0, objectives={"accuracy": "max", "macs": "min"})
    (study / "report").mkdir()
    (study / "report" / "pareto-front.png").write_bytes(b"\x89PNG front")
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- quickstart-front -->\nold words 97.2 %\n"
                      "<!-- /quickstart-front -->\n![front](docs/images/q.png)\n")
    figure = tmp_path / "docs" / "images" / "q.png"
    assert quickstart_front.main([str(study), "--readme", str(readme),
                                  "--figure", str(figure)]) == 0
    assert figure.read_bytes() == b"\x89PNG front"
    data = json.loads((figure.parent / "quickstart-front.json").read_text())
    assert data["command"] == f"python -m tools.quickstart_front {study}"
    assert data == {**quickstart_front.front_points(study), "command": data["command"]}
    text = readme.read_text()
    assert text.startswith("intro\n<!-- quickstart-front -->\nThe front")
    assert "old words" not in text
    assert text.endswith("<!-- /quickstart-front -->\n![front](docs/images/q.png)\n")
    assert max(len(line) for line in text.splitlines()) <= 88
    text = " ".join(text.split())  # the paragraph is wrapped; its words are what count
    # the numbers, recomputed here from the study's files
    df = load(study)
    base = json.loads((study / "base.json").read_text())
    front = df[(df["status"] == "ok") & df["on_front"]]
    assert f"{len(df)} trials, {int((df['status'] == 'ok').sum())} ok, {len(front)} on" in text
    assert f"{base['accuracy']:.1%}".replace("%", " %") in text
    assert quickstart_front.front_points(study)["points"]  # at least one is stated
    assert "([numbers](docs/images/quickstart-front.json))" in text
    for drop in quickstart_front.WITHIN:
        close = front[front["accuracy"] >= base["accuracy"] - drop]
        if len(close):
            best = close.sort_values(["macs", "accuracy"], ascending=[True, False]).iloc[0]
            said = f"{best['accuracy']:.1%}".replace("%", " %") + \
                f" accuracy at {base['macs'] / best['macs']:.1f}x fewer MACs"
            assert said in text, (said, text)


def test_a_missing_report_is_named(tmp_path, capsys):
    study = make_study(tmp_path, "quickstart", methods=("slimming",), running=0)
    assert quickstart_front.main([str(study), "--readme", str(tmp_path / "R.md")]) == 2
    assert (f"{study / 'report' / 'pareto-front.png'} is missing; write its report first: "
            f"prune-study report {study}") in capsys.readouterr().err
