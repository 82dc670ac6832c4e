"""Network slimming: sparsity training, channel selection, bias folding, removal."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
import torchvision.models as tv

from prune_core.groups import channel_groups, fold_removed, group_bn_scales
from prune_core.measure import channel_counts, count_macs
from prune_core.methods import Context, get_method
from prune_core.methods import slimming as S
from prune_core.models import build
from prune_core.surgery import mask_channels, remove_channels
from prune_core.train import Hooks, TrainConfig, evaluate

SWEEP = (0.0, 2e-2, 1e-1)
SWEEP_EPOCHS = 3


@pytest.fixture(scope="module")
def sweep(digits, base_vgg):
    """Sparsity training at each lambda of SWEEP from the base model (constant lr, so a
    few epochs show the trend): lambda -> (model, per-epoch rows)."""
    out = {}
    for lam in SWEEP:
        model = base_vgg.build()
        layers = S.slimmable(model, digits.input_shape)
        ref = S.SPARSE_REL * float(torch.cat(list(S.gammas(model, layers).values())).mean())
        rows: list[dict] = []
        ctx = Context(data=digits, train=TrainConfig(epochs=1, lr=0.05), report=rows.append)
        hooks = Hooks(after_backward=[S.l1_subgradient(lam, S.bn_names(layers))])
        ctx.fit(model, SWEEP_EPOCHS, hooks=hooks, lr=0.05, schedule="constant",
                phase="sparsity", extra=lambda m, layers=layers, ref=ref: {
                    "sparsity": S.sparsity_of(S.gammas(m, layers), ref)})
        out[lam] = (model, rows)
    return out


@pytest.fixture(scope="module")
def sparse(digits, base_vgg):
    """The method's own sparsity phase (lambda 3e-2, 10 epochs), with nothing removed yet."""
    rows: list[dict] = []
    ctx = Context(data=digits, train=TrainConfig(epochs=1, lr=0.01), report=rows.append,
                  stage="slimming")
    params = get_method("slimming").resolve(
        {"lambda": 3e-2, "sparsity_epochs": 10, "prune_ratio": 0.0, "finetune_epochs": 0})
    model = get_method("slimming")(base_vgg.build(), params, ctx)
    return model.eval(), rows, ctx.results


def test_sparsity_rises_with_lambda(sweep):
    final = [rows[-1]["sparsity"] for _, rows in sweep.values()]
    assert final[0] == 0.0
    assert final == sorted(final) and final[-1] > 0.05, final
    means = [float(torch.cat(list(S.gammas(m, S.slimmable(m, (3, 32, 32))).values())).mean())
             for m, _ in sweep.values()]
    assert means[0] > means[1] > means[2]
    for _, rows in sweep.values():
        assert [r["epoch"] for r in rows] == list(range(1, SWEEP_EPOCHS + 1))
        assert all("train_accuracy" in r and r["phase"] == "sparsity" for r in rows)


def test_sparsity_phase_reports_and_records(sparse):
    _, rows, results = sparse
    assert [r["phase"] for r in rows] == ["sparsity"] * 10
    assert rows[-1]["sparsity"] > 0.2 and rows[0]["sparsity"] <= rows[-1]["sparsity"]
    assert len(results["slimming.gammas"]) == 688  # every BN channel of VGG-11 at width 0.25
    assert results["slimming.sparsity"] == pytest.approx(rows[-1]["sparsity"])
    assert results["slimming.channels_removed"] == 0


def test_folding_keeps_accuracy_where_gammas_are_near_zero(sparse, digits):
    model = sparse[0]
    layers = S.slimmable(model, digits.input_shape)
    g = group_bn_scales(model, layers)
    ratio = 0.3
    plan = S.select_channels(g, ratio)
    removed = torch.cat([g[k][v] for k, v in plan.items() if v])
    assert float(removed.max()) < 5e-3  # the removed scale factors are near zero
    x, _ = next(digits.batches("test", 512, shuffle=False, augment=False))
    with torch.no_grad():
        ref = model.eval()(x)
    acc, err = {}, {}
    for fold in (True, False):
        m = copy.deepcopy(model)
        S.prune(m, ratio, digits, fold_bias=fold)
        acc[fold] = evaluate(m, digits, "test")["accuracy"]
        with torch.no_grad():
            err[fold] = float((m.eval()(x) - ref).norm() / ref.norm())
    unpruned = evaluate(model, digits, "test")["accuracy"]
    assert acc[True] > 0.9 and acc[True] > unpruned - 0.05, (acc, unpruned)
    # A removed channel carried about relu(beta); folded into its readers, the outputs
    # stay close to the unpruned model's (3.4x closer here), and accuracy with them.
    assert err[True] < 0.5 * err[False] and acc[True] > acc[False], (err, acc)


