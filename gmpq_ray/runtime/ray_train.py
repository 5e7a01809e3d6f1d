"""Small pieces of glue to Ray Train V2 (2.60) that the finetune job and sharded trials share."""

from __future__ import annotations

import logging


def quiet_ray_train_reports() -> None:
    """Silence Ray Train's INFO line for every ``ray.train.report`` on this worker.

    Ray 2.60 names that logger after its source file, outside ``ray.train``, so
    ``ray.train.LoggingConfig`` does not reach it.
    """
    from ray.train.v2._internal.execution import context as train_context

    logging.getLogger(train_context.__file__).setLevel(logging.WARNING)
