"""Which quantizer backend runs a pass: ``backends.select`` and the fall-through of ``backends.run``."""

from __future__ import annotations

import pytest
import torch

from gmpq_ray.core.quant import backends, kernels_compiled
from gmpq_ray.core.quant.functions import mix_weights


def names(bits, *tensors):
    return [backend.name for backend in backends.select(bits, *tensors)]


@pytest.fixture
def compiled_on(monkeypatch):
    """The compiled kernels switched on without compiling anything (kernels that must not run)."""
    def not_called(*args, **kwargs):
        raise AssertionError("a compiled kernel ran")

    monkeypatch.setattr(kernels_compiled, "_compiled", dict.fromkeys(kernels_compiled._KERNELS, not_called))


def test_eager_selection():
    cpu32, cpu64 = torch.zeros(4, 3), torch.zeros(4, 3, dtype=torch.float64)
    with torch.no_grad():
        assert names((2, 4), cpu32) == ["blocked", "whole"]
        assert names(None, cpu32, cpu32) == ["blocked", "whole"]
        assert names((2, 4), cpu64) == ["whole"]  # other dtypes: whole tensors
        assert names(None, cpu32, cpu64) == ["whole"]
    assert names((2, 4), cpu32) == ["whole"]  # create_graph (double backward): whole tensors


def test_compiled_selection(compiled_on):
    with torch.no_grad():
        assert names((2, 4), torch.zeros(4, 3)) == ["compiled", "blocked", "whole"]
        assert names(None, torch.zeros(4, 3, dtype=torch.bfloat16)) == ["compiled", "whole"]
        assert names((2, 32), torch.zeros(4, 3)) == ["blocked", "whole"]  # a 32-bit candidate: eager
        assert names(None, torch.zeros(4, 3, dtype=torch.float64)) == ["whole"]
    assert names((2, 4), torch.zeros(4, 3)) == ["whole"]


def test_each_pass_asks_once_and_runs_the_first_backend(monkeypatch):
    calls = []
    select = backends.select

    def recording(bits, *tensors):
        chosen = select(bits, *tensors)
        calls.append((bits, chosen[0].name))
        return chosen

    monkeypatch.setattr(backends, "select", recording)
    w = torch.randn(6, 4, 3, 3, requires_grad=True)
    p = torch.tensor([0.25, 0.75], requires_grad=True)
    mix_weights(w, (2, 4), p).sum().backward()
    assert calls == [((2, 4), "blocked"), ((2, 4), "blocked")]  # forward, backward


def test_run_falls_through_a_failing_backend(monkeypatch):
    """A compiled kernel that fails returns None; the next backend that applies runs the pass."""
    w = torch.randn(6, 4, 3, 3)
    p = torch.tensor([0.25, 0.75])
    with torch.no_grad():
        eager = backends.run(backends.select((2, 4), w), "weight_forward", w, p, (2, 4))
        monkeypatch.setattr(kernels_compiled, "_run_compiled", lambda name, *args, **kwargs: None)
        monkeypatch.setattr(kernels_compiled, "_compiled", {"weight_forward": None})
        chosen = backends.select((2, 4), w)
        assert chosen[0].name == "compiled"
        out, scales = backends.run(chosen, "weight_forward", w, p, (2, 4))
    assert torch.equal(out, eager[0]) and torch.equal(scales, eager[1])
