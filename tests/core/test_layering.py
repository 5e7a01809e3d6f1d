"""``gmpq_ray.core`` imports and runs on a host with PyTorch but neither Ray nor Optuna."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent(
    """
    import importlib.abc
    import sys

    BLOCKED = ("ray", "optuna")
    attempts = []

    class Blocker(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                attempts.append(name)
                raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)", name=name)
            return None

    sys.meta_path.insert(0, Blocker())

    import torch
    import gmpq_ray
    import gmpq_ray.core as core
    from gmpq_ray.core import CostModel, Policy, calibrate, create_model, make_synthetic, to_supernet

    torch.manual_seed(0)
    data = make_synthetic(num_train=8, num_val=4, num_classes=10, image_size=16, in_channels=1)
    model = to_supernet(create_model("digits_cnn", num_classes=10, in_channels=1), [2, 4], [2, 4])
    calibrate(model, data.loaders(8)[0], num_batches=1)
    logits = model(data.train.tensors[0])
    logits.sum().backward()
    cost = CostModel.for_model("digits_cnn", 16, 10, 1)
    assert logits.shape == (8, 10), logits.shape
    assert model.features[1].conv.alpha_w.grad is not None
    assert float(cost.expected_bops(model).detach()) > 0
    assert Policy.from_json(Policy("digits_cnn", {"features.1.conv": core.LayerBits(2, 2)}).to_json()).model == "digits_cnn"
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    assert not loaded, loaded
    tried = list(attempts)  # optional imports a dependency tried and survived
    try:
        import ray  # noqa: F401
    except ModuleNotFoundError:
        pass
    else:
        raise AssertionError("the blocker did not block ray")
    print("core ok without ray/optuna; blocked import attempts:", tried)
    """
)


def test_core_imports_and_runs_without_ray_or_optuna():
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "core ok without ray/optuna" in result.stdout


UPPER_IMPORT = re.compile(r"^\s*(from|import)\s+(ray|optuna|gmpq_ray\.(search|cli|report|finetune))\b")


def test_upper_import_pattern():
    assert UPPER_IMPORT.match("    from ray import tune")
    assert UPPER_IMPORT.match("import optuna.trial")
    assert UPPER_IMPORT.match("from gmpq_ray.search.trial import x")
    assert not UPPER_IMPORT.match("from gmpq_ray.core.policy import Policy")
    assert not UPPER_IMPORT.match("import rayleigh")


def test_core_sources_do_not_import_upper_layers():
    """Also catches imports inside functions, which the subprocess test only sees when they run."""
    offenders = [
        f"{path.name}:{number}: {line.strip()}"
        for path in sorted((REPO / "gmpq_ray" / "core").rglob("*.py"))
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if UPPER_IMPORT.match(line)
    ]
    assert offenders == []
