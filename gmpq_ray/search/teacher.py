"""The FP teacher of a search: loaded from ``teacher.state_dict``, trained, saved as ``teacher.pt``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from gmpq_ray.core.errors import UserInputError
from gmpq_ray.core.models.pretrained import is_weights_name, load_matching, load_torch_file, read_state_dict
from gmpq_ray.core.models.registry import create_model
from gmpq_ray.core.train.loop import train_classifier
from gmpq_ray.search.job import Job
from gmpq_ray.search.trial_setup import trial_device

TEACHER_FILE = "teacher.pt"


def load_teacher_state(job: Job, num_classes: int, in_channels: int) -> tuple[dict[str, torch.Tensor] | None, bool]:
    """The teacher's state dict from ``teacher.state_dict`` (or None), and whether it still needs training.

    A file must match the model and is the teacher as it is. Pretrained weights by name
    (``torchvision:...``, ``timm:...``) load where names and shapes fit; a layer they do not
    fit (the classifier of another number of classes, a CIFAR stem) starts fresh, and then the
    teacher trains ``teacher.epochs`` epochs from those weights.
    """
    if job.teacher.state_dict is None:
        return None, False
    path = job.teacher.state_dict
    state = read_state_dict(path, "teacher.state_dict")
    model = create_model(job.space.model, num_classes, in_channels, job.space.cifar_stem)
    if is_weights_name(path):
        fresh = load_matching(model, state)
        if len(fresh) == len(model.state_dict()):
            raise UserInputError(f"teacher.state_dict {path}: none of its weights fit {job.space.model}")
        if fresh and job.teacher.epochs < 1:
            raise UserInputError(f"teacher.state_dict {path}: {', '.join(fresh[:4])}{' ...' if len(fresh) > 4 else ''} do not fit "
                                 f"{job.space.model} on this data; set teacher.epochs >= 1 to train the teacher from these weights")
        return model.state_dict(), bool(fresh)
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as err:
        raise UserInputError(f"teacher.state_dict {path}: does not match {job.space.model} ({str(err).splitlines()[0]})") from None
    return model.state_dict(), False


def load_saved_teacher(out: Path) -> dict[str, torch.Tensor] | None:
    """The ``teacher.pt`` a run folder kept (None if it has none), for ``--resume``."""
    if not (out / TEACHER_FILE).is_file():
        return None
    return load_torch_file(out / TEACHER_FILE, lambda err: f"--resume {out}: {TEACHER_FILE} is not loadable ({type(err).__name__})")


def train_teacher(job: Job, progress: bool, log: Callable[[str], None],
                  initial_state: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Train the FP teacher on the job's small data set (from ``initial_state`` if given); returns its state dict on the CPU."""
    space = job.space
    data = job.data.load()
    # Seeded before the model is built: its initial weights are part of what the seed fixes.
    torch.manual_seed(job.search.seed)
    teacher = create_model(space.model, data.num_classes, data.in_channels, space.cifar_stem)
    if initial_state is not None:
        teacher.load_state_dict(initial_state)
    train_loader, val_loader = data.loaders(job.data.batch_size, seed=job.search.seed)
    torch.manual_seed(job.search.seed)
    train_classifier(teacher, train_loader, val_loader, job.teacher.epochs, job.teacher.lr,
                     job.teacher.weight_decay, trial_device(job), progress=progress, log=log)
    return {k: v.cpu() for k, v in teacher.state_dict().items()}
