"""What trials.csv's error column keeps of a trial's error."""

from gmpq_ray.search.results import error_reason


def test_the_reason_line_without_colour_codes_or_ray_header():
    error = ("\x1b[36mray::ImplicitFunc.train()\x1b[39m (pid=123, ip=10.0.0.1, actor_id=abc123, repr=supernet_trial)\n"
             '  File "/site-packages/gmpq_ray/search/trial.py", line 3, in supernet_trial\n'
             "    raise FloatingPointError(message)\n"
             "FloatingPointError: loss became nan at epoch 1")
    assert error_reason(error) == "FloatingPointError: loss became nan at epoch 1"
    assert error_reason(RuntimeError("x" * 1000)) == "x" * 300  # no reason line: the last line, shortened
    assert len(error_reason(RuntimeError("y: " + "z" * 1000))) == 300
