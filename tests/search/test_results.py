"""What trials.csv's error column keeps of a trial's error."""

from gmpq_ray.search.runner import error_reason


def test_the_reason_line_without_colour_codes_or_ray_header():
    error = ("\x1b[36mray::ImplicitFunc.train()\x1b[39m (pid=123, ip=10.0.0.1, actor_id=abc123, repr=supernet_trial)\n"
             '  File "/site-packages/gmpq_ray/search/trial.py", line 3, in supernet_trial\n'
             "    raise FloatingPointError(message)\n"
             "FloatingPointError: loss became nan at epoch 1")
    assert error_reason(error) == "FloatingPointError: loss became nan at epoch 1"
    assert error_reason(RuntimeError("x" * 1000)) == "x" * 300  # no reason line: the last line, shortened
    assert len(error_reason(RuntimeError("y: " + "z" * 1000))) == 300


def test_a_tune_state_cut_short_by_a_kill_is_recognised(tmp_path):
    import json
    import pickle

    from gmpq_ray.search.runner import unreadable_tune_state

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
