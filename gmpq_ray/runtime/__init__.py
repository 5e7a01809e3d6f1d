"""What every Ray entry point shares: claiming a run folder, catching stop signals, joining Ray.

Imports no Ray at module level (:mod:`gmpq_ray.runtime.cluster` does, when used). Starting or
joining Ray is :func:`gmpq_ray.runtime.cluster.start_ray`, for every entry point. What core code
shares with the entry points lives in core: atomic writes in :mod:`gmpq_ray.core.atomic`,
reading a saved state with ``weights_only=True`` in
:func:`gmpq_ray.core.models.pretrained.load_torch_file`.
"""

from gmpq_ray.runtime.run_folder import (
    LOCK_FILE,
    MARKER_FILE,
    RunFolder,
    check_new_output,
    study_url,
)
from gmpq_ray.runtime.signals import Interrupted, StopSignals

__all__ = ["LOCK_FILE", "MARKER_FILE", "Interrupted", "RunFolder", "StopSignals", "check_new_output", "study_url"]
