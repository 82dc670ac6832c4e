"""The spec's search space as Optuna sees it: ranges, conditional chains, seeded samplers."""

from __future__ import annotations

import math
import pickle

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from studies.space import SearchSpace, make_sampler, sample_params
from studies.spec import parse_spec

optuna.logging.set_verbosity(optuna.logging.WARNING)


def spec_of(**kw):
    raw = {
        "name": "s", "data": "digits", "methods": {"choice": ["none", "slimming"]},
        "space": {
            "slimming.lambda": {"low": 1e-4, "high": 0.05, "log": True},
            "slimming.prune_ratio": {"low": 0.2, "high": 0.9},
            "slimming.sparsity_epochs": {"low": 1, "high": 4},
            "slimming.fold_bias": True,
            "none.finetune_epochs": {"choices": [0, 2, 5]},
            "none.lr": 0.02,
        },
        "objectives": {"accuracy": "max", "macs": "min"}, "sampler": {"name": "random",
                                                                     "seed": 4},
        "trials": 40,
    }
    raw.update(kw)
    return parse_spec(raw)


def draw(spec, n: int) -> list[tuple[dict, dict]]:
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=make_sampler(spec))
    out = []
    for _ in range(n):
        t = study.ask()
        params = sample_params(spec, t)
        out.append((params, dict(t.distributions)))
        study.tell(t, [0.5, 1.0])
    return out


def test_a_choice_of_chains_samples_only_the_chosen_chains_parameters():
    spec = spec_of()
    seen = set()
    for params, dists in draw(spec, 40):
        chain = params["pipeline"]
        seen.add(chain)
        assert isinstance(dists["pipeline"], CategoricalDistribution)
        stages = {k.partition(".")[0] for k in params if k != "pipeline"}
        assert stages == {chain}
        if chain == "slimming":
            assert 1e-4 <= params["slimming.lambda"] <= 0.05
            assert 0.2 <= params["slimming.prune_ratio"] <= 0.9
            assert params["slimming.sparsity_epochs"] in range(1, 5)
            assert params["slimming.fold_bias"] is True  # fixed, returned as a constant
            assert dists["slimming.lambda"] == FloatDistribution(1e-4, 0.05, log=True)
            assert isinstance(dists["slimming.sparsity_epochs"], IntDistribution)
            assert "slimming.fold_bias" not in dists  # not a searched parameter
        else:
            assert params["none.finetune_epochs"] in (0, 2, 5) and params["none.lr"] == 0.02
    assert seen == {"none", "slimming"}


def test_a_single_chain_has_no_pipeline_parameter():
    spec = spec_of(methods="slimming", space={"slimming.prune_ratio": {"low": 0.2,
                                                                       "high": 0.9}})
    for params, _ in draw(spec, 5):
        assert set(params) == {"slimming.prune_ratio"}


@pytest.mark.parametrize("sampler", ["tpe", "nsga2", "gp", "random"])
def test_samplers_are_seeded(sampler):
    kw = {"methods": "slimming", "trials": 12,
          "space": {"slimming.prune_ratio": {"low": 0.2, "high": 0.9},
                    "slimming.sparsity_epochs": {"low": 1, "high": 9}}}
    a = [p for p, _ in draw(spec_of(sampler={"name": sampler, "seed": 1}, **kw), 6)]
    b = [p for p, _ in draw(spec_of(sampler={"name": sampler, "seed": 1}, **kw), 6)]
    c = [p for p, _ in draw(spec_of(sampler={"name": sampler, "seed": 2}, **kw), 6)]
    assert a == b and a != c


def test_sampler_defaults_scale_with_the_trial_budget():
    tpe = make_sampler(spec_of(sampler={"name": "tpe", "seed": 0}, trials=12))
    assert isinstance(tpe, optuna.samplers.TPESampler) and tpe._n_startup_trials == 3
    nsga = make_sampler(spec_of(sampler={"name": "nsga2", "seed": 0}, trials=30))
    assert isinstance(nsga, optuna.samplers.NSGAIISampler) and nsga._population_size == 10
    given = make_sampler(spec_of(sampler={"name": "nsga2", "seed": 0,
                                          "options": {"population_size": 6}}))
    assert given._population_size == 6


def test_the_space_survives_pickling_as_tune_saves_it():
    spec = spec_of()
    space = pickle.loads(pickle.dumps(SearchSpace(spec)))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    t = study.ask()
    consts = space(t)
    assert set(t.params) >= {"pipeline"}
    assert all(not isinstance(v, float) or math.isfinite(v) for v in consts.values())


def test_optuna_storage_forms(tmp_path):
    from studies.search import optuna_storage

    def storage_of(value):
        spec = spec_of(optuna_storage=value)
        st = optuna_storage(spec, tmp_path)
        study = optuna.create_study(storage=st, study_name="x", load_if_exists=True)
        study.tell(study.ask(), 1.0)  # usable: a trial goes in and stays
        return st, optuna.load_study(study_name="x", storage=st)

    st, study = storage_of(None)
    assert (tmp_path / "optuna.db").is_file() and len(study.trials) == 1
    st, _ = storage_of(f"sqlite:///{tmp_path / 'url.db'}")
    assert (tmp_path / "url.db").is_file()
    st, _ = storage_of("other.db")
    assert (tmp_path / "other.db").is_file()
    st, study = storage_of("journal:trials.journal")
    assert isinstance(st, optuna.storages.JournalStorage) and (tmp_path / "trials.journal").exists()
    st, _ = storage_of(str(tmp_path / "abs.log"))
    assert isinstance(st, optuna.storages.JournalStorage)


def test_warm_start_enqueues_the_old_front_that_fits_the_new_space(tmp_path):
    from studies.samplers import make_sampler
    from studies.search import StudySearch, warm_start_points

    url = f"sqlite:///{tmp_path / 'old.db'}"
    old = optuna.create_study(study_name="old", storage=url,
                              directions=["maximize", "minimize"])
    # (ratio, accuracy, macs): the first three are the front, the last is dominated
    for ratio, acc, macs in [(0.3, 0.95, 100), (0.6, 0.90, 50), (0.95, 0.70, 10),
                             (0.5, 0.80, 90)]:
        old.enqueue_trial({"slimming.prune_ratio": ratio, "slimming.lambda": 0.01})
        t = old.ask()
        t.suggest_float("slimming.prune_ratio", 0.1, 0.99)
        t.suggest_float("slimming.lambda", 1e-4, 1e-1, log=True)
        old.tell(t, [acc, macs])
    spec = spec_of(methods="slimming", space={"slimming.prune_ratio": {"low": 0.2, "high": 0.9},
                          "slimming.lambda": {"low": 1e-4, "high": 1e-1, "log": True}},
                   warm_start={"storage": url, "study": "old"})
    points = warm_start_points(spec)
    # 0.95 lies outside the new range; the dominated 0.5 was never on the front
    assert sorted(p["slimming.prune_ratio"] for p in points) == [0.3, 0.6]
    searcher = StudySearch(space=SearchSpace(spec), metric=["accuracy", "macs"],
                           mode=["max", "min"], sampler=make_sampler(spec),
                           points_to_evaluate=points)
    first = [searcher.suggest(f"t{i}") for i in range(2)]
    assert [f["slimming.prune_ratio"] for f in first] == [p["slimming.prune_ratio"]
                                                          for p in points]
    with pytest.raises(ValueError, match="warm_start.storage"):
        spec_of(warm_start={"storage": "runs/x", "study": "old"})
