"""Which quantizer kernels a search trial runs: ``search.quantizer_kernels`` and its ``auto`` rule."""

from __future__ import annotations

import pytest
import torch

from gmpq_ray.core.quant import backends, kernels_compiled
from gmpq_ray.search.job import load_job
from gmpq_ray.search.trial_setup import AUTO_COMPILE_MIN_PIXELS, choose_quantizer_kernels, training_pixels
from tests.conftest import REPO, write_job


@pytest.fixture(autouse=True)
def eager_afterwards(monkeypatch):
    monkeypatch.delenv("GMPQ_COMPILE_QUANTIZERS", raising=False)
    yield
    kernels_compiled.use_compiled_kernels(False)


def job_with(tmp_path, kernels):
    return load_job(write_job(tmp_path, search__quantizer_kernels=kernels))


@pytest.mark.parametrize(("kernels", "pixels", "expected"), [
    ("eager", 10 * AUTO_COMPILE_MIN_PIXELS, False),
    ("compiled", 1, True),
    ("auto", AUTO_COMPILE_MIN_PIXELS - 1, False),
])
def test_the_job_chooses(tmp_path, kernels, pixels, expected):
    assert choose_quantizer_kernels(job_with(tmp_path, kernels), pixels, torch.device("cpu")) is expected
    assert kernels_compiled.compiled_kernels_enabled() is expected
    # What the quantizers then run: the first backend of a weight and of an activation pass.
    with torch.no_grad():
        first = {backends.select(bits, torch.zeros(4, 3))[0].name for bits in ((2, 3, 4), None)}
    assert first == {"compiled" if expected else "blocked"}


def test_real_searches_compile_and_the_quick_starts_do_not():
    cifar10 = training_pixels(50_000, 25, 32)
    flowers = training_pixels(1_020, 25, 224)
    quickstart = load_job(REPO / "jobs" / "quickstart.yaml")
    digits_train_images = 1_797  # every digit image: more than the quick start's training split
    digits_quickstart = training_pixels(digits_train_images, quickstart.search.epochs, quickstart.data.image_size)
    assert min(cifar10, flowers) >= AUTO_COMPILE_MIN_PIXELS > digits_quickstart
    assert quickstart.search.quantizer_kernels == "auto"


def test_auto_compiles_long_trials_where_a_compiler_is(tmp_path, monkeypatch):
    job = job_with(tmp_path, "auto")
    cpu = torch.device("cpu")
    monkeypatch.setattr("gmpq_ray.search.trial_setup.compiler_available", lambda device: True)
    assert choose_quantizer_kernels(job, AUTO_COMPILE_MIN_PIXELS, cpu) is True
    monkeypatch.setattr("gmpq_ray.search.trial_setup.compiler_available", lambda device: False)
    assert choose_quantizer_kernels(job, AUTO_COMPILE_MIN_PIXELS, cpu) is False
    short = load_job(write_job(tmp_path, search__quantizer_kernels="auto", search__time_budget_s=60))
    monkeypatch.setattr("gmpq_ray.search.trial_setup.compiler_available", lambda device: True)
    assert choose_quantizer_kernels(short, 10 * AUTO_COMPILE_MIN_PIXELS, cpu) is False  # no time to compile
    monkeypatch.setenv("GMPQ_COMPILE_QUANTIZERS", "1")  # the environment overrides auto, both ways
    assert choose_quantizer_kernels(job, 1, cpu) is True
    monkeypatch.setenv("GMPQ_COMPILE_QUANTIZERS", "0")
    monkeypatch.setattr("gmpq_ray.search.trial_setup.compiler_available", lambda device: True)
    assert choose_quantizer_kernels(job, 10 * AUTO_COMPILE_MIN_PIXELS, cpu) is False


def test_bad_choice_is_refused(tmp_path):
    from gmpq_ray.core.errors import UserInputError

    with pytest.raises(UserInputError, match="search.quantizer_kernels: 'fast' is not one of"):
        job_with(tmp_path, "fast")
