"""What every search trial does before its own work: threads, device, seed, data, teacher.

One preamble for every method's trainable (:func:`prepare_trial`), the context every trial of a
search shares (:class:`TrialContext`), the files its checkpoints hold, and the choice of
quantizer kernels. Imports no Ray.

Example::

    def my_trial(config, context):
        setup = prepare_trial(context, tune.get_context().get_trial_id())
        train_loader, val_loader = setup.data.loaders(setup.job.data.batch_size, seed=setup.job.search.seed)
        ...  # setup.teacher, setup.device
"""

from __future__ import annotations

import random
import zlib
from dataclasses import dataclass

import numpy as np
import torch

from gmpq_ray.core.data.bundle import DataBundle
from gmpq_ray.core.models.registry import create_model
from gmpq_ray.core.quant.kernels_compiled import compile_requested_by_environment, compiler_available, use_compiled_kernels
from gmpq_ray.search.job import Job

# The files of a trial checkpoint: its training state, and the policy it derived (which the
# runner reads from the best trial's checkpoint).
STATE_FILE = "trial_state.pt"
POLICY_FILE = "policy.json"
# With fill_budget on, the derived policy before the fill (the argmax, repaired if over the limit).
UNFILLED_POLICY_FILE = "policy_unfilled.json"

# ``quantizer_kernels: auto`` compiles the quantizer kernels for a worker that trains on at
# least this many input pixels (images x epochs x height x width): the quantizers' work grows
# with the activations, hence with the pixels. Compiling costs 5 to 20 s per worker process on
# a 2-core CPU and saves about 0.25 s per ResNet18-CIFAR step of 32 images (1 M pixels, see
# README, Performance), so it pays off after a few M pixels of a real network; the threshold
# leaves room for small networks. A 25-epoch CIFAR-10 search trains on 1.3 G pixels, a 25-epoch
# Flowers-102 search at 224x224 on 1.3 G too; the digits quick starts on 2 M.
AUTO_COMPILE_MIN_PIXELS = 2**25
# ... and only when a time budget, if the job has one, leaves room for the compilation.
AUTO_COMPILE_MIN_BUDGET_S = 600.0


@dataclass
class TrialContext:
    """What every trial of a search shares: the job and the FP teacher's weights."""

    job: Job
    teacher_state: dict[str, torch.Tensor]


@dataclass
class TrialSetup:
    """What :func:`prepare_trial` made ready: the trial's device, seed, data and frozen FP teacher
    (on the CPU, in training mode: each trainable moves it and sets its mode as it needs)."""

    job: Job
    device: torch.device
    seed: int
    data: DataBundle
    teacher: torch.nn.Module


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def trial_device(job: Job) -> torch.device:
    return torch.device("cuda" if job.resources.gpus_per_trial > 0 and torch.cuda.is_available() else "cpu")


def trial_seed(job: Job, trial_id: str | None) -> int:
    """The search's seed, plus a stable per-trial offset where ``trial_id`` is given (str hashes
    change between processes; CRC-32 does not)."""
    return job.search.seed + (zlib.crc32(trial_id.encode()) if trial_id is not None else 0)


def prepare_trial(context: TrialContext, trial_id: str | None, threads: float | None = None,
                  device: torch.device | None = None) -> TrialSetup:
    """The preamble of every trial: torch threads, device, seeds, the data, the frozen teacher.

    Args:
        context: the search's job and teacher weights.
        trial_id: seeds the trial apart from the others (None: the search's seed as it is).
        threads: torch threads (default: ``resources.cpus_per_trial``; at least 1).
        device: where the trial runs (default: a GPU if the job asks for one and there is one).
    """
    job = context.job
    space = job.space
    torch.set_num_threads(max(1, int(job.resources.cpus_per_trial if threads is None else threads)))
    device = trial_device(job) if device is None else device
    seed = trial_seed(job, trial_id)
    seed_everything(seed)
    data = job.data.load()
    teacher = create_model(space.model, data.num_classes, data.in_channels, space.cifar_stem)
    teacher.load_state_dict(context.teacher_state)
    teacher.requires_grad_(False)
    return TrialSetup(job, device, seed, data, teacher)


def training_pixels(images_per_epoch: int, epochs: int, image_size: int) -> int:
    """Input pixels a worker trains on: what :data:`AUTO_COMPILE_MIN_PIXELS` is compared with."""
    return images_per_epoch * epochs * image_size * image_size


def choose_quantizer_kernels(job: Job, pixels: int, device: torch.device) -> bool:
    """Switch this worker's quantizers to compiled or eager kernels for a trial that trains on
    ``pixels`` input pixels (:func:`training_pixels`), as ``search.quantizer_kernels`` says;
    returns whether they are compiled.

    ``auto`` follows ``GMPQ_COMPILE_QUANTIZERS`` where it is set, else compiles when the trial
    trains on at least :data:`AUTO_COMPILE_MIN_PIXELS` pixels, the search's ``time_budget_s``
    (if any) is at least :data:`AUTO_COMPILE_MIN_BUDGET_S`, and ``torch.compile`` has a toolchain.
    """
    choice = job.search.quantizer_kernels
    if choice == "auto":
        compiled = compile_requested_by_environment()
        if compiled is None:
            budget = job.search.time_budget_s
            compiled = (pixels >= AUTO_COMPILE_MIN_PIXELS and (budget is None or budget >= AUTO_COMPILE_MIN_BUDGET_S)
                        and compiler_available(device))
    else:
        compiled = choice == "compiled"
    use_compiled_kernels(compiled)
    return compiled
