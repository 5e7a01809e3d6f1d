"""Compiled quantizer kernels: the same math as ``torch.compile``d kernels, one fused loop per pass.

torch.compile fuses each quantizer's elementwise work into one or two loops over the tensor
(about 3x faster than the blocked eager kernels on CPU, and far fewer launches on CUDA). It is
not the default of the library: the first call of every kernel compiles it (tens of seconds on
CPU, with a C++ compiler), which is worth it for a search that runs for hours but not for
tests or a short script; a search turns it on by itself when its trials are long enough
(:func:`use_compiled_kernels`, ``GMPQ_COMPILE_QUANTIZERS=1``, or a search's
``quantizer_kernels``). The kernels see flat activations and (C, J) weight matrices with dynamic
shapes, so they compile once per candidate set, not once per layer.

The public ``weight_*``/``activation_*`` functions have the signatures of their passes in
:mod:`gmpq_ray.core.quant.backends` and return None where compiling or running fails (the eager
kernels take over from then on).
"""

from __future__ import annotations

import os

import torch

from gmpq_ray.core.policy import FULL_PRECISION_BITS
from gmpq_ray.core.quant import layout
from gmpq_ray.core.quant.grid import signed_levels, weight_scales


def _activation_forward_kernel(x, scales, coefficients, levels: tuple[int, ...], signed: bool):
    inverse = scales.reciprocal()
    out = None
    for i, top in enumerate(levels):
        branch = torch.round(torch.clamp(x.float() * inverse[i], -top if signed else 0, top)) * coefficients[i]
        out = branch if out is None else out + branch
    return out.to(x.dtype)


def _activation_backward_kernel(x, grad, clip, scales, levels: tuple[int, ...], signed: bool, need_mask: bool, need_dots: bool):
    grad_x = dots = x_dot = None
    if need_mask:
        inside = (x >= (-clip if signed else 0.0)) & (x <= clip)
        grad_x = torch.where(inside, grad, torch.zeros_like(grad))
        x_dot = (grad_x.float() * x.float()).sum()
    if need_dots:
        inverse = scales.reciprocal()
        dots = torch.stack([
            (grad.float() * torch.round(torch.clamp(x.float() * inverse[i], -top if signed else 0, top))).sum()
            for i, top in enumerate(levels)
        ])
    return grad_x, dots, x_dot


def _weight_forward_kernel(matrix, scales, probs, bits: tuple[int, ...]):
    inverse, steps, out = scales.reciprocal().unsqueeze(2), scales.unsqueeze(2), None
    for j, b in enumerate(bits):
        levels = signed_levels(b)
        branch = torch.round(torch.clamp(matrix.float() * inverse[j], -levels, levels)) * steps[j]
        branch = branch if probs is None else branch * probs[j].float()
        out = branch if out is None else out + branch
    return out.to(matrix.dtype)


def _weight_backward_kernel(matrix, grad, scales, probs, bits: tuple[int, ...], need_weight: bool, need_probs: bool):
    inverse, steps = scales.reciprocal().unsqueeze(2), scales.unsqueeze(2)
    mixed_mask, dots = None, []
    for j, b in enumerate(bits):
        levels = signed_levels(b)
        scaled = matrix.float() * inverse[j]
        if need_weight:
            mask = (scaled.abs() < levels + 0.5).float()  # the fake-quantize STE
            mask = mask if probs is None else mask * probs[j].float()
            mixed_mask = mask if mixed_mask is None else mixed_mask + mask
        if need_probs:
            dots.append((grad.float() * (torch.round(torch.clamp(scaled, -levels, levels)) * steps[j])).sum())
    grad_weight = (grad.float() * mixed_mask).to(grad.dtype) if need_weight else None
    return grad_weight, (torch.stack(dots) if need_probs else None)


_KERNELS = {
    "activation_forward": _activation_forward_kernel,
    "activation_backward": _activation_backward_kernel,
    "weight_forward": _weight_forward_kernel,
    "weight_backward": _weight_backward_kernel,
}
_compiled: dict[str, object] = {}  # the kernels in use: empty while the eager ones run
_compiled_once: dict[str, object] = {}  # made once per process, so toggling keeps what compiled


