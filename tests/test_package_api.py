"""The Python API (:mod:`gmpq_ray.api`): one plain function per command, and a light package."""

from __future__ import annotations

import inspect
import subprocess
import sys

import pytest

from gmpq_ray import api
from gmpq_ray.core.errors import UserInputError

COMMANDS = ("ablate", "compare", "export", "finetune", "search")


def test_every_command_has_a_documented_api_function():
    assert sorted(api.__all__) == sorted(COMMANDS)
    for name in COMMANDS:
        function = getattr(api, name)
        assert inspect.isfunction(function), name
        assert function.__doc__ and ("Example" in function.__doc__ or "Args" in function.__doc__), name


def test_api_functions_refuse_missing_inputs_before_writing(tmp_path):
    with pytest.raises(UserInputError, match="file not found"):
        api.search(tmp_path / "missing.yaml", tmp_path / "out")
    with pytest.raises(UserInputError):
        api.finetune(tmp_path / "missing.json", tmp_path / "missing.yaml", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_importing_the_package_loads_neither_ray_nor_optuna():
    code = "import sys, gmpq_ray; print('ray' in sys.modules, 'optuna' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
