"""gmpq_ray.search: search trials on Ray Tune, driven by Optuna (the API function is
:func:`gmpq_ray.api.search`)."""
