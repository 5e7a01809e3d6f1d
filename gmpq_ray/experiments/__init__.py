"""gmpq_ray.experiments: studies built from searches (method comparison, dataset transfer)."""
