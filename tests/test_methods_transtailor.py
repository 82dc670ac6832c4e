"""TransTailor: alpha folding, Taylor importance, the tau rule, on the digits-split transfer."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from prune_core import models
from prune_core.baseline import get_base
from prune_core.methods import (
    Context,
    ParamError,
    filter_counts,
    get_method,
    total_filters,
)
from prune_core.methods.transtailor import AlphaScaled, prune_plan, taylor_importance
from prune_core.train import TrainConfig
from prune_core.trial import TrialSpec
from tests.conftest import TEST_CACHE

# A small VGG-11 trained on digits 0-4, then fine-tuned to digits 5-9: W^{s*}_f.
TRANSFER_SPEC = TrialSpec(
    model="vgg11", model_kw={"width": 0.125}, data="digits-split",
    baseline={"epochs": 10, "lr": 0.05}, transfer={"epochs": 10, "lr": 0.05},
)


@pytest.fixture(scope="session")
def transfer_base(digits_split):
    base, _ = get_base(TRANSFER_SPEC.base_spec(), digits_split, TEST_CACHE, log=lambda _m: None)
    return base


def _ctx(data, rows: list | None = None) -> Context:
    return Context(data=data, train=TrainConfig(epochs=5, lr=0.01, seed=0), stage="transtailor",
                   report=(rows.append if rows is not None else lambda _r: None))


def test_folding_alpha_keeps_the_output(digits_split):
    torch.manual_seed(0)
    net = models.build("vgg11", num_classes=5, width=0.125)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        net(torch.randn(64, 3, 32, 32))  # non-trivial BN running statistics
    net.eval()
    plain = copy.deepcopy(net)
    wrapper = AlphaScaled(net, (3, 32, 32), "random", torch.Generator().manual_seed(1))
    with torch.no_grad():
        scaled = wrapper(x)
    folded = wrapper.fold()
    with torch.no_grad():
        assert torch.allclose(folded(x), scaled, atol=1e-5)
        # the factors really act: random alpha changes the output
        assert not torch.allclose(scaled, plain(x), atol=1e-3)
    assert not any(m._forward_hooks for m in folded.modules())
    assert all(p.requires_grad for p in folded.parameters())


def test_alpha_training_moves_only_alpha(digits_split):
    net = models.build("vgg11", num_classes=5, width=0.125)
    before = copy.deepcopy(net.state_dict())
    wrapper = AlphaScaled(net, (3, 32, 32), "ones", torch.Generator())
    _ctx(digits_split).fit(wrapper, 1, lr=0.05, weight_decay=0.0, classifier_lr=0.05)
    after = net.state_dict()
    # weights and BN running statistics are frozen while alpha trains
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert any(not torch.all(a == 1) for a in wrapper.alpha.values())


def test_importance_is_taylor_of_alpha_and_plan_is_global(digits_split):
    net = models.build("vgg11", num_classes=5, width=0.125)
    wrapper = AlphaScaled(net, (3, 32, 32), "ones", torch.Generator())
    scores = taylor_importance(wrapper, digits_split)
    # Setting one alpha to zero changes the loss by about what its importance says
    # (first-order); a filter ranked at the top matters more than one at the bottom.
    assert set(scores) == set(wrapper.alpha)
    assert all((s >= 0).all() for s in scores.values())
    plan = prune_plan(scores, 0.3)
    counts = {AlphaScaled.key(n): c for n, c in filter_counts(net).items()}
    assert sum(len(v) for v in plan.values()) == round(0.3 * sum(counts.values()))
    assert all(len(plan[k]) <= counts[k] - 1 for k in plan)
    # one filter survives in every layer even when nearly everything goes
    greedy = prune_plan(scores, 0.99)
    assert all(len(greedy[k]) == counts[k] - 1 for k in greedy)


def test_taylor_importance_tracks_the_loss_change(digits_split, transfer_base):
    digits_split = dataclasses.replace(digits_split, train=digits_split.val)  # fewer batches
    net = transfer_base.build()
    wrapper = AlphaScaled(net, (3, 32, 32), "ones", torch.Generator())
    scores = taylor_importance(wrapper, digits_split)["features__conv7"]
    lo, hi = int(scores.argmin()), int(scores.argmax())

    def loss_without(i: int) -> float:
        with torch.no_grad():
            wrapper.alpha["features__conv7"][i] = 0.0
            total = sum(float(torch.nn.functional.cross_entropy(wrapper(x), y))
                        for x, y in digits_split.batches("train", 128, shuffle=False,
                                                         augment=False))
            wrapper.alpha["features__conv7"][i] = 1.0
        return total

    with torch.no_grad():
        ref = sum(float(torch.nn.functional.cross_entropy(wrapper(x), y))
                  for x, y in digits_split.batches("train", 128, shuffle=False, augment=False))
    assert abs(loss_without(hi) - ref) > abs(loss_without(lo) - ref)


def test_tau_bounds_the_drop_and_a_third_of_the_filters_go(digits_split, transfer_base):
    model = transfer_base.build()
    start_val = _ctx(digits_split).evaluate(model, "val")["accuracy"]
    start_filters = total_filters(model)
    rows: list = []
    ctx = _ctx(digits_split, rows)
    method = get_method("transtailor")
    params = method.resolve({"tau": 0.02, "step_ratio": 0.2, "max_rounds": 2,
                             "alpha_epochs": 1, "finetune_epochs": 3, "patience": 2,
                             "lr": 0.01, "classifier_lr": 0.05, "tau_reference": "start"})
    out = method(model, params, ctx)
    val = ctx.evaluate(out, "val")
    assert start_val - val["accuracy"] <= 0.02 + 1e-9
    assert total_filters(out) <= 0.7 * start_filters
    rounds = ctx.results["transtailor.rounds"]
    assert ctx.results["transtailor.filters_removed"] == start_filters - total_filters(out)
    assert ctx.results["transtailor.filters_removed_share"] == pytest.approx(
        1 - total_filters(out) / start_filters)
    # the returned model is the last accepted round's, with its reported accuracy
    accepted = [r for r in rounds if r["accepted"]]
    assert accepted and accepted[-1]["filters"] == total_filters(out)
    assert accepted[-1]["score"] == pytest.approx(val["accuracy"])
    assert all(r["reference"] == pytest.approx(start_val) for r in rounds)
    round_rows = [r for r in rows if r["phase"] == "round"]
    assert len(round_rows) == len(rounds)
    # no scaling factors left behind
    assert not any("alpha" in k for k in out.state_dict())


def test_random_alpha_init_runs_and_respects_tau(digits_split, transfer_base):
    model = transfer_base.build()
    ctx = _ctx(digits_split)
    start_val = ctx.evaluate(model, "val")["accuracy"]
    method = get_method("transtailor")
    params = method.resolve({"tau": 0.02, "alpha_init": "random", "step_ratio": 0.2,
                             "max_rounds": 1, "alpha_epochs": 1, "finetune_epochs": 2,
                             "tau_reference": "start"})
    out = method(model, params, ctx)
    assert start_val - ctx.evaluate(out, "val")["accuracy"] <= 0.02 + 1e-9
    (record,) = ctx.results["transtailor.rounds"]
    # a round beyond tau returns the starting model untouched
    expect = total_filters(model) if not record["accepted"] else record["filters"]
    assert total_filters(out) == expect


def test_a_round_beyond_tau_returns_the_previous_model(digits_split, transfer_base):
    model = transfer_base.build()
    before = copy.deepcopy(model.state_dict())
    ctx = _ctx(digits_split)
    method = get_method("transtailor")
    # Removing 90 % of the filters with one epoch of fine-tuning is far beyond a zero tau.
    params = method.resolve({"tau": 0.0, "step_ratio": 0.9, "max_rounds": 1,
                             "alpha_epochs": 1, "finetune_epochs": 1})
    out = method(model, params, ctx)
    assert ctx.results["transtailor.rounds"][0]["accepted"] is False
    assert ctx.results["transtailor.filters_removed"] == 0
    assert ctx.results["transtailor.filters_removed_share"] == 0.0
    assert all(torch.equal(before[k], v) for k, v in out.state_dict().items())


@pytest.mark.parametrize("name,value", [("tau", -0.01), ("step_ratio", 0.0), ("step_ratio", 1.0),
                                        ("alpha_init", "zeros"), ("alpha_epochs", 0)])
def test_bad_parameters_name_the_domain(name, value):
    with pytest.raises(ParamError, match=rf"transtailor\.{name} = .*allowed"):
        get_method("transtailor").resolve({name: value})


def test_a_resumed_trial_ends_where_an_uninterrupted_one_does(digits_split, transfer_base):
    method = get_method("transtailor")
    params = method.resolve({"tau": 0.05, "step_ratio": 0.2, "max_rounds": 2,
                             "alpha_epochs": 1, "finetune_epochs": 2, "patience": 2})
    saves: list = []
    ctx = Context(data=digits_split, train=TrainConfig(epochs=5, lr=0.01, seed=0),
                  stage="transtailor", save=saves.append)
    full = method(transfer_base.build(), params, ctx)
    # calls: round 1 alpha (0), fine-tune (1); round 2 alpha (2), fine-tune (3)
    alpha2 = next(p for p in saves if p["fit_call"] == 2)
    tune2 = next(p for p in saves if p["fit_call"] == 3)
    # every checkpoint of round 2 holds the model round 2 started from (round 1's)
    start2 = {k[len("net."):]: v for k, v in alpha2["state_dict"].items() if k.startswith("net.")}
    kept2 = {k[len("kept."):]: v for k, v in tune2["state_dict"].items()
             if k.startswith("kept.")}
    assert start2.keys() == kept2.keys()
    assert all(torch.equal(start2[k], kept2[k]) for k in start2)
    # resumed after round 2's alpha training: the same rounds, the same model
    ctx2 = Context(data=digits_split, train=TrainConfig(epochs=5, lr=0.01, seed=0),
                   stage="transtailor", results=dict(alpha2["results"]), resume=alpha2)
    resumed = method(transfer_base.build(), params, ctx2)
    assert ctx2.results == ctx.results
    assert filter_counts(resumed) == filter_counts(full)
    ref = full.state_dict()
    assert all(torch.allclose(v, ref[k], atol=1e-6) for k, v in resumed.state_dict().items())


def test_last_reference_measures_each_round_from_the_last_accepted(digits_split,
                                                                   transfer_base):
    """The seed's loop: W_o = W_p after every accepted round, so the drop that stops the
    rounds is the last round's own, not the sum since the start."""
    model = transfer_base.build()
    ctx = _ctx(digits_split)
    start_val = ctx.evaluate(model, "val")["balanced_accuracy"]
    method = get_method("transtailor")
    params = method.resolve({"tau": 0.05, "step_ratio": 0.3, "max_rounds": 3,
                             "alpha_epochs": 1, "finetune_epochs": 1, "patience": 1,
                             "metric": "balanced_accuracy"})
    method(model, params, ctx)
    rounds = ctx.results["transtailor.rounds"]
    assert rounds[0]["reference"] == pytest.approx(start_val)
    for before, after in zip(rounds, rounds[1:], strict=False):
        assert before["accepted"]
        assert after["reference"] == pytest.approx(before["score"])
    assert all(r["drop"] == pytest.approx(r["reference"] - r["score"]) for r in rounds)
    assert all(r["accepted"] == (r["drop"] <= 0.05) for r in rounds)


