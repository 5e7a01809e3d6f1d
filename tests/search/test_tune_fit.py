"""One Tune experiment per second on a node: Tune names its staging folder by the second."""

from __future__ import annotations

import multiprocessing
import time

from gmpq_ray.search.tune_fit import StagingClaimed, experiment_in_its_own_second


def start_an_experiment(queue) -> None:
    with experiment_in_its_own_second():
        queue.put(int(time.time()))
        StagingClaimed().setup()  # what Tune calls once the experiment has named its folder
        time.sleep(0.3)  # the experiment runs on; the next one need not wait for it


def test_experiments_started_at_once_start_in_different_seconds():
    context = multiprocessing.get_context("fork")  # no re-import of torch and Ray
    queue = context.Queue()
    processes = [context.Process(target=start_an_experiment, args=(queue,)) for _ in range(3)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(30)
    starts = sorted(queue.get(timeout=5) for _ in processes)
    assert len(set(starts)) == 3 and all(process.exitcode == 0 for process in processes)
