"""Figures of one method's own record: network slimming's sparsity training and BN scale
factors, parallel-branch pruning's alpha schedule, and RePr against plain training."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib import colors as mcolors
from matplotlib import ticker
from matplotlib.cm import ScalarMappable
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from analysis._format import MAX_CURVES, Percent, finished_trials, spread, style
from analysis.results import Study

__all__ = ["AlphaCurves", "GammaData", "ReprData", "SparsityCurves", "alpha_data",
           "draw_alpha", "draw_gammas", "draw_repr", "draw_sparsity", "gamma_data",
           "repr_data", "sparsity_data"]


# --------------------------------------------------------------------------- training curves


class SparsityCurves(NamedTuple):
    """Network slimming's sparsity phase: sparsity and accuracy per epoch, per lambda."""

    curves: pd.DataFrame  # study, trial_id, lambda, epoch, sparsity, val_accuracy, train_accuracy


def _with_params(s: Study, cols: list[str]) -> pd.DataFrame:
    have = [c for c in cols if c in s.trials]
    return s.history.merge(s.trials[["trial_id", "status", *have]], on="trial_id", how="inner")


def _sparsity_stages(s: Study) -> list[str]:
    """The stages of a study's trials that trained for sparsity (slimming, under whatever
    stage name the chain gives it), in the order their epochs were recorded."""
    h = s.history
    if "sparsity" not in h or "stage" not in h or "phase" not in h:
        return []
    return list(h.loc[(h["phase"] == "sparsity") & h["sparsity"].notna(), "stage"].dropna()
                .unique())


def sparsity_data(studies: list[Study]) -> SparsityCurves | None:
    """Sparsity-phase curves of up to ``MAX_CURVES`` trials spread over their stage's λ
    (``<stage>.lambda``), running trials included; None when no trial has reported sparsity
    training."""
    frames = []
    for s in studies:
        for stage in _sparsity_stages(s):
            param = f"{stage}.lambda"
            if param not in s.trials:
                continue
            h = _with_params(s, [param])
            h = h[(h["stage"] == stage) & (h["phase"] == "sparsity") & h["sparsity"].notna()
                  & h[param].notna()]
            if len(h):
                frames.append(h.assign(study=s.label).rename(columns={param: "lambda"}))
    if not frames:
        return None
    h = pd.concat(frames, ignore_index=True)
    per_trial = h.groupby(["study", "trial_id"], sort=False)["lambda"].first()
    keep = set(spread(per_trial.reset_index(drop=True), MAX_CURVES))
    chosen = per_trial.reset_index().loc[sorted(keep), ["study", "trial_id"]]
    h = h.merge(chosen, on=["study", "trial_id"])
    cols = ["study", "trial_id", "lambda", "epoch", "sparsity", "val_accuracy",
            "train_accuracy"]
    h = h.reindex(columns=cols)
    return SparsityCurves(h.sort_values(["lambda", "trial_id", "epoch"]).reset_index(drop=True))


def draw_sparsity(data: SparsityCurves) -> Figure:
    """Sparsity (left) and accuracy (right) per epoch, coloured by λ on a log scale."""
    with style():
        fig = Figure(figsize=(10.0, 3.9), layout="constrained")
        ax_s, ax_a = fig.subplots(1, 2, sharex=True)
        lam = data.curves["lambda"]
        norm = mcolors.LogNorm(lam.min(), lam.max()) if 0 < lam.min() < lam.max() else \
            mcolors.Normalize(lam.min() - 1e-12, lam.max() + 1e-12)
        cmap = sns.color_palette("flare", as_cmap=True)
        for (_, _t), d in data.curves.groupby(["study", "trial_id"], sort=False):
            c = cmap(norm(d["lambda"].iloc[0]))
            ax_s.plot(d["epoch"], d["sparsity"], color=c, lw=1.6, marker="o", ms=3)
            ax_a.plot(d["epoch"], d["val_accuracy"], color=c, lw=1.6, marker="o", ms=3)
            if d["train_accuracy"].notna().any():
                ax_a.plot(d["epoch"], d["train_accuracy"], color=c, lw=1.0, ls=":")
        ax_s.set_ylabel("sparsity (%)")
        ax_s.yaxis.set_major_formatter(Percent())
        ax_a.set_ylabel("accuracy (%)")
        ax_a.yaxis.set_major_formatter(Percent())
        for ax in (ax_s, ax_a):
            ax.set_xlabel("sparsity-training epoch")
            ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
        ax_a.legend(handles=[Line2D([], [], color="#555555", lw=1.6, label="validation"),
                             Line2D([], [], color="#555555", lw=1.0, ls=":", label="training")],
                    loc="lower left")
        fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=[ax_s, ax_a],
                     label="λ (L1 on BN scale factors)")
    return fig