def test_holdout_checks_tau_on_data_early_stopping_never_sees(digits_split):
    from prune_core.methods.transtailor import _tau_splits

    tau, stopping = _tau_splits(digits_split, "holdout", seed=0)
    assert len(tau.val) + len(stopping.val) == len(digits_split.val)
    rows = lambda split: {tuple(x.flatten().tolist()[:64]) + (int(y),)  # noqa: E731
                          for x, y in zip(split.x, split.y, strict=True)}
    assert not rows(tau.val) & rows(stopping.val)
    assert set(tau.val.y.tolist()) == set(digits_split.val.y.tolist())  # stratified
    assert tau.train is digits_split.train and stopping.test is digits_split.test
    same, also = _tau_splits(digits_split, "val", seed=0)
    assert same is digits_split and also is digits_split


def test_folding_given_factors_multiplies_those_instead_of_alpha(digits_split):
    torch.manual_seed(0)
    net = models.build("vgg11", num_classes=5, width=0.125)
    with torch.no_grad():
        net(torch.randn(64, 3, 32, 32))
    net.eval()
    x = torch.randn(4, 3, 32, 32)
    wrapper = AlphaScaled(net, (3, 32, 32), "random", torch.Generator().manual_seed(1))
    factors = {k: torch.rand(a.shape, generator=torch.Generator().manual_seed(2)) * 0.1
               for k, a in wrapper.alpha.items()}
    with torch.no_grad():
        for k, a in wrapper.alpha.items():
            a.copy_(factors[k])
        expect = wrapper(x)
        for a in wrapper.alpha.values():
            a.fill_(1.0)  # fold(factors) must not use what alpha holds
    folded = wrapper.fold(factors)
    with torch.no_grad():
        assert torch.allclose(folded(x), expect, atol=1e-5)


