"""``search.method: sampling``: Optuna proposes per-layer bits."""

from __future__ import annotations

from gmpq_ray.search.job import load_job
from gmpq_ray.search.methods import get_method
from gmpq_ray.search.sampling_trial import SamplingSpace
from tests.conftest import write_job


def test_the_space_is_per_layer_bits_and_nsga2_also_minimizes_bops(tmp_path):
    job = load_job(write_job(tmp_path, search={"method": "sampling", "sampler": "nsga2"}))
    method = get_method("sampling")
    space = method.optuna_space(job)
    assert isinstance(space, SamplingSpace) and space.layers == list(job.space.cost_model().searched)
    assert method.param_space(job) == {}
    assert method.objective(job) == (["policy_accuracy", "policy_bops_g"], ["max", "min"])
    searcher = method.searcher(job, tmp_path / "study.db")
    assert searcher._metric == ["policy_accuracy", "policy_bops_g"]
    # A sampled policy's BOPs are exact: no warm-up, no slack.
    assert method.bops_warmup_epochs(job) == 0 and method.bops_tolerance(job) == 0.0


def test_a_row_shows_the_proposal(tmp_path):
    job = load_job(write_job(tmp_path, search={"method": "sampling", "sampler": "tpe"}))
    method = get_method("sampling")
    assert method.objective(job) == ("policy_accuracy", "max")
    assert method.trials_row(job, {"w_bits": {"a": 2, "b": 4}, "a_bits": {"a": 3, "b": 4}}) == {"proposal": "2/3 4/4"}
