"""Training-free policy search: zero-cost proxies per (layer, bits) and an exact knapsack solve.

Pure PyTorch, like the rest of :mod:`gmpq_ray.core`; the Ray fan-out of the scorings lives in
:mod:`gmpq_ray.search.proxy_search`.
"""

from gmpq_ray.core.proxy.probe import LayerProbe, calibrated_probe_model, probe_model
from gmpq_ray.core.proxy.scores import PROXIES, Proxy, get_proxy, score_layers
from gmpq_ray.core.proxy.solver import Allocation, monotone_damage, solve_allocation

__all__ = [
    "PROXIES", "Allocation", "LayerProbe", "Proxy", "calibrated_probe_model", "get_proxy", "monotone_damage",
    "probe_model", "score_layers", "solve_allocation",
]
