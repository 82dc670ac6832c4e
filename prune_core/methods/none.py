"""The base model, optionally trained further: the reference of every study.

With ``finetune_epochs`` above 0 it is the control a compression method should
beat: the same extra training, no compression.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

from prune_core.methods._registry import Param, register_method

if TYPE_CHECKING:
    from prune_core.methods._context import Context


@register_method(
    "none",
    doc="the base model, optionally fine-tuned further (reference and control)",
    params=[
        Param(name="finetune_epochs", kind="int", default=0, low=0, high=1000,
              doc="extra training epochs on the base model (0: unchanged)",
              search={"low": 0, "high": 10}),
        Param(name="lr", kind="float", default=0.01, low=0, low_open=True, high=10,
              doc="learning rate of the extra training", search={"low": 1e-3, "high": 0.1,
                                                                  "log": True}),
    ],
)
def none(model: nn.Module, params: dict, ctx: Context) -> nn.Module:
    """The base model, trained ``finetune_epochs`` more."""
    if params["finetune_epochs"] > 0:
        ctx.fit(model, params["finetune_epochs"], lr=params["lr"], phase="finetune")
    return model
