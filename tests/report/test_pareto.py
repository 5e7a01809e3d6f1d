"""The comparison figure: its Pareto front and one colour per kind of row."""

from __future__ import annotations

import pandas as pd
from PIL import Image

from gmpq_ray.report.pareto import method_color, pareto_front, plot_pareto
from gmpq_ray.search.methods import METHODS


def test_pareto_front_keeps_the_points_nothing_beats_on_both_axes():
    points = [(0.03, 98.0), (0.026, 98.8), (0.032, 99.2), (0.031, 98.5), (0.033, 99.2)]
    assert pareto_front(points) == [(0.026, 98.8), (0.032, 99.2)]


def test_every_kind_of_row_has_its_own_colour():
    """The figure once drew "differentiable + fill", "proxy" and the random baselines in one purple."""
    kinds = [*METHODS, "differentiable + fill", "uniform", "random-1"]
    colours = [method_color(kind) for kind in kinds]
    assert len(set(colours)) == len(kinds) and "gray" not in colours
    assert method_color("random-1") == method_color("random-3")


def test_plot_pareto_writes_a_png(tmp_path):
    table = pd.DataFrame({"method": ["differentiable", "uniform", "random-1"], "bops_g": [0.031, 0.026, 0.032],
                          "accuracy_mean": [0.987, 0.988, 0.986], "accuracy_std": [0.005, 0.003, 0.007]})
    trials = {"differentiable": pd.DataFrame({"policy_bops_g": [0.031, 0.030], "policy_accuracy": [0.98, 0.97]})}
    path = plot_pareto(table, trials, 0.033, tmp_path / "pareto.png")
    assert Image.open(path).size[0] > 300
