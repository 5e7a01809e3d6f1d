"""The dataset-transfer ablation's outputs: the appendix's Table 1 (Markdown) and Figure 1 (PNG)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from gmpq_ray.core.policy import Policy  # noqa: E402
from gmpq_ray.report.figures import save_figure  # noqa: E402

FULL_PRECISION = "full precision"


def _bops(value: float) -> str:
    return "-" if pd.isna(value) else (f"{value:.1f}" if value >= 10 else f"{value:.4g}")


def _top1(value: float) -> str:
    return "-" if pd.isna(value) else f"{100 * value:.1f}"


def transfer_markdown(table: pd.DataFrame, title: str, notes: list[str] = ()) -> str:
    """Table 1 of the appendix from ``transfer.csv``'s rows: one line an architecture, the FP
    top-1 and BOPs, then the top-1 (%) and BOPs (G) of the policy searched on each data set.
    With a ``split`` column (the split the top-1 is on), the top-1 headers name it, e.g. "top-1 (test)"."""
    datasets = [d for d in dict.fromkeys(table.search_dataset) if d != FULL_PRECISION]
    splits = sorted({s for s in table.split if isinstance(s, str) and s}) if "split" in table else []
    top1 = f"top-1 ({' / '.join(splits)})" if splits else "top-1"
    header = ["Architecture", f"Full-precision {top1}", "BOPs (G)"]
    for dataset in datasets:
        header += [f"{dataset} {top1}", "BOPs (G)"]
    lines = [f"# {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for architecture, rows in table.groupby("architecture", sort=False):
        by_dataset = rows.set_index("search_dataset")
        fp = by_dataset.loc[FULL_PRECISION]
        cells = [architecture, _top1(fp.top1), _bops(fp.bops_total_g)]
        for dataset in datasets:
            row = by_dataset.loc[dataset] if dataset in by_dataset.index else None
            cells += ["-", "-"] if row is None else [_top1(row.top1), _bops(row.bops_searched_g)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join([*lines, "", *notes]) + "\n"


def plot_transfer_bits(policies: Mapping[str, Policy], path: str | Path, title: str) -> Path:
    """Per-layer weight bits (top) and activation bits (bottom) of the policies one architecture
    got on each small data set: one bar series per data set, layers numbered in network order."""
    labels = list(policies)
    names = list(next(iter(policies.values())).layers)
    x = np.arange(len(names))
    width = 0.8 / max(len(labels), 1)
    colors = plt.get_cmap("tab10").colors
    fig, axes = plt.subplots(2, 1, figsize=(max(7.0, 0.5 * len(names) * max(1, len(labels) / 2) + 2), 6.4), sharex=True)
    top = max(max(max(b.w_bits, b.a_bits) for b in p.layers.values()) for p in policies.values())
    for ax, kind, heading in ((axes[0], "w_bits", "weights"), (axes[1], "a_bits", "activations")):
        for i, label in enumerate(labels):
            bits = [getattr(policies[label].layers[n], kind) for n in names]
            ax.bar(x + (i - (len(labels) - 1) / 2) * width, bits, width, label=label, color=colors[i % len(colors)])
        ax.set_ylabel(f"{heading}\nbitwidth")
        ax.set_ylim(0, top + 1.5)  # room for the legend above the tallest bar
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(loc="upper left", ncol=min(len(labels), 6), frameon=False, fontsize=8)
    axes[0].set_title(title)
    axes[1].set_xticks(x, [f"{i + 1}" for i in range(len(names))])
    axes[1].set_xlabel("searched layer (network order)")
    return save_figure(fig, path)