def test_fold_beta_records_the_seeds_collapse_beside_fold_alpha(digits_split, transfer_base):
    """The seed's second variant: folding beta (not alpha) into the weights ruins the
    pruned model before fine-tuning; each round records the accuracy at every moment."""
    method = get_method("transtailor")
    out = {}
    for fold in ("alpha", "beta"):
        ctx = _ctx(digits_split)
        params = method.resolve({"tau": 1.0, "step_ratio": 0.1, "max_rounds": 1,
                                 "alpha_epochs": 1, "finetune_epochs": 1, "fold": fold,
                                 "tau_reference": "start"})
        method(transfer_base.build(), params, ctx)
        (out[fold],) = ctx.results["transtailor.rounds"]
        # alpha starts at one: the wrapped model is the starting model
        assert out[fold]["init_score"] == pytest.approx(out[fold]["reference"])
    assert out["alpha"]["pruned_score"] > out["alpha"]["reference"] - 0.2
    assert out["beta"]["pruned_score"] < out["alpha"]["pruned_score"] - 0.3
    print({f: {k: round(v, 3) for k, v in r.items() if k.endswith("score")}
           for f, r in out.items()})


def test_holdout_halves_a_validation_split_of_one_image_per_class(digits_split):
    """A stratified half of a split whose every class has one image would take it all and
    leave early stopping nothing: the split is halved as it comes instead (the rehearsal's
    four random images are such a split)."""
    from prune_core.data import Split
    from prune_core.methods.transtailor import _tau_splits

    val = Split(digits_split.val.x[:4], torch.arange(4))
    tau, stopping = _tau_splits(dataclasses.replace(digits_split, val=val), "holdout", 0)
    assert len(tau.val) == 2 and len(stopping.val) == 2
    assert not set(tau.val.y.tolist()) & set(stopping.val.y.tolist())
    with pytest.raises(ValueError, match="has 1 image"):
        _tau_splits(dataclasses.replace(digits_split, val=Split(val.x[:1], val.y[:1])),
                    "holdout", 0)
