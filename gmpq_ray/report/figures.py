"""Figures: per-layer bitwidths of a policy, as in the GMPQ appendix's Figures 1 and 2."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from gmpq_ray.core.atomic import write_atomic  # noqa: E402
from gmpq_ray.core.policy import Policy  # noqa: E402


def save_figure(fig, path: str | Path) -> Path:
    """Write ``fig`` as a PNG atomically (temporary file, then rename) and close it."""
    fig.tight_layout()
    try:
        return write_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    finally:
        plt.close(fig)


def plot_policy(policy: Policy, path: str | Path, title: str | None = None) -> Path:
    """Draw weight and activation bits per searched layer (two bars a layer) into a PNG.

    Layers are numbered in network order like the appendix (Layer 1 is the first searched conv);
    the x labels give their names too.
    """
    names = list(policy.layers)
    w_bits = np.array([policy.layers[n].w_bits for n in names])
    a_bits = np.array([policy.layers[n].a_bits for n in names])
    x = np.arange(len(names))
    width = 0.4
    fig, ax = plt.subplots(figsize=(max(6.0, 0.45 * len(names) + 2), 4.2))
    ax.bar(x - width / 2, w_bits, width, label="weights", color="#4C72B0")
    ax.bar(x + width / 2, a_bits, width, label="activations", color="#DD8452")
    ax.set_xticks(x, [f"{i + 1}: {n}" for i, n in enumerate(names)], rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("bitwidth")
    top = int(max(w_bits.max(), a_bits.max()))
    ax.set_yticks(sorted(set(w_bits) | set(a_bits) | {0}))
    ax.set_ylim(0, top + 1.5)  # room for the legend above the tallest bar
    bops = policy.bops.get("searched_g")
    heading = title or f"{policy.model} policy"
    if bops is not None:
        heading += f" ({bops:.4g} G BOPs searched layers)"
    ax.set_title(heading)
    ax.legend(loc="upper left", ncol=2, frameon=False)
    ax.grid(axis="y", alpha=0.3)
    return save_figure(fig, path)
