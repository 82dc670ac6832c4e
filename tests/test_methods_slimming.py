"""Network slimming: sparsity training, channel selection, bias folding, removal."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch

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
        hooks = Hooks(after_backward=[S.l1_subgradient(lam, [b for b, _ in layers.values()])])
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
    g = S.gammas(model, layers)
    ratio = 0.3
    plan = S.select_channels(g, ratio)
    removed = torch.cat([g[k][v] for k, v in plan.items() if v])
    assert float(removed.max()) < 5e-3  # the removed scale factors are near zero
    acc = {}
    for fold in (True, False):
        m = copy.deepcopy(model)
        S.prune(m, ratio, digits.input_shape, fold_bias=fold)
        acc[fold] = evaluate(m, digits, "test")["accuracy"]
    unpruned = evaluate(model, digits, "test")["accuracy"]
    assert acc[True] > 0.9 and acc[True] > unpruned - 0.05, (acc, unpruned)
    assert acc[True] > acc[False] + 0.1, acc


def test_70_percent_removed_and_finetuned_within_one_point(sparse, digits, base_vgg):
    model = copy.deepcopy(sparse[0])
    plan = S.prune(model, 0.7, digits.input_shape)
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
    plan = {k: [] for k in layers}
    plan["features.conv7"] = [0, 1, 2, 3, 4]
    S.fold_constants(model, plan, layers, digits.input_shape)
    remove_channels(model, {"features.conv7": plan["features.conv7"]}, digits.input_shape)
    assert model.classifier.in_features == bn.num_features == 128 - 5
    torch.testing.assert_close(model(x), before, atol=1e-5, rtol=1e-5)


def test_channel_constant_matches_gamma_zero_and_sampled_mean():
    bn = torch.nn.BatchNorm2d(3)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([0.0, 0.5, 2.0]))
        bn.bias.copy_(torch.tensor([0.4, -0.3, 0.1]))
    c = S.channel_constants(bn)
    assert float(c[0]) == pytest.approx(0.4)
    z = torch.randn(400_000, generator=torch.Generator().manual_seed(0))
    sampled = torch.relu(bn.weight[1:, None].detach() * z + bn.bias[1:, None].detach()).mean(1)
    torch.testing.assert_close(c[1:], sampled, atol=5e-3, rtol=0)


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
    plan = S.select_channels(S.gammas(model, layers), 0.5)
    masked = mask_channels(copy.deepcopy(model), plan, digits.input_shape).eval()
    removed = remove_channels(copy.deepcopy(model), {k: v for k, v in plan.items() if v},
                              digits.input_shape).eval()
    x = next(digits.batches("test", 64))[0]
    torch.testing.assert_close(removed(x), masked(x), atol=1e-4, rtol=1e-4)
    counts = channel_counts(removed)
    for name, idxs in plan.items():
        assert counts[name] == dict(model.named_modules())[name].out_channels - len(idxs)


def test_plain_convs_of_resnet_are_the_block_internal_ones():
    model = build("resnet20", width=0.25)
    names = S.plain_convs(model, (3, 32, 32))
    assert names and all(n.endswith(".conv1") and n.startswith("layer") for n in names)
    assert names["layer1.0.conv1"] == ("layer1.0.bn1", "layer1.0.conv2")


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