class AlphaCurves(NamedTuple):
    """Parallel-branch pruning: the alpha schedule and the accuracy it leads to."""

    hue: str | None  # the schedule parameter, e.g. branch.alpha_schedule
    curves: pd.DataFrame  # study, trial_id, schedule, epoch, alpha, val_accuracy


def alpha_data(studies: list[Study]) -> AlphaCurves | None:
    """α per epoch and the validation accuracy it leads to, for a few trials of each
    schedule (about ``MAX_CURVES`` in all); None when no trial has reported α."""
    frames, hue = [], None
    for s in studies:
        if "alpha" not in s.history:
            continue
        sched = [p for p in s.trials.attrs.get("params", []) if "schedule" in p]
        hue = hue or (sched[0] if sched else None)
        h = _with_params(s, sched[:1])
        h = h[h["alpha"].notna()].copy()
        if not len(h):
            continue
        h["schedule"] = h[sched[0]].astype(str) if sched else "trial " + h["trial_id"]
        h["epoch"] = h.groupby("trial_id").cumcount() + 1
        frames.append(h.assign(study=s.label))
    if not frames:
        return None
    h = pd.concat(frames, ignore_index=True)
    trials = h.groupby(["study", "trial_id"], sort=False)["schedule"].first().reset_index()
    per_group = max(1, MAX_CURVES // max(1, trials["schedule"].nunique()))
    chosen = pd.concat([g.iloc[_pick(len(g), per_group)] for _, g in trials.groupby("schedule")])
    h = h.merge(chosen[["study", "trial_id"]], on=["study", "trial_id"])
    cols = ["study", "trial_id", "schedule", "epoch", "alpha", "val_accuracy"]
    return AlphaCurves(hue, h[cols].reset_index(drop=True))


def _pick(n: int, k: int) -> list[int]:
    return sorted({int(round(x)) for x in np.linspace(0, n - 1, min(n, k))}) if n else []


def draw_alpha(data: AlphaCurves) -> Figure:
    """α per epoch (left) and validation accuracy against falling α (right), per schedule."""
    with style():
        fig = Figure(figsize=(10.0, 3.9), layout="constrained")
        ax_s, ax_a = fig.subplots(1, 2)
        groups = list(dict.fromkeys(sorted(data.curves["schedule"])))
        colours = dict(zip(groups, sns.color_palette("colorblind", len(groups)), strict=True))
        for (_, _t, sched), d in data.curves.groupby(["study", "trial_id", "schedule"],
                                                      sort=False):
            ax_s.plot(d["epoch"], d["alpha"], color=colours[sched], lw=1.5, marker="o", ms=3,
                      alpha=0.85)
            ax_a.plot(d["alpha"], d["val_accuracy"], color=colours[sched], lw=1.5, marker="o",
                      ms=3, alpha=0.85)
        ax_s.set_xlabel("epoch of the alpha schedule")
        ax_s.set_ylabel("α (weight of the original path)")
        ax_s.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
        ax_a.set_xlim(1.02, -0.02)  # alpha falls from 1 to 0 as training goes on
        ax_a.set_xlabel("α (falling →)")
        ax_a.set_ylabel("validation accuracy (%)")
        ax_a.yaxis.set_major_formatter(Percent())
        ax_a.legend(handles=[Line2D([], [], color=c, lw=1.5, label=g)
                             for g, c in colours.items()], title=data.hue, loc="best")
    return fig


class ReprData(NamedTuple):
    """RePr against plain training of the same epoch budget."""

    pairs: pd.DataFrame  # study, trial_id, number, accuracy, plain_accuracy
    trial: str | None  # the trial whose curves are shown (best RePr accuracy)
    curves: pd.DataFrame  # run ("RePr" or "plain"), phase, epoch, val_accuracy


def repr_data(studies: list[Study], column: str = "repr.plain_accuracy") -> ReprData | None:
    """RePr's accuracy against its plain control per finished trial, and the curves of the
    most accurate one; None when no trial recorded a plain control."""
    ok = finished_trials(studies)
    if column not in ok:
        return None
    pairs = ok.loc[ok[column].notna(), ["study", "trial_id", "number", "accuracy", column]]
    pairs = pairs.rename(columns={column: "plain_accuracy"}).reset_index(drop=True)
    if not len(pairs):
        return None
    hist = pd.concat([s.history.assign(study=s.label) for s in studies], ignore_index=True)
    trial, curves = None, pd.DataFrame(columns=["run", "phase", "epoch", "val_accuracy"])
    stage = column.split(".", 1)[0]
    # Against the distinct ids: the history has a line per epoch.
    with_hist = pairs[pairs["trial_id"].isin(pd.unique(hist.get("trial_id", pd.Series())))]
    if len(with_hist):
        best = with_hist.loc[with_hist["accuracy"].idxmax()]
        trial = best["trial_id"]
        h = hist[(hist["trial_id"] == trial) & (hist["study"] == best["study"])]
        h = h[h["stage"] == stage] if "stage" in h and (h["stage"] == stage).any() else h
        h = h.assign(run=np.where(h["phase"] == "plain", "plain", "RePr"))
        h["epoch"] = h.groupby("run").cumcount() + 1
        curves = h[["run", "phase", "epoch", "val_accuracy"]].reset_index(drop=True)
    return ReprData(pairs, trial, curves)


def draw_repr(data: ReprData) -> Figure:
    """RePr against plain accuracy with the diagonal, and the best trial's two curves."""
    with style():
        panels = 2 if len(data.curves) else 1
        fig = Figure(figsize=(4.6 * panels + 0.8, 4.2), layout="constrained")
        axes = fig.subplots(1, panels, squeeze=False)[0]
        ax = axes[0]
        p = data.pairs
        ax.scatter(p["plain_accuracy"], p["accuracy"], s=30, color="#0173b2", alpha=0.8,
                   linewidths=0)
        lo = float(min(p["plain_accuracy"].min(), p["accuracy"].min()))
        hi = float(max(p["plain_accuracy"].max(), p["accuracy"].max()))
        pad = max(0.005, 0.08 * (hi - lo))
        ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="#888888", lw=1, ls="--")
        ax.set_xlim(lo - pad, hi + pad)
        ax.set_ylim(lo - pad, hi + pad)
        ax.set_aspect("equal")
        above = int((p["accuracy"] > p["plain_accuracy"]).sum())
        ax.text(0.03, 0.97, f"RePr better in {above} of {len(p)} trials\n(points above the "
                "diagonal)", transform=ax.transAxes, va="top", fontsize=9)
        ax.set_xlabel("plain training, test accuracy (%)")
        ax.set_ylabel("RePr, test accuracy (%)")
        for axis in (ax.xaxis, ax.yaxis):
            axis.set_major_formatter(Percent())
        if panels == 2:
            ax = axes[1]
            c = data.curves
            r = c[c["run"] == "RePr"]
            # Shade the S2 epochs, where the dropped filters are frozen at zero.
            for e in r.loc[r["phase"] == "s2", "epoch"]:
                ax.axvspan(e - 0.5, e + 0.5, color="#dddddd", lw=0, zorder=0)
            for run, colour in (("plain", "#555555"), ("RePr", "#0173b2")):
                d = c[c["run"] == run]
                ax.plot(d["epoch"], d["val_accuracy"], color=colour, lw=1.6, label=run)
            ax.set_xlabel("epoch")
            ax.set_ylabel("validation accuracy (%)")
            ax.yaxis.set_major_formatter(Percent())
            ax.set_title(f"best RePr trial ({data.trial})", fontsize=10, fontweight="normal")
            ax.legend(handles=[*ax.get_legend_handles_labels()[0],
                               Line2D([], [], color="#dddddd", lw=6, label="S2 (filters dropped)")],
                      loc="lower right")
    return fig