def use_compiled_kernels(enabled: bool = True) -> None:
    """Run the quantizers' elementwise work through ``torch.compile``d kernels, or not.

    Also enabled by the environment variable ``GMPQ_COMPILE_QUANTIZERS=1`` (read at import,
    so that Ray workers inherit it); search trials choose with ``search.quantizer_kernels``.
    Values and gradients are those of the eager kernels; the first step of a process pays the
    compilation (about 20 s for ResNet18 on 2 CPU cores, 5 s from inductor's disk cache).
    Double backward (``create_graph``) stays eager. If compiling fails (no C++ compiler, no
    Triton), a warning says so and the eager kernels take over.
    """
    _compiled.clear()
    if enabled:
        if not _compiled_once:
            import torch._dynamo

            # The kernels take detached tensors, but a caller compiling around them with
            # parameters would otherwise recompile for every layer's shape (see DESIGN.md).
            torch._dynamo.config.force_parameter_static_shapes = False
            _compiled_once.update({name: torch.compile(kernel, dynamic=True) for name, kernel in _KERNELS.items()})
        _compiled.update(_compiled_once)


def compiled_kernels_enabled() -> bool:
    """Whether the quantizers currently run the ``torch.compile``d kernels."""
    return bool(_compiled)


def compiler_available(device: torch.device | str = "cpu") -> bool:
    """Whether ``torch.compile`` has what it needs to build kernels for ``device``: a C++
    compiler for CPUs, Triton for CUDA."""
    device = torch.device(device)
    if device.type == "cuda":
        import importlib.util

        return importlib.util.find_spec("triton") is not None
    import shutil

    return any(shutil.which(name) for name in (os.environ.get("CXX", "g++"), "g++", "clang++", "c++"))


def _run_compiled(name: str, *args, **kwargs):
    """The compiled kernel's result, or None (and the eager kernels from now on) if it fails."""
    try:
        return _compiled[name](*args, **kwargs)
    except Exception as error:  # noqa: BLE001 - a missing toolchain shows up as any backend error
        import warnings

        warnings.warn(f"compiled quantizer kernels failed ({type(error).__name__}: {str(error).splitlines()[0][:200]}); "
                      "using the eager kernels", RuntimeWarning, stacklevel=2)
        _compiled.clear()
        return None


def applies(bits: tuple[int, ...] | None, *tensors: torch.Tensor) -> bool:
    """Whether the compiled kernels are on and apply (``bits``: weight candidates, no 32)."""
    return (
        bool(_compiled)
        and not torch.is_grad_enabled()
        and (bits is None or all(b < FULL_PRECISION_BITS for b in bits))
        and all(t.dtype in (torch.float32, torch.float16, torch.bfloat16) for t in tensors)
    )


def compile_requested_by_environment() -> bool | None:
    """``GMPQ_COMPILE_QUANTIZERS`` read as a switch: True, False, or None where it is not set."""
    value = os.environ.get("GMPQ_COMPILE_QUANTIZERS", "").strip().lower()
    return None if not value else value in ("1", "true", "yes", "on")


def weight_forward(w, probs, bits):
    scales = weight_scales(w, bits)  # applies() admits no 32-bit candidate: all are quantized
    out = _run_compiled("weight_forward", w.reshape(w.shape[0], -1), scales, probs, bits)
    return None if out is None else (out.view(w.shape), scales)


def weight_backward(w, grad_out, probs, bits, scales, need_weight, need_probs):
    grads = _run_compiled(
        "weight_backward",
        w.reshape(w.shape[0], -1), grad_out.reshape(w.shape[0], -1), scales, probs, bits, need_weight, need_probs,
    )
    if grads is None:
        return None
    grad_weight, grad_probs = grads
    if grad_weight is not None:
        grad_weight = grad_weight.view(w.shape)
    if grad_probs is not None:
        grad_probs = grad_probs.to(probs.dtype)
    return grad_weight, grad_probs


def activation_forward(x, effective, scales, coefficients, levels, signed):
    x = layout.dense(x)
    flat_out = _run_compiled("activation_forward", layout.flat(x), scales, coefficients, levels, signed)
    return None if flat_out is None else layout.unflat(flat_out, x)


def activation_backward(x, grad_out, effective, scales, levels, signed, need_mask, need_dots, need_x_dot):
    x = layout.dense(x)
    grads = _run_compiled(
        "activation_backward", layout.flat(x), layout.flat(layout.like(grad_out, x)), effective, scales, levels, signed,
        need_mask=need_mask, need_dots=need_dots,
    )
    if grads is None:
        return None
    flat_grad_x, dots, x_dot = grads
    return (None if flat_grad_x is None else layout.unflat(flat_grad_x, x)), dots, x_dot


if compile_requested_by_environment():
    use_compiled_kernels()
