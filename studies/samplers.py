"""The Optuna samplers a spec may name, built from a spec, and their constraints.

One table serves validation (which names and options exist) and the study (the
sampler itself), so the two cannot disagree.
"""

from __future__ import annotations

import threading
import warnings
from typing import TYPE_CHECKING

import optuna

__all__ = ["AUTO", "CONSTRAINED", "GP_MAX_OBJECTIVES", "GP_MAX_TRIALS", "GRID", "PicklableLock",
           "MAX_SEARCHED", "Switching", "auto_choice", "grid_values", "make_sampler", "picklable",
           "constraints_text", "sampler_class", "sampler_text", "SAMPLERS"]

if TYPE_CHECKING:
    from studies.spec import StudySpec

SAMPLERS: dict[str, type[optuna.samplers.BaseSampler]] = {
    "tpe": optuna.samplers.TPESampler,
    "nsga2": optuna.samplers.NSGAIISampler,
    "gp": optuna.samplers.GPSampler,
    "random": optuna.samplers.RandomSampler,
}
# Samplers that steer away from trials whose told constraint values are positive (Optuna's
# ``constraints_func``); random and grid draw as they would without constraints.
CONSTRAINED = ("tpe", "nsga2", "gp")
# ``sampler: auto`` picks one of the above from the spec (``auto_choice``).
AUTO = "auto"
# ``sampler: grid`` runs every combination of the space's listed values once (an ablation):
# Optuna's GridSampler, its grid built from the spec (``grid_space``).
GRID = "grid"
# GP's acquisition over several objectives is a hypervolume improvement, whose cost grows
# steeply with their number; past this many, TPE.
GP_MAX_OBJECTIVES = 3
# GP refits its model on every finished trial (cubic in their number); past this many
# trials the study goes on with NSGA-II.
GP_MAX_TRIALS = 300
# The most searched parameters each sampler takes (per_stage and per_group allocation
# generate one per stage or group). GP fits a length scale per parameter from the trials
# and optimises its acquisition over all of them, which neither the fit nor the optimiser
# does well past a few dozen; TPE and NSGA-II model or mutate each parameter on its own,
# and past this many a study of a few hundred trials learns little more than random.
MAX_SEARCHED = {"gp": 32, "tpe": 128, "nsga2": 128, "random": 4096, "grid": 4096}
MAX_SEARCHED["auto"] = MAX_SEARCHED["tpe"]  # auto picks TPE past GP's limit


def sampler_class(name: str) -> type[optuna.samplers.BaseSampler]:
    """The Optuna sampler class of a spec's sampler name."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; allowed: {', '.join(SAMPLERS)}, {AUTO}, "
                         f"{GRID}")
    return SAMPLERS[name]


def auto_choice(spec: StudySpec) -> tuple[str, str]:
    """What ``sampler: auto`` runs for this spec, and why.

    TPE where GP does poorly: a conditional space (a choice between chains, whose
    parameters exist only in some trials), categorical parameters, more than
    ``GP_MAX_OBJECTIVES`` objectives, or more searched parameters than GP takes.
    Otherwise GP, which models the objectives over a continuous space and needs the
    fewest trials there; ``gp+nsga2`` where the budget
    passes ``GP_MAX_TRIALS``: GP for those, NSGA-II after.
    """
    searched = {k: p for k, p in spec.space.items() if p.kind != "fixed"}
    categorical = sorted(k for k, p in searched.items() if p.kind == "categorical")
    if len(spec.chains) > 1:
        return "tpe", "the space is conditional (a choice between chains)"
    if categorical:
        return "tpe", f"categorical parameters ({', '.join(categorical)})"
    if len(spec.objectives) > GP_MAX_OBJECTIVES:
        return "tpe", (f"{len(spec.objectives)} objectives, more than GP's "
                       f"{GP_MAX_OBJECTIVES}")
    if len(searched) > MAX_SEARCHED["gp"]:
        return "tpe", (f"{len(searched)} searched parameters, more than GP's "
                       f"{MAX_SEARCHED['gp']}")
    if spec.trials > GP_MAX_TRIALS:
        return "gp+nsga2", (f"a continuous space; {spec.trials} trials, GP for the first "
                            f"{GP_MAX_TRIALS} and NSGA-II after")
    return "gp", "a continuous space"


def grid_values(space: dict) -> dict[str, list]:
    """The grid of ``sampler: grid`` over a spec's space: each searched parameter's
    choices (ranges are refused at validate)."""
    return {k: list(p.choices) for k, p in space.items() if p.kind == "categorical"}


def sampler_text(spec: StudySpec) -> str:
    """The spec's sampler by name; for ``auto``, what it picked and why."""
    return spec.sampler if spec.sampler != AUTO else "auto ({}: {})".format(*auto_choice(spec))


