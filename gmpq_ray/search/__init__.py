"""gmpq_ray.search: search trials on Ray Tune, driven by Optuna."""
