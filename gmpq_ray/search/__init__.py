"""gmpq_ray.search: search trials on Ray Tune, driven by Optuna.

The package is callable: ``gmpq_ray.search(job, output)`` is
:func:`gmpq_ray.search.runner.run_search`, whether or not this package was imported first.
"""

from gmpq_ray._callable import make_callable

make_callable(__name__, "gmpq_ray.search.runner:run_search")
