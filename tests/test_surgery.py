"""Physical channel removal agrees with masking; masks hold through training."""

from __future__ import annotations

import copy

import pytest
import torch

from prune_core import models
from prune_core.groups import channel_groups, group_norms, keep_every_conv, select_per_group
from prune_core.surgery import (
    Masks,
    SurgeryError,
    load_resized,
    mask_channels,
    remove_channels,
)
from prune_core.train import Hooks

SHAPE = (3, 32, 32)


def _randomise_bn(model):
    """Non-trivial BN statistics so a wrong channel mapping shows in the output."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.rand(m.num_features, generator=g) * 2 - 1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.rand(m.num_features, generator=g) * 2 - 1)
    return model.eval()


PLANS = {
    "vgg11": {"features.conv1": [0, 3, 5], "features.conv4": [1, 2, 10, 11]},
    "resnet20": {"layer1.0.conv1": [1, 2], "layer2.1.conv1": [0, 4, 7], "conv1": [3]},
}


@pytest.mark.parametrize("name", sorted(PLANS))
def test_removed_channels_match_masked_model(name):
    torch.manual_seed(0)  # whatever ran before, the same weights and input
    model = _randomise_bn(models.build(name, width=0.5))
    x = torch.randn(4, *SHAPE)
    masked = mask_channels(copy.deepcopy(model), PLANS[name], SHAPE)
    removed = remove_channels(copy.deepcopy(model), PLANS[name], SHAPE)
    with torch.no_grad():
        assert torch.allclose(masked(x), removed(x), atol=1e-5)
        changed = not torch.allclose(model(x), removed(x), atol=1e-3)
        assert changed, "the plan must change the output"
    before = sum(p.numel() for p in model.parameters())
    assert sum(p.numel() for p in removed.parameters()) < before
    convs = dict(removed.named_modules())
    for layer, idxs in PLANS[name].items():
        orig = dict(model.named_modules())[layer]
        assert convs[layer].out_channels == orig.out_channels - len(idxs)


def test_coupled_residual_layers_are_removed_together():
    model = models.build("resnet20", width=0.5)
    # conv1 feeds the residual stream of stage 1: every block's conv2 loses the channel too
    remove_channels(model, {"conv1": [0, 1]}, SHAPE)
    assert model.layer1[0].conv2.out_channels == model.conv1.out_channels == 6
    assert model(torch.randn(1, *SHAPE)).shape == (1, 10)


class _DenseBlock(torch.nn.Module):
    """[conv(x), x] concatenated in either order, read by one conv: a dense block."""

    def __init__(self, input_first: bool):
        super().__init__()
        self.input_first = input_first
        self.stem = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1),
                                        torch.nn.BatchNorm2d(8), torch.nn.ReLU())
        self.dense = torch.nn.Sequential(torch.nn.Conv2d(8, 8, 3, padding=1),
                                         torch.nn.BatchNorm2d(8), torch.nn.ReLU())
        self.reader = torch.nn.Conv2d(16, 16, 1)
        self.fc = torch.nn.Linear(16, 10)

    def forward(self, x):
        x = self.stem(x)
        parts = [x, self.dense(x)] if self.input_first else [self.dense(x), x]
        return self.fc(self.reader(torch.cat(parts, 1)).mean((2, 3)))


@pytest.mark.parametrize("input_first", [True, False])
def test_a_conv_and_the_input_concatenated_beside_it_are_planned_independently(input_first):
    # Both convs feed one concatenation: removing from the first shifts where the second's
    # channels sit in the reader; each group must land on its own input columns.
    model = _randomise_bn(_DenseBlock(input_first))
    plan = {"stem.0": [0, 5], "dense.0": [1, 2, 7]}
    x = torch.randn(4, *SHAPE)
    masked = mask_channels(copy.deepcopy(model), plan, SHAPE)
    removed = remove_channels(copy.deepcopy(model), plan, SHAPE)
    with torch.no_grad():
        assert torch.allclose(masked(x), removed(x), atol=1e-5)
    assert removed.reader.in_channels == 11
    assert (removed.stem[0].out_channels, removed.dense[0].out_channels) == (6, 5)


class _Ghost(torch.nn.Module):
    """GhostNet's module: a primary conv's channels concatenated beside a depthwise copy
    of them (the cheap operation), read by a depthwise conv."""

    def __init__(self):
        super().__init__()
        def cbr(c_in, c_out, k=1, groups=1):
            return torch.nn.Sequential(
                torch.nn.Conv2d(c_in, c_out, k, padding=k // 2, groups=groups, bias=False),
                torch.nn.BatchNorm2d(c_out), torch.nn.ReLU())
        self.stem = cbr(3, 8, 3)
        self.primary = cbr(8, 6)
        self.cheap = cbr(6, 6, 3, groups=6)
        self.dw = cbr(12, 12, 3, groups=12)
        self.pw = torch.nn.Conv2d(12, 16, 1)
        self.fc = torch.nn.Linear(16, 10)

    def forward(self, x):
        p = self.primary(self.stem(x))
        return self.fc(self.pw(self.dw(torch.cat([p, self.cheap(p)], 1))).mean((2, 3)))


@pytest.mark.parametrize("ratio", [0.5, 0.9])
def test_a_channel_and_its_depthwise_copy_concatenated_beside_it_go_together(ratio):
    # Removing primary channel i removes the cheap op's channel i too, so the group's
    # channels i and i + 6 are one: planned apart, torch-pruning emptied the primary conv
    # ("would remove every channel"), which refused GhostNet at every high ratio.
    model = _randomise_bn(_Ghost())
    groups = channel_groups(model, SHAPE)
    ghost = next(g for g in groups if g.ties)
    assert sorted(ghost.ties) == [[i, i + 6] for i in range(6)]
    scores = group_norms(model, groups)
    assert all(len(set(scores[ghost.root][t].tolist())) == 1 for t in ghost.ties)
    plan = keep_every_conv(select_per_group(scores, ratio), groups, scores)
    removed_idx = set(plan[ghost.root])
    assert removed_idx and all(removed_idx.isdisjoint(t) or removed_idx.issuperset(t)
                               for t in ghost.ties)
    x = torch.randn(4, *SHAPE)
    masked = mask_channels(copy.deepcopy(model), plan, SHAPE)
    removed = remove_channels(copy.deepcopy(model), plan, SHAPE)
    with torch.no_grad():
        assert torch.allclose(masked(x), removed(x), atol=1e-5)
    assert removed.primary[0].out_channels == 6 - len(removed_idx) // 2 >= 1


def test_whole_attention_heads_go_and_the_block_reshapes_by_the_heads_left():
    import timm

    def vit():
        torch.manual_seed(0)
        return timm.create_model("vit_tiny_patch16_224", img_size=32, num_classes=10).eval()

    model = vit()
    groups = channel_groups(model, SHAPE)
    qkv = next(g for g in groups if g.root == "blocks.0.attn.qkv")
    # 3 heads of 64: head h is its query, key and value channels
    assert qkv.size == 576 and len(qkv.ties) == 3
    assert qkv.ties[1] == [*range(64, 128), *range(256, 320), *range(448, 512)]
    assert any(g.root == "blocks.0.mlp.fc1" for g in groups)  # MLP hidden layers too
    scores = group_norms(model, groups)
    plan = keep_every_conv(select_per_group(scores, 0.5), groups, scores)
    assert len(plan["blocks.0.attn.qkv"]) == 192  # 288 asked: one whole head of three
    x = torch.randn(2, *SHAPE)
    masked = mask_channels(copy.deepcopy(model), plan, SHAPE)
    removed = remove_channels(copy.deepcopy(model), plan, SHAPE)
    attn = removed.blocks[0].attn
    assert (attn.num_heads, attn.attn_dim, attn.qkv.out_features, attn.proj.in_features) == (
        2, 128, 384, 128)
    with torch.no_grad():
        torch.testing.assert_close(removed(x), masked(x), atol=1e-5, rtol=1e-4)
        # a checkpoint of the pruned model loads into a fresh one, head counts included
        fresh = load_resized(vit(), removed.state_dict())
        assert fresh.blocks[0].attn.num_heads == 2
        torch.testing.assert_close(fresh(x), removed(x))


def test_channels_inside_a_shufflenet_branch_prune_and_the_shuffled_stay_whole(ratio=0.9):
    # A channel shuffle permutes channels where torch-pruning's reshape mapping expects a
    # flatten: its graph build failed (ZeroDivisionError) and ShuffleNetV2 was refused.
    import torchvision
    torch.manual_seed(0)
    model = _randomise_bn(torchvision.models.shufflenet_v2_x0_5(num_classes=10).eval())
    groups = channel_groups(model, SHAPE)
    roots = {g.root for g in groups}
    # each block's inner 1x1 -> depthwise channels, and the stem before any shuffle
    assert "conv1.0" in roots and "stage3.2.branch2.3" in roots
    # a branch's last conv writes channels the shuffle permutes: left whole
    assert not any("stage2.1.branch2.5" in g.convs for g in groups)
    scores = {k: torch.rand_like(v) for k, v in group_norms(model, groups).items()}
    plan = keep_every_conv(select_per_group(scores, ratio), groups, scores)
    x = torch.randn(2, *SHAPE)
    masked = mask_channels(copy.deepcopy(model), plan, SHAPE)
    removed = remove_channels(copy.deepcopy(model), plan, SHAPE)
    with torch.no_grad():
        torch.testing.assert_close(removed(x), masked(x), atol=1e-5, rtol=1e-4)
    assert sum(p.numel() for p in removed.parameters()) < 0.8 * sum(
        p.numel() for p in model.parameters())


def test_heads_removed_before_a_retrace_leave_a_model_that_runs():
    # MobileViT's convs around its transformers make remove_channels trace the model again
    # after a head group went: the block's head count must already follow its qkv layer.
    import timm
    torch.manual_seed(0)
    model = _randomise_bn(timm.create_model("mobilevit_xxs", num_classes=10).eval())
    groups = channel_groups(model, SHAPE)
    scores = group_norms(model, groups)
    plan = keep_every_conv(select_per_group(scores, 0.9), groups, scores)
    x = torch.randn(2, *SHAPE)
    masked = mask_channels(copy.deepcopy(model), plan, SHAPE)
    removed = remove_channels(copy.deepcopy(model), plan, SHAPE)
    assert removed.stages[2][1].transformer[0].attn.num_heads == 1  # of 4
    with torch.no_grad():
        torch.testing.assert_close(removed(x), masked(x), atol=1e-4, rtol=1e-4)


def test_convs_added_together_cannot_be_planned_apart():
    model = models.build("resnet20", width=0.5)
    with pytest.raises(SurgeryError, match=r"'layer1.0.conv2' and 'conv1' write the same "
                                           r"channels \(added together"):
        remove_channels(model, {"conv1": [0], "layer1.0.conv2": [1]}, SHAPE)


@pytest.mark.parametrize("plan, message", [
    ({"features.bn0": [0]}, "not a conv or linear layer"),
    ({"features.conv0": [99]}, r"must be in \[0, 16\)"),
    ({"features.conv0": list(range(16))}, "removes all 16 channels"),
])
def test_bad_plans_are_rejected_before_any_change(plan, message):
    model = models.build("vgg11", width=0.25)
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(SurgeryError, match=message):
        remove_channels(model, plan, SHAPE)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])


def test_masks_stay_zero_through_momentum_and_weight_decay(digits):
    model = models.build("vgg11", width=0.25)
    with torch.no_grad():
        for conv in (model.features.conv2, model.classifier):
            conv.weight[torch.rand_like(conv.weight) < 0.5] = 0
    masks = Masks.from_zeros(model, ["features.conv2", "classifier"])
    zero = {n: model.get_submodule(n).weight == 0 for n in masks.masks}
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-3)
    hooks: Hooks = masks.hooks()
    model.train()
    for step, (x, y) in enumerate(digits.batches("train", 64)):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        for h in hooks.after_backward:
            h(model)
        opt.step()
        for h in hooks.after_step:
            h(model)
        if step == 5:
            break
    for n, z in zero.items():
        w = model.get_submodule(n).weight
        assert torch.count_nonzero(w[z]) == 0
        assert torch.count_nonzero(w[~z]) == int((~z).sum()), "unmasked weights still train"


def test_load_resized_restores_a_pruned_model_into_a_fresh_one():
    model = _randomise_bn(models.build("vgg11", width=0.25))
    remove_channels(model, {"features.conv2": [0, 1, 2, 3]}, SHAPE)
    fresh = load_resized(models.build("vgg11", width=0.25), model.state_dict()).eval()
    x = torch.randn(2, *SHAPE)
    with torch.no_grad():
        assert torch.equal(fresh(x), model(x))


