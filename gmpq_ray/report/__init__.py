"""gmpq_ray.report: tables and figures of search results."""
