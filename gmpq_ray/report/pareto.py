"""The accuracy-BOPs figure of a comparison, with its Pareto front."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from gmpq_ray.report.figures import save_figure  # noqa: E402


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The (BOPs, accuracy) points no other point beats on both: fewer BOPs and higher accuracy."""
    front, best = [], float("-inf")
    for bops, accuracy in sorted(points, key=lambda p: (p[0], -p[1])):
        if accuracy > best:
            front.append((bops, accuracy))
            best = accuracy
    return front


# One colour per row kind of a comparison (seaborn's "deep" palette); the search trials of a
# method take its colour too. Kinds not listed (a new plug-in method) are gray.
METHOD_COLORS = {
    "differentiable": "#4C72B0",
    "differentiable + fill": "#64B5CD",
    "sampling": "#DD8452",
    "proxy": "#937860",
    "uniform": "#55A868",
    "random feasible": "#8172B2",
}


def method_color(method: str) -> str:
    """The colour of a comparison row (``random-N`` rows share the random baselines' colour)."""
    return METHOD_COLORS.get("random feasible" if method.startswith("random-") else method, "gray")


def plot_pareto(table: pd.DataFrame, trials: dict[str, pd.DataFrame], bops_limit_g: float, path: str | Path) -> Path:
    """Accuracy against BOPs: every evaluated policy (mean ± std over seeds), the search
    trials' own (search-time) accuracy faintly, the limit, and the evaluated Pareto front."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for method, frame in trials.items():
        done = frame.dropna(subset=["policy_bops_g", "policy_accuracy"])
        ax.scatter(done.policy_bops_g, 100 * done.policy_accuracy, s=14, alpha=0.3, color=method_color(method),
                   label=f"{method} search trials (search-time accuracy)")
    for row in table.itertuples():
        color = method_color(row.method)
        label = row.method if not row.method.startswith("random-") or row.method == "random-1" else None
        if row.method.startswith("random-"):
            label = "random feasible" if row.method == "random-1" else None
        ax.errorbar(row.bops_g, 100 * row.accuracy_mean, yerr=100 * row.accuracy_std, fmt="o", color=color,
                    capsize=3, markersize=7, label=label)
    front = pareto_front([(r.bops_g, 100 * r.accuracy_mean) for r in table.itertuples()])
    ax.plot([p[0] for p in front], [p[1] for p in front], "k--", linewidth=1, label="Pareto front (evaluated)")
    ax.axvline(bops_limit_g, color="red", linewidth=1, alpha=0.6, label="BOPs limit")
    ax.set_xlabel("BOPs of the searched layers (G)")
    ax.set_ylabel("top-1 accuracy after QAT (%)")
    ax.set_title("accuracy against BOPs")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    return save_figure(fig, path)