# --------------------------------------------------------------------------- BN scales


class GammaData(NamedTuple):
    """|gamma| of every BN channel after sparsity training, for a few lambdas."""

    trials: pd.DataFrame  # study, trial_id, number, lambda
    gammas: pd.DataFrame  # study, trial_id, gamma


def gamma_data(studies: list[Study], k: int = 4) -> GammaData | None:
    """|γ| of every BN channel for ``k`` finished trials spread over λ, of the first stage
    that recorded its scale factors (``<stage>.gammas``, λ from ``<stage>.lambda``); None
    when no trial recorded them."""
    ok = finished_trials(studies)
    for column in (c for c in ok.columns if str(c).endswith(".gammas")):
        have = ok[ok[column].apply(lambda g: isinstance(g, list) and len(g) > 0)]
        if len(have):
            break
    else:
        return None
    param = column.removesuffix(".gammas") + ".lambda"
    lam = have[param] if param in have else have["number"].astype(float)
    chosen = have.loc[spread(lam, k)]
    trials = pd.DataFrame({"study": chosen["study"], "trial_id": chosen["trial_id"],
                           "number": chosen["number"],
                           "lambda": chosen[param] if param in chosen else np.nan})
    trials = trials.sort_values("lambda", kind="stable").reset_index(drop=True)
    gammas = chosen[["study", "trial_id", column]].explode(column).rename(
        columns={column: "gamma"})
    gammas["gamma"] = pd.to_numeric(gammas["gamma"], errors="coerce").abs()
    gammas = gammas[np.isfinite(gammas["gamma"])]
    if not len(gammas):
        return None
    return GammaData(trials, gammas.reset_index(drop=True))


