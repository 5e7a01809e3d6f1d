"""benchmarks/gpu_check.py on the CPU, tiny, with Ray, Optuna and the other non-PyTorch packages unimportable."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.conftest import REPO

# Every package but PyTorch (and what it imports) unimportable, as on a host that lacks them.
_WITHOUT_EXTRAS = """
import runpy, sys
# None in sys.modules: importing fails and importlib.util.find_spec says "not installed", as on such a host.
for name in ("ray", "optuna", "timm", "yaml", "sklearn", "pandas", "matplotlib", "tqdm"):
    sys.modules[name] = None
sys.argv = ["benchmarks/gpu_check.py", *sys.argv[1:]]
runpy.run_path("benchmarks/gpu_check.py", run_name="__main__")
"""


def test_gpu_check_runs_on_the_cpu_with_pytorch_only():
    args = ["--device", "cpu", "--model", "digits_cnn", "--image-size", "16", "--batch-size", "4",
            "--steps", "3", "--qat-steps", "1", "--rounds", "1", "--warmup", "0"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", _WITHOUT_EXTRAS, *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    result = json.loads(lines[-1])["gpu_check"]
    assert result["ok"] and all(result["checks"].values())
    assert result["search"]["steps"] == 3 and result["search"]["alpha_moved"]
    assert {"a", "b_eager", "c_eager"} <= set(result["step_benchmark"]["rows"])
    assert "c/a_eager" in result["step_benchmark"]["ratios"]
    assert any(line.startswith("  c GMPQ step (closed form) [eager]") for line in lines)