def test_70_percent_removed_and_finetuned_within_one_point(sparse, digits, base_vgg):
    model = copy.deepcopy(sparse[0])
    plan, _ = S.prune(model, 0.7, digits)
    assert sum(len(v) for v in plan.values()) == round(0.7 * 688)
    ctx = Context(data=digits, train=TrainConfig(epochs=1, lr=0.01))
    ctx.fit(model, 10, lr=0.01)
    drop = base_vgg.row["accuracy"] - evaluate(model, digits, "test")["accuracy"]
    assert drop <= 0.01, drop
    assert base_vgg.row["macs"] / count_macs(model, digits.input_shape)[0] >= 4.0


def test_fold_into_classifier_is_exact(base_vgg, digits):
    """A last-layer channel with gamma = 0 emits relu(beta); folding it into the
    classifier bias leaves the logits unchanged after removal."""
    model = base_vgg.build().eval()
    layers = S.slimmable(model, digits.input_shape)
    bn = model.features.bn7
    with torch.no_grad():
        bn.weight[:5] = 0
        bn.bias[:5] = torch.tensor([0.3, -0.2, 0.5, 0.0, 1.0])
    x = next(digits.batches("test", 64))[0]
    before = model(x)
    plan = {"features.conv7": [0, 1, 2, 3, 4]}
    assert fold_removed(model, layers, plan, digits) == {"folded": ["classifier"],
                                                         "skipped": []}
    remove_channels(model, plan, digits.input_shape)
    assert model.classifier.in_features == bn.num_features == 128 - 5
    torch.testing.assert_close(model(x), before, atol=1e-5, rtol=1e-5)


def test_fold_behind_a_flatten_uses_each_channels_own_columns(digits):
    """torchvision's vgg16_bn flattens a 7 x 7 map into its first linear layer: a removed
    channel owns 49 columns there, and folding must use exactly those."""
    torch.manual_seed(0)
    model = tv.vgg16_bn(num_classes=10).eval()
    bn = model.features[41]
    with torch.no_grad():
        bn.weight[:4] = 0
        bn.bias[:4] = torch.tensor([0.7, 0.2, -0.1, 1.5])
        bn.bias[4:8] = 2.0  # kept channels with large outputs: wrong columns would show
    x = next(digits.batches("test", 16))[0]
    before = model(x)
    groups = channel_groups(model, digits.input_shape)
    plan = {"features.40": [0, 1, 2, 3]}
    assert fold_removed(model, groups, plan, digits, batches=1)["folded"] == ["classifier.0"]
    remove_channels(model, plan, digits.input_shape)
    assert model.classifier[0].in_features == (512 - 4) * 49
    torch.testing.assert_close(model(x), before, atol=1e-4, rtol=1e-4)


def test_residual_stream_channels_are_pruned_with_every_coupled_layer(digits):
    model = build("resnet20", width=0.5).eval()
    groups = S.slimmable(model, digits.input_shape)
    stream = [g for g in groups if g.coupled]
    assert len(stream) == 3  # one residual stream per stage
    covered = {c for g in groups for c in g.convs}
    assert covered == {n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)}
    plan, folding = S.prune(model, 0.5, digits, groups=groups)
    assert not folding["skipped"]
    counts = channel_counts(model)
    first = stream[0]
    kept = first.size - len(plan[first.root])
    assert kept < first.size
    assert {counts[c] for c in first.convs} == {kept}  # the stem and every block's conv2
    assert model(next(digits.batches("test", 8))[0]).shape == (8, 10)


@pytest.mark.parametrize("ratio", [0.0, 0.3, 0.7, 0.95])
def test_selected_count_matches_ratio_and_keeps_every_layer(ratio):
    gen = torch.Generator().manual_seed(1)
    sizes = {"a": 16, "b": 32, "c": 64, "d": 128, "e": 4}
    g = {k: torch.rand(n, generator=gen) for k, n in sizes.items()}
    g["e"] *= 1e-3  # a layer the global threshold would empty
    plan = S.select_channels(g, ratio)
    total = sum(sizes.values())
    assert sum(len(v) for v in plan.values()) == round(ratio * total)
    for k, n in sizes.items():
        assert n - len(plan[k]) >= max(1, math.ceil(S.MIN_KEEP * n))
        assert len(set(plan[k])) == len(plan[k])


