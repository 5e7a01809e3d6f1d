"""Module swap: FP model -> supernet, FP model -> fixed-policy quantized model.

The quantizable layers of a model are its ``Conv2d`` and ``Linear`` modules. The first conv
and the classifier are *fixed* (kept at a fixed precision, 8-bit by default); every other conv
is *searched*.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from torch import nn

from gmpq_ray.core.config import short_repr
from gmpq_ray.core.errors import UserInputError
from gmpq_ray.core.policy import LayerBits, Policy
from gmpq_ray.core.quant.layers import MixedPrecisionConv2d, QuantConv2d, QuantLinear

_QUANT_TYPES = (QuantConv2d, QuantLinear, MixedPrecisionConv2d)


def quantizable_layers(model: nn.Module) -> list[str]:
    """Names of the model's Conv2d and Linear modules, in definition order."""
    return [name for name, module in model.named_modules() if isinstance(module, (nn.Conv2d, nn.Linear))]


def default_fixed_layers(model: nn.Module) -> list[str]:
    """The first conv and the last linear layer (the classifier)."""
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    return [name for name in (convs[:1] + linears[-1:])]


def searched_layers(model: nn.Module, fixed_layers: Iterable[str] | None = None) -> list[str]:
    """Names of the convs whose bits are searched: every conv that is not fixed."""
    fixed = set(default_fixed_layers(model) if fixed_layers is None else fixed_layers)
    return [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and n not in fixed]


def check_fixed_layers(model: nn.Module, fixed_layers: Sequence[str], where: str = "fixed_layers") -> None:
    """Raise if a configured fixed layer is not a Conv2d/Linear of ``model`` (``where`` names the field)."""
    names = set(quantizable_layers(model))
    unknown = [name for name in fixed_layers if name not in names]
    if unknown:
        raise UserInputError(
            f"{where}: {short_repr(unknown)} are not conv or linear layers of the model "
            f"(its first and last are {default_fixed_layers(model)})"
        )


def set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    """Replace the submodule at dotted path ``name``."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def _quantized(module: nn.Module, bits: LayerBits) -> nn.Module:
    if isinstance(module, nn.Conv2d):
        return QuantConv2d.from_float(module, bits)
    if isinstance(module, nn.Linear):
        return QuantLinear.from_float(module, bits)
    raise TypeError(f"cannot quantize {type(module).__name__}")


def to_supernet(
    model: nn.Module,
    w_candidates: Sequence[int],
    a_candidates: Sequence[int],
    fixed_layers: Sequence[str] | None = None,
    fixed_bits: LayerBits = LayerBits(8, 8),
) -> nn.Module:
    """Swap every searched conv for a :class:`MixedPrecisionConv2d`, fixed layers for fixed ones.

    Works in place and returns ``model``; the FP weights are kept (shared, not copied).
    """
    fixed = default_fixed_layers(model) if fixed_layers is None else list(fixed_layers)
    check_fixed_layers(model, fixed)
    for name in searched_layers(model, fixed):
        set_submodule(model, name, MixedPrecisionConv2d.from_float(model.get_submodule(name), w_candidates, a_candidates))
    for name in fixed:
        set_submodule(model, name, _quantized(model.get_submodule(name), fixed_bits))
    return model


def apply_policy(model: nn.Module, policy: Policy, fixed_bits: LayerBits = LayerBits(8, 8)) -> nn.Module:
    """Quantize an FP model in place with ``policy`` (the torchao ``quantize_`` of this project).

    Fixed layers take their bits from ``policy.fixed_layers`` when it lists them (then it must
    list all of them), else the first conv and the classifier get ``fixed_bits``.

    Raises:
        UserInputError: the policy does not match the model's layers.
    """
    if any(isinstance(m, _QUANT_TYPES) for m in model.modules()):
        raise ValueError("apply_policy expects a full-precision model")
    fixed = list(policy.fixed_layers) or default_fixed_layers(model)
    check_fixed_layers(model, fixed)
    policy.validate_layers(searched_layers(model, fixed), fixed)
    leftover = [n for n in quantizable_layers(model) if n not in fixed and n not in policy.layers]
    if leftover:
        raise UserInputError(f"policy for {short_repr(policy.model)}: fixed_layers must list every fixed layer; {short_repr(leftover)} "
                              "would stay in full precision")
    for name, bits in policy.layers.items():
        set_submodule(model, name, _quantized(model.get_submodule(name), bits))
    for name in fixed:
        set_submodule(model, name, _quantized(model.get_submodule(name), policy.fixed_layers.get(name, fixed_bits)))
    return model


def supernet_layers(model: nn.Module) -> dict[str, MixedPrecisionConv2d]:
    """The supernet's mixed-precision layers by name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, MixedPrecisionConv2d)}


def fixed_quant_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Fixed-precision quantized layers by name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, (QuantConv2d, QuantLinear))}


def argmax_policy(model: nn.Module, model_name: str, input_size: int | None = None) -> Policy:
    """The discrete policy with the largest α per layer of a supernet."""
    layers = {name: layer.argmax_bits() for name, layer in supernet_layers(model).items()}
    fixed = {name: LayerBits(m.w_bits, m.a_bits) for name, m in fixed_quant_layers(model).items()}
    return Policy(model=model_name, layers=layers, fixed_layers=fixed, input_size=input_size)


class pinned_policy:
    """Context manager: run a supernet as the discrete ``policy`` (its shared weights, one branch).

    Example::

        with pinned_policy(supernet, policy):
            accuracy = evaluate(supernet, loader)
    """

    def __init__(self, model: nn.Module, policy: Policy) -> None:
        self.layers = supernet_layers(model)
        self.fixed_layers = fixed_quant_layers(model)
        policy.validate_layers(self.layers, self.fixed_layers)
        self.policy = policy

    def __enter__(self) -> None:
        self._saved = {n: (m.w_bits, m.a_bits) for n, m in self.fixed_layers.items()}
        for name, bits in self.policy.fixed_layers.items():
            self.fixed_layers[name].w_bits, self.fixed_layers[name].a_bits = bits.w_bits, bits.a_bits
        for name, layer in self.layers.items():
            layer.chosen = self.policy.layers[name]

    def __exit__(self, *exc) -> None:
        for layer in self.layers.values():
            layer.chosen = None
        for name, (w, a) in self._saved.items():
            self.fixed_layers[name].w_bits, self.fixed_layers[name].a_bits = w, a
