"""A spec's search space as an Optuna define-by-run function, and its sampler.

When a study chooses between chains, ``pipeline`` is sampled first and only
the chosen chain's parameters are sampled after it (conditional parameters).
Fixed values come back as constants, so every trial's config holds them.
"""

from __future__ import annotations

import warnings

import optuna

from studies.spec import PIPELINE, StudySpec

_SAMPLERS = {
    "tpe": optuna.samplers.TPESampler,
    "nsga2": optuna.samplers.NSGAIISampler,
    "gp": optuna.samplers.GPSampler,
    "random": optuna.samplers.RandomSampler,
}


def sampler_class(name: str) -> type[optuna.samplers.BaseSampler]:
    if name not in _SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; allowed: {', '.join(_SAMPLERS)}")
    return _SAMPLERS[name]


def make_sampler(spec: StudySpec) -> optuna.samplers.BaseSampler:
    """The spec's sampler, seeded, with defaults scaled to the trial budget.

    Optuna's defaults assume hundreds of trials (TPE explores randomly for 10,
    NSGA-II breeds populations of 50); a 12-trial study would never leave its
    random start, so both scale with ``trials`` unless the spec sets them.
    """
    options = dict(spec.sampler_options)
    if spec.sampler == "tpe":
        options.setdefault("n_startup_trials", max(3, min(10, spec.trials // 4)))
        options.setdefault("multivariate", True)
        options.setdefault("group", len(spec.chains) > 1)
    elif spec.sampler == "nsga2":
        options.setdefault("population_size", max(4, min(50, spec.trials // 3)))
    elif spec.sampler == "gp":
        options.setdefault("n_startup_trials", max(3, min(10, spec.trials // 4)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return sampler_class(spec.sampler)(seed=spec.sampler_seed, **options)


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
