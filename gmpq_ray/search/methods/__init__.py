"""Search methods as plug-ins: one module a method behind :class:`SearchMethod`, in a registry
keyed by ``search.method`` (as Optuna keeps one sampler per module behind ``BaseSampler``).

Importing this package imports no Ray, Optuna or torch (``search/job.py`` reads its names).

Example::

    from gmpq_ray.search.methods import METHODS, get_method

    sorted(METHODS)                       # ['differentiable', 'proxy', 'sampling']
    get_method("sampling").trainable(job)
"""

from __future__ import annotations

from gmpq_ray.search.methods.base import SearchMethod, Trainable, proposal_row
from gmpq_ray.search.methods.differentiable import DifferentiableMethod
from gmpq_ray.search.methods.proxy import ProxyMethod
from gmpq_ray.search.methods.sampling import SamplingMethod

#: Every search method, keyed by its ``search.method`` name, in the order of the docs and tables.
METHODS: dict[str, SearchMethod] = {method.name: method for method in (DifferentiableMethod(), SamplingMethod(), ProxyMethod())}
METHOD_NAMES: tuple[str, ...] = tuple(METHODS)


def get_method(name: str) -> SearchMethod:
    """The registered method called ``name``; a :class:`ValueError` lists the choices otherwise."""
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown search method {name!r}; choose from {list(METHODS)}") from None


__all__ = ["METHODS", "METHOD_NAMES", "DifferentiableMethod", "ProxyMethod", "SamplingMethod", "SearchMethod",
           "Trainable", "get_method", "proposal_row"]
