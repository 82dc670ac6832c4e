"""Seed 004's question: can a 3x3 branch conv P be merged into the 3x3 conv W it follows?

docs/methods/branch.md gives the algebra; these tests check each claim numerically.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

torch.manual_seed(0)
W = torch.randn(6, 3, 3, 3, dtype=torch.float64)  # the layer: 3 -> 6 channels
P3 = torch.randn(4, 6, 3, 3, dtype=torch.float64)  # a 3x3 branch: 6 -> 4 channels
X = torch.randn(2, 3, 12, 12, dtype=torch.float64)


def _branch(p: torch.Tensor) -> torch.Tensor:
    """What the network computes: the layer (padding 1), then the branch conv."""
    return F.conv2d(F.conv2d(X, W, padding=1), p, padding=p.shape[-1] // 2)


def _composed(p: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """The single kernel of p after w: K[a, i, u + s, v + t] += sum_b p[a, b, u, v] w[b, i, s, t]
    (a (3 + 3 - 1) = 5-wide kernel for two 3x3 kernels)."""
    kp, kw = p.shape[-1], w.shape[-1]
    k = torch.zeros(p.shape[0], w.shape[1], kp + kw - 1, kp + kw - 1, dtype=p.dtype)
    for u in range(kp):
        for v in range(kp):
            for s in range(kw):
                for t in range(kw):
                    k[:, :, u + s, v + t] += p[:, :, u, v] @ w[:, :, s, t]
    return k


def test_seed_einsums_are_not_the_composition():
    target = _branch(P3)
    for eq in ("abcd,befg->aefg", "abcd,befg->aecd"):
        merged = torch.einsum(eq, P3, W)
        out = F.conv2d(X, merged, padding=1)
        # wrong everywhere, not only at the border
        assert (out - target)[..., 2:-2, 2:-2].abs().max() > 1.0, eq


def test_composed_5x5_kernel_is_exact_inside_and_wrong_on_the_border():
    target = _branch(P3)
    out = F.conv2d(X, _composed(P3, W), padding=2)
    inner = (out - target)[..., 1:-1, 1:-1]
    assert inner.abs().max() < 1e-10
    # On the one-pixel border P reads W's output beyond the image as zeros (its padding);
    # the 5x5 kernel reads W applied to zero-padded input there instead: not the same.
    border = (out - target).abs()
    border[..., 1:-1, 1:-1] = 0
    assert border.max() > 1e-3


def test_a_1x1_branch_merges_exactly_everywhere_as_the_first_einsum():
    p1 = torch.randn(4, 6, 1, 1, dtype=torch.float64)
    merged = torch.einsum("abcd,befg->aefg", p1, W)  # sums P's single tap: exact for 1x1
    assert (F.conv2d(X, merged, padding=1) - _branch(p1)).abs().max() < 1e-10
    assert torch.allclose(merged, _composed(p1, W))