def draw_gammas(data: GammaData) -> Figure:
    """One |γ| histogram per trial on a shared log axis."""
    n = len(data.trials)
    with style():
        fig = Figure(figsize=(3.1 * n + 0.6, 3.4), layout="constrained")
        # Same x and y on every panel: each holds every BN channel of the model once.
        axes = fig.subplots(1, n, sharex=True, sharey=True, squeeze=False)[0]
        g = data.gammas["gamma"]
        floor = max(float(g[g > 0].min()) if (g > 0).any() else 1e-6, 1e-8)
        bins = np.geomspace(floor, max(float(g.max()), floor * 10), 40)
        for ax, (_, t) in zip(axes, data.trials.iterrows(), strict=True):
            v = data.gammas.loc[(data.gammas["trial_id"] == t["trial_id"]) &
                                (data.gammas["study"] == t["study"]), "gamma"].clip(lower=floor)
            ax.hist(v, bins=bins, color="#de8f05", edgecolor="white", linewidth=0.4)
            ax.set_xscale("log")
            lam = f"λ = {t['lambda']:.1e}" if pd.notna(t["lambda"]) else f"trial {t['number']}"
            ax.set_title(lam, fontsize=10)
            ax.set_xlabel("|γ| (log scale)")
        axes[0].set_ylabel("BN channels")
    return fig
