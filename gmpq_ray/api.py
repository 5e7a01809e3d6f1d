"""The Python API: one function per CLI command, each the function the command itself runs.

Example::

    from gmpq_ray import api

    result = api.search("jobs/quickstart.yaml", "runs/api", overwrite=True)
    run = api.finetune(result.best_policy_path, "jobs/finetune_digits.yaml", "runs/ft")

Importing this module loads Ray and Optuna; ``import gmpq_ray`` and :mod:`gmpq_ray.core` do not.
The functions live here under their command's name, not on the package, because the packages
``gmpq_ray.search``, ``gmpq_ray.finetune`` and ``gmpq_ray.export`` hold their implementations.
"""

from gmpq_ray.experiments.ablate import run_ablation as ablate
from gmpq_ray.experiments.compare import run_compare as compare
from gmpq_ray.export.api import export_run as export
from gmpq_ray.finetune.runner import finetune
from gmpq_ray.search.runner import run_search as search

__all__ = ["ablate", "compare", "export", "finetune", "search"]
