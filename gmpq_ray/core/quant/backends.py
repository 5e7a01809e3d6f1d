"""The one choice of quantizer backend: which kernels run a pass, given its tensors and bits.

Three backends compute the same values (``tests/core/quant/test_quantizer_equivalence.py``):

* ``compiled`` (:mod:`~gmpq_ray.core.quant.kernels_compiled`): ``torch.compile``d kernels, when
  turned on, for float32/float16/bfloat16 tensors, weight candidates without 32 bits, and not
  under ``create_graph``;
* ``blocked`` (:mod:`~gmpq_ray.core.quant.kernels_blocked`): cache-blocked eager kernels for
  float32 CPU tensors, not under ``create_graph``;
* ``whole`` (:mod:`~gmpq_ray.core.quant.kernels_whole`): whole-tensor eager ops, everywhere else
  (CUDA, other dtypes, double backward).

Each autograd function calls :func:`select` once per pass and runs the pass with
:func:`run`, which falls through to the next backend only if a compiled kernel fails.

The passes and their signatures (``w``/``x`` detached):

* ``weight_forward(w, probs, bits) -> (out, scales)``, ``scales`` the (K, C) steps of the
  quantized candidates;
* ``weight_backward(w, grad_out, probs, bits, scales, need_weight, need_probs) -> (grad_w, grad_probs)``;
* ``activation_forward(x, effective, scales, coefficients, levels, signed) -> out``;
* ``activation_backward(x, grad_out, effective, scales, levels, signed, need_mask, need_dots,
  need_x_dot) -> (grad_x, dots, x_dot)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType

import torch

from gmpq_ray.core.quant import kernels_blocked, kernels_compiled, kernels_whole

PASSES = ("weight_forward", "weight_backward", "activation_forward", "activation_backward")


@dataclass(frozen=True)
class Backend:
    """A set of kernels for the four passes, and when they apply.

    Args:
        name: ``compiled``, ``blocked`` or ``whole``.
        kernels: the module holding one function per pass (see the module docstring).
        applies: ``applies(bits, *tensors)``: whether the kernels run these tensors
            (``bits``: the weight candidates, None for an activation).
    """

    name: str
    kernels: ModuleType
    applies: Callable[..., bool]

    def run(self, pass_name: str, *args):
        """The pass's result, or None where the backend failed (compiled kernels only)."""
        return getattr(self.kernels, pass_name)(*args)


COMPILED = Backend("compiled", kernels_compiled, kernels_compiled.applies)
BLOCKED = Backend("blocked", kernels_blocked, lambda bits, *tensors: kernels_blocked.applies(*tensors))
WHOLE = Backend("whole", kernels_whole, lambda bits, *tensors: True)
BACKENDS = (COMPILED, BLOCKED, WHOLE)


def select(bits: tuple[int, ...] | None, *tensors: torch.Tensor) -> tuple[Backend, ...]:
    """The backends that apply to a pass over ``tensors``, best first (the last is ``whole``).

    Args:
        bits: the weight candidates of a weight pass, None for an activation pass.
        tensors: the pass's inputs (the weight or activation, and ``grad_out`` backward).

    Example:
        >>> import torch
        >>> with torch.no_grad():
        ...     [b.name for b in select((4,), torch.zeros(2, 3))]
        ['blocked', 'whole']
    """
    return tuple(backend for backend in BACKENDS if backend.applies(bits, *tensors))


def run(backends: tuple[Backend, ...], pass_name: str, *args):
    """Run ``pass_name`` on the first of ``backends`` that succeeds."""
    for backend in backends:
        result = backend.run(pass_name, *args)
        if result is not None:
            return result
    raise RuntimeError(f"no quantizer backend ran {pass_name}")  # unreachable: whole never fails
