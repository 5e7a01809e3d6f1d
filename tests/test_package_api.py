"""``gmpq_ray.search(...)`` and ``gmpq_ray.finetune(...)`` are the package's entry points, callable
whether or not the subpackage or module of the same name has been imported."""

from __future__ import annotations

import subprocess
import sys

import pytest

import gmpq_ray
import gmpq_ray.finetune
import gmpq_ray.search.runner  # binds the subpackage gmpq_ray.search on the package
from gmpq_ray.core.errors import UserInputError


def test_entry_points_stay_callable_after_their_modules_are_imported(tmp_path):
    with pytest.raises(UserInputError, match="file not found"):
        gmpq_ray.search(tmp_path / "missing.yaml", tmp_path / "out")
    with pytest.raises(UserInputError):
        gmpq_ray.finetune(tmp_path / "missing.json", tmp_path / "missing.yaml", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_importing_the_package_loads_neither_ray_nor_optuna():
    code = "import sys, gmpq_ray; print('ray' in sys.modules, 'optuna' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
