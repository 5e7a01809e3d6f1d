"""What every Ray entry point shares: claiming a run folder, catching stop signals, joining Ray.

Imports no Ray at module level (:mod:`gmpq_ray.runtime.cluster` does, when used).
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
