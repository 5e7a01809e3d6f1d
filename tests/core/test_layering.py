"""The layers of gmpq_ray: ``core`` runs with PyTorch but neither Ray nor Optuna, and every package\nimports only the packages below it (read from the sources with ``ast``)."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

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


# What each part of gmpq_ray may import: the other parts (PACKAGE is gmpq_ray's own __init__,
# which holds __version__) and the Ray and Optuna libraries. Imports anywhere in a module count,
# those inside functions too. Every package and top-level module of gmpq_ray must have a row.
PACKAGE = "gmpq_ray"
ALLOWED: dict[str, set[str]] = {
    "core": set(),  # pure PyTorch: no Ray, no Optuna, nothing of gmpq_ray outside core
    "runtime": {PACKAGE, "core", "ray"},
    "report": {"core"},  # figures and tables from plain data: no search internals
    "export": {PACKAGE, "core", "finetune"},  # reads finetune run folders
    "search": {"core", "runtime", "report", "ray", "optuna"},
    "finetune": {"core", "runtime", "export", "ray"},  # export only when a job asks for model.onnx
    "experiments": {"core", "runtime", "report", "search", "finetune", "export", "ray", "optuna"},
    "commands": {PACKAGE, "core", "runtime", "report", "search", "finetune", "export", "experiments"},
    "cli": {PACKAGE, "core", "runtime", "commands"},
    "api": {PACKAGE, "search", "finetune", "export", "experiments"},
    "_versions": set(),
    "__init__": {"_versions"},
}
WATCHED_LIBRARIES = ("ray", "optuna")


def _part(path: Path) -> str:
    """The row of ``ALLOWED`` a source file belongs to: its package, or a top-level module's name."""
    parts = path.relative_to(REPO / PACKAGE).parts
    return parts[0] if len(parts) > 1 else parts[0].removesuffix(".py")


def _imported(path: Path) -> set[str]:
    """The parts of gmpq_ray and the watched libraries ``path`` imports, read with ``ast``."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}:{node.lineno}: a relative import; gmpq_ray imports absolutely"
            modules = [node.module]
            if node.module == PACKAGE:  # from gmpq_ray import api
                modules += [f"{PACKAGE}.{alias.name}" for alias in node.names]
        else:
            continue
        for module in modules:
            top, _, rest = module.partition(".")
            if top in WATCHED_LIBRARIES:
                found.add(top)
            elif top == PACKAGE:
                part = rest.partition(".")[0]
                found.add(part if part in ALLOWED else PACKAGE)
    return found


def _imports_by_part() -> dict[str, set[str]]:
    by_part: dict[str, set[str]] = {}
    for path in sorted((REPO / PACKAGE).rglob("*.py")):
        part = _part(path)
        by_part.setdefault(part, set()).update(_imported(path) - {part})
    return by_part


def test_every_part_of_the_package_has_a_row():
    parts = {_part(path) for path in (REPO / PACKAGE).rglob("*.py")}
    missing = sorted(parts - set(ALLOWED))
    assert not missing, f"gmpq_ray parts without a row in ALLOWED (say what they may import): {missing}"
    assert not sorted(set(ALLOWED) - parts), "rows of ALLOWED for parts that no longer exist"


@pytest.mark.parametrize("part", sorted(ALLOWED))
def test_each_part_imports_only_what_its_layer_allows(part):
    imported = _imports_by_part().get(part, set())
    assert not imported - ALLOWED[part], f"gmpq_ray.{part} imports {sorted(imported - ALLOWED[part])}"


def test_the_reader_sees_imports_inside_functions():
    """finetune imports export only inside the function that writes model.onnx."""
    assert "export" in _imported(REPO / PACKAGE / "finetune" / "runner.py")
