"""The data behind every figure, and that each figure draws; figures without data are skipped."""

from __future__ import annotations

import json

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
