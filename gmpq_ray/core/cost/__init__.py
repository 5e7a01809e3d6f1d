"""Cost: BOPs of models, policies and supernets, the search space, and fitting a policy into a
BOPs limit (``repair``)."""
