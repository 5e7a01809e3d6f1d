"""gmpq-ray: distributed search for generalizable mixed-precision quantization policies.

``import gmpq_ray`` stays light (no Ray, no Optuna), so :mod:`gmpq_ray.core` works where Ray is
not installed. The Python API is :mod:`gmpq_ray.api` (``api.search``, ``api.finetune``,
``api.compare``, ``api.ablate``, ``api.export``).
"""

from gmpq_ray._versions import require_supported_environment

require_supported_environment()

__version__ = "0.1.0"
__all__ = ["__version__"]
