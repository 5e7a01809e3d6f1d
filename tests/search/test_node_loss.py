"""A node removed from a 2-node Ray cluster mid-search: the search finishes on the other."""

from __future__ import annotations

import threading

import pytest
import ray
from ray.cluster_utils import Cluster

from gmpq_ray.search.runner import run_search
from tests.conftest import write_job
from tests.search.test_reliability import trial_results, wait_for

pytestmark = pytest.mark.ray


def test_search_survives_the_loss_of_a_node(tmp_path, no_ray):
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    worker = cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    job = write_job(tmp_path, search__epochs=4, search__num_trials=2, search__max_concurrent_trials=2,
                    search__max_failures=3)
    out = tmp_path / "run"
    removed: list[bool] = []

    def remove_worker_node():
        # One CPU per node and two concurrent trials: one trial runs on the worker node.
        wait_for(lambda: (out / "tune").exists() and sum(len(v) >= 1 for v in trial_results(out).values()) == 2,
                 180, "both trials to report an epoch")
        cluster.remove_node(worker)
        removed.append(True)

    remover = threading.Thread(target=remove_worker_node, daemon=True)
    remover.start()
    try:
        result = run_search(job, out, address=cluster.address, progress=False, log=lambda _: None)
    finally:
        remover.join(timeout=10)
        ray.shutdown()
        cluster.shutdown()
    assert removed
    trials = result.trials
    assert len(trials) == 2
    assert set(trials.status) == {"TERMINATED"} and (trials.epochs == 4).all()
    restarted = [lines for lines in trial_results(out).values() if len({line["pid"] for line in lines}) > 1]
    assert restarted, "the trial on the removed node should have moved to another worker process"
