"""A sensitivity scan as a heat map: channel groups down, the share of a group's channels
removed across, the validation accuracy lost (points, no fine-tuning) in each cell. Groups
whose row stays pale can lose much; a row that darkens early is where to prune least."""

from __future__ import annotations

import json

import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from analysis._format import style, to_png

__all__ = ["draw_sensitivity", "sensitivity_docs", "sensitivity_figure", "sensitivity_frame"]


def sensitivity_frame(doc: dict) -> pd.DataFrame:
    """Points of validation accuracy lost, groups (``root · stage · channels``) x ratio."""
    base = doc["base"]["val_accuracy"]
    names = {g["root"]: f"{g['root']} · {g['stage']} · {g['size']}" for g in doc["groups"]}
    rows = pd.DataFrame(doc["rows"])
    rows["lost"] = (base - rows["val_accuracy"]) * 100
    rows["group"] = rows["group"].map(names)
    table = rows.pivot(index="group", columns="ratio", values="lost")
    table = table.reindex([names[g["root"]] for g in doc["groups"]])
    table.columns = [f"{int(round(r * 100))} %" for r in table.columns]
    return table


def sensitivity_docs(study_dir) -> list[dict]:
    """The scans written into a study directory (``sensitivity-<method>.json``, by
    ``prune-study sensitivity`` or ``warm_start: sensitivity``); an unreadable one is
    left out."""
    docs = []
    for path in sorted(study_dir.glob("sensitivity-*.json")):
        try:
            doc = json.loads(path.read_text())
            sensitivity_frame(doc)
        except (OSError, ValueError, KeyError, TypeError):
            continue
        docs.append(doc)
    return docs


def draw_sensitivity(doc: dict) -> bytes:
    """The heat map of :func:`sensitivity_frame` as PNG bytes."""
    return to_png(sensitivity_figure(doc))


def sensitivity_figure(doc: dict) -> Figure:
    """The heat map of :func:`sensitivity_frame`."""
    table = sensitivity_frame(doc)
    with style():
        fig = Figure(figsize=(max(7.5, 4.5 + 0.62 * table.shape[1]), 1.8 + 0.34 * len(table)),
                     layout="constrained")
        ax = fig.subplots()
        sns.heatmap(table, ax=ax, cmap="rocket_r", vmin=0, annot=len(table) <= 40,
                    fmt=".0f", annot_kws={"fontsize": 8}, linewidths=0.5,
                    cbar_kws={"label": "validation accuracy lost (points)"})
        ax.set_xlabel("channels of the group removed")
        ax.set_ylabel("")
        ax.tick_params(axis="y", labelsize=8)
        ax.set_title(f"{doc['model']}: sensitivity to {doc['method']} "
                     f"(base {doc['base']['val_accuracy'] * 100:.1f} % validation accuracy)")
        return fig
