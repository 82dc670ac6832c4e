"""The data behind every figure, and that each figure draws; figures without data are skipped."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from matplotlib.figure import Figure

from analysis import figures, pareto, results
from tests.study_factory import METHODS, make_study


@pytest.fixture(scope="module")
def studies(tmp_path_factory):
    root = tmp_path_factory.mktemp("fig")
    a = make_study(root, "all", methods=METHODS, ok=30, failed=2, running=2, pending=1, seed=5)
    b = make_study(root, "slim", methods=("slimming",), ok=10, sampler="nsga2", seed=6)
    return results.open_studies([a, b])


def test_units():
    assert figures.human_count(579_098) == "579 k"
    assert figures.human_count(9_880_832) == "9.88 M"
    assert figures.human_count(100_000, 2) == "100 k"  # never 1e+02 k
    assert figures.human_count(1.82e9) == "1.82 G"
    assert figures.human_bytes(2_321_960) == "2.21 MiB"
    assert figures.human_bytes(90_000) == "87.9 KiB"
    pct = figures.Percent()
    pct.set_locs([0.965, 0.970, 0.975])
    assert [pct(x) for x in pct.locs] == ["96.5%", "97.0%", "97.5%"]
    pct.set_locs([0.6, 0.8, 1.0])
    assert pct(0.8) == "80%"


def test_pareto_data_front_is_the_2d_non_dominated_set(studies):
    data = figures.pareto_data(studies, "macs", "accuracy")
    ok = {(s.label, t) for s in studies for t in s.trials.loc[s.trials["status"] == "ok",
                                                                "trial_id"]}
    assert set(zip(data.points["study"], data.points["trial_id"], strict=True)) == ok
    for study, pts in data.points.groupby("study"):
        front = data.fronts[data.fronts["study"] == study]
        xy = pts[["x", "y"]].to_numpy()
        mask = pareto.nondominated(xy, [False, True])
        assert sorted(map(tuple, front[["x", "y"]].to_numpy())) == sorted(map(tuple, xy[mask]))
        # A step line: cost rises, accuracy rises along it.
        assert (np.diff(front["x"]) >= 0).all() and (np.diff(front["y"]) >= 0).all()
    base = data.base.set_index("study")
    info = studies[0].info
    assert base.loc["all", "x"] == info.base["macs"] and base.loc["all", "y"] == 0.983


def test_front_panels_add_every_cost_objective(tmp_path):
    path = make_study(tmp_path, "q", methods=("slimming+quantize",), ok=4, failed=0, running=0,
                      objectives={"accuracy": "max", "size_bytes": "min"})
    panels = figures.front_panels(results.open_studies([path]))
    assert [p.x for p in panels] == ["macs", "params", "size_bytes"]


def test_four_front_panels_are_drawn_two_by_two(tmp_path):
    path = make_study(tmp_path, "q", methods=("slimming+quantize",), ok=4, failed=0, running=0,
                      objectives={"accuracy": "max", "nonzero_macs": "min", "size_bytes": "min"})
    panels = figures.front_panels(results.open_studies([path]))
    fig = figures.draw_pareto(panels)
    assert len(fig.axes) == len(panels) == 4
    rows = {round(ax.get_position().y0, 2) for ax in fig.axes}
    cols = {round(ax.get_position().x0, 2) for ax in fig.axes}
    assert len(rows) == len(cols) == 2


def test_hypervolume_curve_per_study_ends_at_the_summary_value(studies):
    data = figures.hypervolume_data(studies)
    for s in studies:
        c = data.curves[data.curves["study"] == s.label]
        assert c["trial"].tolist() == list(range(1, len(s.trials) + 1))
        assert (np.diff(c["hypervolume"]) >= 0).all()
        assert c["hypervolume"].iloc[-1] == pytest.approx(
            results.summary(s.info.path)["hypervolume"])
    assert set(data.curves["sampler"]) == {"tpe (seed 5)", "nsga2 (seed 6)"}


def test_param_data_per_method(studies):
    by_method = {p.method: p for p in figures.param_data(studies)}
    assert set(by_method) == set(METHODS)
    slim = by_method["slimming"]
    assert all(p.startswith("slimming.") for p in slim.params)
    assert slim.kinds["slimming.lambda"] == "log" and slim.kinds["slimming.prune_ratio"] == \
        "linear"
    assert set(slim.points["study"]) == {"all", "slim"}
    branch = by_method["branch"]
    assert branch.kinds["branch.alpha_schedule"] == "categorical"
    order = ["step", "linear", "cosine", "exponential"]  # the spec's order of choices
    assert branch.categories["branch.alpha_schedule"] == [
        c for c in order if c in set(branch.points["branch.alpha_schedule"])]
    # Unstructured pruning leaves MACs and params unchanged: those rows are left out.
    assert by_method["magnitude"].objectives == ["accuracy"]


def _renamed(path, old: str, new: str) -> None:
    """A study directory whose ``old`` stage is called ``new`` (a chain's own stage name)."""
    def swap(d: dict) -> dict:
        return {(new + k[len(old):] if k.startswith(old + ".") else k):
                (new if k == "stage" and v == old else v) for k, v in d.items()}
    for f in (path / "trials").glob("*.json"):
        doc = json.loads(f.read_text())
        doc["params"], doc["row"] = swap(doc["params"]), swap(doc["row"] or {})
        doc["last"] = swap(doc["last"]) if doc.get("last") else doc.get("last")
        f.write_text(json.dumps(doc))
    lines = [swap(json.loads(x)) for x in (path / "history.jsonl").read_text().splitlines()]
    (path / "history.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    study = json.loads((path / "study.json").read_text())
    study["space"] = swap(study["space"])
    (path / "study.json").write_text(json.dumps(study))


def test_a_slimming_stage_of_another_name_gets_its_sparsity_and_gamma_figures(tmp_path):
    path = make_study(tmp_path, "renamed", methods=("slimming",), ok=8, running=0)
    _renamed(path, "slimming", "slim")
    [s] = results.open_studies([path])
    assert "slim.lambda" in s.trials and "slimming.lambda" not in s.trials
    sp = figures.sparsity_data([s])
    assert sp is not None and set(sp.curves["lambda"]) <= set(s.trials["slim.lambda"])
    gam = figures.gamma_data([s])
    assert gam is not None and set(gam.trials["lambda"]) <= set(s.trials["slim.lambda"])


def test_channel_data_covers_the_front(studies):
    data = figures.channel_data(studies)
    assert data.layers == list(studies[0].info.base["channels"])
    for s in studies:
        front = s.trials[s.trials["on_front"]]
        kept = data.kept[data.kept["study"] == s.label]
        assert set(kept["trial_id"]) == set(front["trial_id"])
        t = front.iloc[0]
        shares = kept[kept["trial_id"] == t["trial_id"]].set_index("layer")["share"]
        assert shares.to_dict() == pytest.approx(t["channels"])


def test_training_curve_data(studies):
    sp = figures.sparsity_data(studies)
    per_trial = sp.curves.groupby(["study", "trial_id"])["lambda"].first()
    assert 2 <= len(per_trial) <= figures.MAX_CURVES
    slim = [s.trials.loc[s.trials["slimming.lambda"].notna() & s.trials["trial_id"].isin(
        s.history.loc[s.history["phase"] == "sparsity", "trial_id"]), "slimming.lambda"]
        for s in studies]
    lams = np.concatenate([x.to_numpy() for x in slim])
    assert per_trial.min() == lams.min() and per_trial.max() == lams.max()  # spread over λ
    assert sp.curves["sparsity"].between(0, 1).all()

    gam = figures.gamma_data(studies)
    assert len(gam.trials) == 4 and gam.trials["lambda"].is_monotonic_increasing
    ok = results.load(studies[1].info.path)
    for t in gam.trials.itertuples():
        n = (gam.gammas["trial_id"] == t.trial_id).sum()
        src = studies[0].trials if t.study == "all" else ok
        assert n == len(src.loc[src["trial_id"] == t.trial_id, "slimming.gammas"].item())

    al = figures.alpha_data(studies)
    assert al.hue == "branch.alpha_schedule"
    assert (al.curves.groupby("trial_id")["alpha"].apply(lambda a: a.is_monotonic_decreasing)
            ).all()

    rp = figures.repr_data(studies)
    ok_repr = studies[0].trials.query("status == 'ok' and method == 'repr'")
    assert set(rp.pairs["trial_id"]) == set(ok_repr["trial_id"])
    assert rp.trial == ok_repr.loc[ok_repr["accuracy"].idxmax(), "trial_id"]
    assert set(rp.curves["run"]) == {"RePr", "plain"}


def test_figures_without_data_are_skipped(tmp_path):
    mag = results.open_studies([make_study(tmp_path, "m", methods=("magnitude",), ok=5)])
    keys = [d.key for d in figures.figures(mag)]
    # No channel removed, no sparsity training, no alpha, no RePr: only these remain.
    assert keys == ["pareto-front", "hypervolume", "params-magnitude"]
    waiting = results.open_studies([make_study(tmp_path, "w", ok=0, running=0, failed=0,
                                               pending=2)])
    assert figures.figures(waiting) == []
    # Training curves show trials still running: a study can be watched as it goes.
    live = results.open_studies([make_study(tmp_path, "e", ok=0, failed=0, running=1)])
    assert [d.key for d in figures.figures(live)] == ["slimming-sparsity"]


def test_every_figure_draws_with_labelled_axes(studies):
    drawn = figures.figures(studies)
    assert {d.key for d in drawn} == {
        "pareto-front", "hypervolume", "channels", "slimming-sparsity", "slimming-gammas",
        "branch-alpha", "repr", *(f"params-{m.replace('+', '-')}" for m in METHODS)}
    for d in drawn:
        assert isinstance(d.figure, Figure) and d.title and d.caption
        for ax in d.figure.axes:
            if ax.get_label() == "<colorbar>":
                continue
            # Panels sharing an axis may label it once (the bottom or left one).
            assert any(a.get_xlabel() for a in ax.get_shared_x_axes().get_siblings(ax)), d.key
            assert any(a.get_ylabel() for a in ax.get_shared_y_axes().get_siblings(ax)), d.key
    front = next(d for d in drawn if d.key == "pareto-front").figure
    assert [ax.get_xscale() for ax in front.axes] == ["log", "log"]
    legend = [t.get_text() for t in front.legends[0].get_texts()]
    assert set(METHODS) <= set(legend) and "base model" in legend
    json.dumps([d.key for d in drawn])


def test_infeasible_trials_are_drawn_apart_and_never_on_the_drawn_front(tmp_path):
    import json

    from analysis import figures, results
    from tests.study_factory import make_study

    path = make_study(tmp_path, "c", ok=14, failed=0, running=0,
                      objectives={"accuracy": "max", "macs": "min"})
    doc = json.loads((path / "study.json").read_text())
    cut = float(results.load(path).query("status == 'ok'")["macs"].median())
    doc["constraints"] = {"macs": {"min": cut}}
    (path / "study.json").write_text(json.dumps(doc))
    data = figures.pareto_data(results.open_studies([path]), "macs", "accuracy")
    bad = data.points[~data.points["feasible"]]
    assert len(bad) and (bad["x"] < cut).all()
    assert (data.fronts["x"] >= cut).all()  # the drawn front holds feasible trials only
    fig = figures.draw_pareto([data])
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert "breaks a constraint" in labels



def test_figures_module_exports_every_figure_by_name():
    assert [n for n in figures.__all__ if not hasattr(figures, n)] == []
    assert {"pareto_data", "draw_pareto", "hypervolume_data", "channel_data", "gamma_data",
            "repr_data", "figures", "Drawn", "human_count", "human_bytes", "Percent",
            "to_png", "MAX_CURVES"} <= set(figures.__all__)


def _time_trials(path, batches=(1, 16), base=True):
    """Add the latency columns measure_latency writes to every finished trial (and the base):
    median and IQR per batch size, latency_ms/latency_iqr_ms for the first; returns the
    median per (trial_id, batch)."""
    import json

    def timed(macs: float) -> dict:
        row = {}
        for b in batches:
            # Time falls slower than MACs: a fixed cost per batch the pruning never removes.
            row[f"latency_ms_b{b}"] = 0.2 * b + macs * b * 1e-7
            row[f"latency_iqr_ms_b{b}"] = 0.01 * b
        row["latency_ms"] = row[f"latency_ms_b{batches[0]}"]
        row["latency_iqr_ms"] = row[f"latency_iqr_ms_b{batches[0]}"]
        return row

    medians = {}
    for file in (path / "trials").glob("*.json"):
        doc = json.loads(file.read_text())
        if doc["status"] == "ok":
            doc["row"].update(timed(doc["row"]["macs"]))
            medians.update({(doc["trial_id"], b): doc["row"][f"latency_ms_b{b}"]
                            for b in batches})
            file.write_text(json.dumps(doc))
    if base:
        brow = json.loads((path / "base.json").read_text())
        (path / "base.json").write_text(json.dumps({**brow, **timed(brow["macs"])}))
    return medians


def test_latency_data_per_trial_and_batch_size(tmp_path):
    path = make_study(tmp_path, "lat", methods=("slimming", "magnitude"), ok=8, failed=1,
                      running=1)
    medians = _time_trials(path)
    studies = results.open_studies([path])
    data = figures.latency_data(studies)
    df = results.load(path)
    ok = df[df["status"] == "ok"].set_index("trial_id")
    assert sorted(set(data.points["batch"])) == [1, 16]
    assert len(data.points) == 2 * len(ok)  # one point per finished trial and batch size
    for p in data.points.itertuples():
        assert p.latency_ms == pytest.approx(medians[(p.trial_id, p.batch)])
        assert p.iqr_ms == pytest.approx(0.01 * p.batch)
        assert p.macs == ok.loc[p.trial_id, "macs"]
        assert p.on_front == ok.loc[p.trial_id, "on_front"] and p.study == "lat"
    base = data.base.set_index("batch")
    macs = studies[0].info.base["macs"]
    assert base.loc[16, "macs"] == macs
    assert base.loc[16, "latency_ms"] == pytest.approx(0.2 * 16 + macs * 16e-7)
    fig = figures.draw_latency(data)
    assert [ax.get_title() for ax in fig.axes] == ["batch 1", "batch 16"]
    assert all(ax.get_xscale() == ax.get_yscale() == "log" for ax in fig.axes)
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert "base model" in labels and "time ∝ MACs, through the base" in labels


def test_latency_figure_only_where_trials_were_timed(tmp_path, studies):
    assert figures.latency_data(studies) is None  # so figures() leaves the figure out
    # An older row with latency_ms alone was timed at batch 1; an untimed base draws no line.
    path = make_study(tmp_path, "old", methods=("magnitude",), ok=4, failed=0, running=0)
    _time_trials(path, batches=(1,), base=False)
    for file in (path / "trials").glob("*.json"):
        doc = json.loads(file.read_text())
        doc["row"] = {k: v for k, v in doc["row"].items() if not re.search(r"_b\d+$", k)}
        file.write_text(json.dumps(doc))
    data = figures.latency_data(results.open_studies([path]))
    assert set(data.points["batch"]) == {1} and len(data.points) == 4 and not len(data.base)
    keys = [d.key for d in figures.figures(results.open_studies([path]))]
    assert keys == ["pareto-front", "hypervolume", "latency", "params-magnitude"]
