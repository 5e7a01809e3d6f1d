"""Cost: the one owner of BOPs. Policies and models (``bops``: searched, floor and total BOPs, the
:class:`~gmpq_ray.core.cost.bops.PolicyBops` record), supernets (``expected``: expected and
argmax BOPs, differentiable), the search space (``searchspace``), and fitting a policy into a
BOPs limit (``repair``)."""