def constraints_text(spec: StudySpec) -> str | None:
    """The spec's constraints and what applies them: the sampler steers by them where it
    can (``CONSTRAINED``); the front, the report and ``export`` always count only the
    trials within them."""
    if not spec.constraints:
        return None
    from analysis.constraints import Bounds

    bounds = Bounds(spec.constraints)
    name = auto_choice(spec)[0] if spec.sampler == AUTO else spec.sampler
    steer = all(part in CONSTRAINED for part in name.split("+"))
    how = f"the {name} sampler steers toward them" if steer else \
        f"the {name} sampler does not steer by them"
    return f"{', '.join(bounds.texts())} ({how}; the front counts only trials within them)"


class Switching(optuna.samplers.BaseSampler):
    """``first`` for trials numbered below ``after``, ``second`` from then on: each trial
    is sampled by one of them throughout, and both read the whole study's history."""

    def __init__(self, first: optuna.samplers.BaseSampler,
                 second: optuna.samplers.BaseSampler, after: int):
        self.first, self.second, self.after = first, second, after

    def _for(self, trial) -> optuna.samplers.BaseSampler:
        return self.first if trial.number < self.after else self.second

    def infer_relative_search_space(self, study, trial):
        return self._for(trial).infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space):
        return self._for(trial).sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self._for(trial).sample_independent(study, trial, param_name,
                                                   param_distribution)

    def before_trial(self, study, trial):
        self._for(trial).before_trial(study, trial)

    def after_trial(self, study, trial, state, values):
        self._for(trial).after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self.first.reseed_rng()
        self.second.reseed_rng()


_LOCK_TYPES = (type(threading.Lock()), type(threading.RLock()))


class PicklableLock:
    """A lock that pickles as a new, released lock of its kind.

    Ray Tune pickles the searcher, and with it the sampler, when a study starts and at every
    experiment checkpoint. A lock guards a sampler's caches within one process and has
    nothing to carry over, so its copy starts released."""

    def __init__(self, reentrant: bool = False):
        self.reentrant = reentrant
        self._lock = threading.RLock() if reentrant else threading.Lock()

    def __getstate__(self) -> dict:
        return {"reentrant": self.reentrant}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["reentrant"])

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        return self._lock.acquire(blocking, timeout)

    def release(self) -> None:
        self._lock.release()

    def __enter__(self) -> bool:
        return self._lock.acquire()

    def __exit__(self, *exc) -> None:
        self._lock.release()


def picklable(sampler: optuna.samplers.BaseSampler) -> optuna.samplers.BaseSampler:
    """The sampler with every lock it holds, and its inner samplers hold, made picklable.

    Optuna 5.1's genetic-algorithm samplers (NSGA-II, NSGA-III) keep a ``threading.Lock``,
    which would make Tune fail at the start of a study with "cannot pickle
    '_thread.lock' object". The sampler's class stays Optuna's own: the generation keys the
    GA samplers store in the study are named after it."""
    seen: set[int] = set()

    def visit(obj) -> None:
        if id(obj) in seen or not hasattr(obj, "__dict__"):
            return
        seen.add(id(obj))
        for name, value in vars(obj).items():
            if isinstance(value, _LOCK_TYPES):
                setattr(obj, name, PicklableLock(isinstance(value, _LOCK_TYPES[1])))
            elif isinstance(value, optuna.samplers.BaseSampler):
                visit(value)

    visit(sampler)
    return sampler


def make_sampler(spec: StudySpec) -> optuna.samplers.BaseSampler:
    """The spec's sampler, seeded, with defaults scaled to the trial budget.

    Optuna's defaults assume hundreds of trials (TPE explores randomly for 10,
    NSGA-II breeds populations of 50); a 12-trial study would never leave its
    random start, so both scale with ``trials`` unless the spec sets them.
    """
    name = spec.sampler
    if name == GRID:
        return optuna.samplers.GridSampler(grid_values(spec.space), seed=spec.sampler_seed)
    if name == AUTO:
        name, _ = auto_choice(spec)
        if name == "gp+nsga2":
            return Switching(_sampler(spec, "gp", {}),
                             _sampler(spec, "nsga2", {}, trials=spec.trials - GP_MAX_TRIALS),
                             GP_MAX_TRIALS)
        return _sampler(spec, name, {})
    return _sampler(spec, name, spec.sampler_options)


def _sampler(spec: StudySpec, name: str, options: dict,
             trials: int | None = None) -> optuna.samplers.BaseSampler:
    options, trials = dict(options), trials or spec.trials
    if name == "tpe":
        options.setdefault("n_startup_trials", max(3, min(10, trials // 4)))
        options.setdefault("multivariate", True)
        options.setdefault("group", len(spec.chains) > 1)
    elif name == "nsga2":
        options.setdefault("population_size", max(4, min(50, trials // 3)))
    elif name == "gp":
        options.setdefault("n_startup_trials", max(3, min(10, trials // 4)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return picklable(sampler_class(name)(seed=spec.sampler_seed, **options))