def test_physical_and_masked_models_agree(sparse, digits):
    model = sparse[0]
    layers = S.slimmable(model, digits.input_shape)
    plan = S.select_channels(group_bn_scales(model, layers), 0.5)
    masked = mask_channels(copy.deepcopy(model), plan, digits.input_shape).eval()
    removed = remove_channels(copy.deepcopy(model), {k: v for k, v in plan.items() if v},
                              digits.input_shape).eval()
    x = next(digits.batches("test", 64))[0]
    torch.testing.assert_close(removed(x), masked(x), atol=1e-4, rtol=1e-4)
    counts = channel_counts(removed)
    for name, idxs in plan.items():
        assert counts[name] == dict(model.named_modules())[name].out_channels - len(idxs)


def test_model_without_batchnorm_is_refused():
    with pytest.raises(S.SlimmingError, match="C3"):
        S.slimmable(build("c3", k=8), (3, 32, 32))


def test_resume_inside_finetuning_keeps_the_pruned_model_and_results(base_vgg):
    from prune_core.trial import TrialSpec, run_trial

    spec = TrialSpec(model="vgg11", model_kw={"width": 0.25}, data="digits",
                     baseline={"epochs": 12, "lr": 0.05}, methods="slimming")
    params = {"slimming.sparsity_epochs": 1, "slimming.finetune_epochs": 2,
              "slimming.prune_ratio": 0.5}
    saved: list[dict] = []

    def report(metrics, checkpoint=None):
        if checkpoint is not None and metrics.get("checkpoint"):
            saved.append(checkpoint)

    row = run_trial({"study": spec, "params": params}, report, base=base_vgg)
    inside = [c for c in saved if c["inner"] and c["inner"]["fit_call"] == 1]
    assert inside, "no checkpoint inside fine-tuning"
    resumed = run_trial({"study": spec, "params": params}, base=base_vgg, resume=inside[0])
    for key in ("params", "macs", "slimming.channels_removed", "slimming.gammas",
                "slimming.accuracy_before_finetune", "slimming.sparsity"):
        assert resumed[key] == row[key], key


def test_bench_slimming_tiny_sweeps_lambdas_and_prunes(tmp_path):
    from benchmarks import bench_slimming

    bench_slimming.main(["--tiny", "--out", str(tmp_path)])
    doc = json.loads((tmp_path / "slimming.json").read_text())
    settings = doc["settings"]
    assert [s["lambda"] for s in doc["sweeps"]] == settings["lambdas"]
    for sweep in doc["sweeps"]:
        assert [e["epoch"] for e in sweep["epochs"]] == \
            list(range(1, settings["sparsity_epochs"] + 1))
        assert all(0 <= e["sparsity"] <= 1 for e in sweep["epochs"])
        assert len(sweep["gammas"]) == len(doc["sweeps"][0]["gammas"]) > 0
        half, most = sweep["pruned"]
        assert (half["prune_ratio"], most["prune_ratio"]) == (0.5, 0.9)
        # removing more channels leaves fewer MACs and parameters
        assert most["macs_vs_base"] < half["macs_vs_base"] < 1
        assert most["params_vs_base"] < half["params_vs_base"] < 1
    assert (tmp_path / "slimming.png").stat().st_size > 10_000
    md = (tmp_path / "slimming.md").read_text()
    assert "| lambda | sparsity |" in md and "--tiny" in doc["command"]


def test_from_scratch_trains_fresh_weights_not_the_base(digits, base_vgg):
    method = get_method("slimming")
    base = base_vgg.build()
    out = {}
    for scratch in (False, True):
        ctx = Context(data=digits, train=TrainConfig(epochs=1, lr=0.01), stage="slimming",
                      seed=3)
        params = method.resolve({"lambda": 0.0, "sparsity_epochs": 1, "sparsity_lr": 1e-6,
                                 "prune_ratio": 0.0, "finetune_epochs": 0,
                                 "from_scratch": scratch})
        out[scratch] = method(copy.deepcopy(base), params, ctx)
    base_acc = evaluate(base, digits, "test")["accuracy"]
    # An epoch at lr 1e-6 changes nothing: the base stays good, a fresh model near chance.
    assert evaluate(out[False], digits, "test")["accuracy"] > base_acc - 0.1
    assert evaluate(out[True], digits, "test")["accuracy"] < 0.35
    first = "features.conv0.weight"
    assert not torch.allclose(out[True].state_dict()[first][:4],
                              base.state_dict()[first][:4])


def test_from_scratch_needs_sparsity_epochs():
    with pytest.raises(Exception, match=r"slimming\.sparsity_epochs = 0 with from_scratch"):
        get_method("slimming").resolve({"from_scratch": True, "sparsity_epochs": 0})
