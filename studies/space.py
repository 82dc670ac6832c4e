"""A spec's search space as an Optuna define-by-run function, and its sampler.

When a study chooses between chains, ``pipeline`` is sampled first and only
the chosen chain's parameters are sampled after it (conditional parameters).
Fixed values come back as constants, so every trial's config holds them.
"""

from __future__ import annotations

import optuna

from studies.samplers import make_sampler, sampler_class  # noqa: F401 (re-exported)
from studies.spec import PIPELINE, StudySpec

__all__ = ["sample_params", "SearchSpace"]


class SearchSpace:
    """``space(trial) -> constants``: suggests every searched parameter of a trial.

    A class rather than a closure so Ray Tune can pickle it with the searcher.
    """

    def __init__(self, spec: StudySpec):
        self.chains = spec.chain_names
        self.stages = {name: spec.stages_of(i) for i, name in enumerate(self.chains)}
        self.space = dict(spec.space)

    def __call__(self, trial: optuna.Trial) -> dict:
        if len(self.chains) > 1:
            chain = trial.suggest_categorical(PIPELINE, self.chains)
        else:
            chain = self.chains[0]
        stages = set(self.stages[chain])
        constants = {}
        for name, p in self.space.items():
            if p.stage not in stages:
                continue
            if p.kind == "fixed":
                constants[name] = p.value
            elif p.kind == "float":
                trial.suggest_float(name, p.low, p.high, log=p.log, step=p.step)
            elif p.kind == "int":
                trial.suggest_int(name, int(p.low), int(p.high), log=p.log,
                                  step=int(p.step or 1))
            else:
                trial.suggest_categorical(name, list(p.choices))
        return constants


def sample_params(spec: StudySpec, trial: optuna.Trial) -> dict:
    """Every parameter of one trial: sampled values, ``pipeline`` and fixed values."""
    constants = SearchSpace(spec)(trial)
    return {**trial.params, **constants}
