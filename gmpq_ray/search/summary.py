"""The table a search prints when it ends."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from gmpq_ray.core.policy import Policy
from gmpq_ray.search.job import Job
from gmpq_ray.search.metrics import (
    BUDGET_BOPS_G,
    ERROR,
    FAILED,
    LOSS,
    PROPOSAL,
    PRUNED,
    SCORE,
    STOP_ARC,
    STOP_BOPS_LIMIT,
    STOPPED,
)

# trials.csv columns the printed table leaves out (too wide, or of interest only in the file).
HIDDEN_COLUMNS = (ERROR, LOSS, "ce", "attr_loss", SCORE, BUDGET_BOPS_G, PROPOSAL)


def provenance_note(policy: Policy) -> str:
    """'argmax', or 'repaired (2 steps down)', 'filled (1 step down, 3 up)'."""
    provenance = policy.provenance
    kind = provenance.get("kind", "unknown provenance")
    down, up = provenance.get("repair_steps", 0), provenance.get("fill_steps", 0)
    if not down and not up:
        return kind
    return f"{kind} ({down} step(s) down, {up} up)"


def summary(trials: pd.DataFrame, job: Job, policy: Policy, best_path: Path, seconds: float) -> str:
    """The table printed at the end of a search."""
    columns = [c for c in trials.columns if c not in HIDDEN_COLUMNS]
    table = trials[columns].to_string(index=False, float_format=lambda v: f"{v:.4g}")
    bits = ", ".join(f"{b.w_bits}/{b.a_bits}" for b in policy.layers.values())
    stopped = int((trials.status == STOPPED).sum())
    stopped_note = f"{stopped} stopped by the time budget, " if stopped else ""
    return (
        f"\n== {job.name} ({job.search.method}): {len(trials)} trial(s), {int((trials.status == PRUNED).sum())} pruned "
        f"({int((trials.stop_reason == STOP_BOPS_LIMIT).sum())} over the BOPs limit, {int((trials.stop_reason == STOP_ARC).sum())} for ARC), "
        f"{stopped_note}{int((trials.status == FAILED).sum())} errored, {seconds:.0f} s ==\n"
        f"{table}\n\n"
        f"best policy ({job.search.metric} {job.search.mode}): {policy.bops.get('searched_g', float('nan')):.4g} G BOPs "
        f"(limit {job.space.bops_limit / 1e9:.4g} G), {provenance_note(policy)}, w/a bits per layer: {bits}\n"
        f"best policy written to {best_path}\n"
    )
