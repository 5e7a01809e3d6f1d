"""What ``--resume`` finds in a run folder: a Tune state it can restore, or not."""

import json
import pickle

from gmpq_ray.search.resume import unreadable_tune_state


def test_a_tune_state_cut_short_by_a_kill_is_recognised(tmp_path):
    (tmp_path / "experiment_state-2026-01-01_00-00-00.json").write_text(json.dumps({"trial_data": []}))
    (tmp_path / "searcher-state-2026-01-01_00-00-00.pkl").write_bytes(pickle.dumps({"space": 1}))
    (tmp_path / "tuner.pkl").write_bytes(pickle.dumps({"param_space": {}}))
    state = tmp_path / "search_gen_state-2026-01-01_00-00-00.json"
    state.write_bytes(pickle.dumps({"counter": 2}))
    assert unreadable_tune_state(tmp_path) is None
    state.write_bytes(b"")  # the copy into the run folder was cut short
    assert unreadable_tune_state(tmp_path) == f"{state.name} is empty"
    state.write_bytes(pickle.dumps({"counter": 2})[:7])
    assert unreadable_tune_state(tmp_path).startswith(f"{state.name} is unreadable")
