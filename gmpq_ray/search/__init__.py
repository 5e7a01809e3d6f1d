"""gmpq_ray.search: search trials on Ray Tune, driven by Optuna (the API function is
:func:`gmpq_ray.api.search`).

* ``job.py``: the job YAML, parsed into typed dataclasses (imports no Ray);
* ``methods/``: one module a search method behind :class:`~gmpq_ray.search.methods.SearchMethod`,
  in a registry keyed by ``search.method``; the methods' trainables are ``trial.py`` (and
  ``sharded.py``), ``sampling_trial.py`` and ``proxy_search.py``, which share ``trial_setup.py``;
* ``runner.py``: the driver, asking the method; ``teacher.py``, ``searcher.py``, ``tune_fit.py``,
  ``scheduler.py``, ``optuna_search.py``, ``results.py``, ``summary.py``, ``resume.py`` what it runs;
* ``metrics.py``: the names of the metrics and of the trials.csv columns.
"""
