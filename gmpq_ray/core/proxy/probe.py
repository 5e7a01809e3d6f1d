"""The FP network, traced, run with one searched layer quantized at a time.

A proxy scores every (layer, w_bits, a_bits) choice by quantizing that layer alone in the FP
teacher. Everything upstream of the layer is the same in all these runs, so :class:`LayerProbe`
runs the FP network once per batch with ``torch.fx``, keeps every intermediate value, and for
each choice re-runs only the nodes downstream of the layer. Each searched conv is a
:class:`~gmpq_ray.core.quant.layers.QuantConv2d` at 32/32 bits (full precision) whose activation
quantizer was calibrated on the FP network's inputs (:func:`gmpq_ray.core.quant.calibration.calibrate`);
a choice sets its bits for the run. Fixed layers stay in full precision.

``precision="bf16"`` runs the probe under bf16 autocast with channels_last activations (about
twice as fast on this project's AMX CPU). Its rounding noise is the size of a high-bit choice's
own damage (on a ResNet18-CIFAR, the KL of its first searched layer at 6/6 bits read 3.5e-5 in
bf16 against 2.2e-5 in fp32, while 2/2 read 0.0027 in both), so the default stays fp32.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.fx as fx
from torch import nn

from gmpq_ray.core.models.registry import model_entry
from gmpq_ray.core.policy import FULL_PRECISION_BITS, LayerBits
from gmpq_ray.core.quant.calibration import calibrate
from gmpq_ray.core.quant.convert import set_submodule
from gmpq_ray.core.quant.layers import QuantConv2d, QuantLinear

Batch = tuple[torch.Tensor, torch.Tensor | None]


def probe_model(teacher: nn.Module, layers: Sequence[str]) -> nn.Module:
    """A copy of the FP ``teacher`` whose searched ``layers`` are QuantConv2d at 32/32 bits.

    Its state dict (activation clips included, once calibrated) is what scoring tasks share.
    """
    model = copy.deepcopy(teacher).eval().requires_grad_(False)
    for module in model.modules():
        if hasattr(module, "inplace"):
            module.inplace = False  # kept FP values must not be overwritten by a later ReLU
    full = LayerBits(FULL_PRECISION_BITS, FULL_PRECISION_BITS)
    for name in layers:
        set_submodule(model, name, QuantConv2d.from_float(model.get_submodule(name), full))
    return model


def calibrated_probe_model(teacher: nn.Module, layers: Sequence[str], batches: Sequence[Batch]) -> nn.Module:
    """:func:`probe_model` with every searched layer's activation clip set from ``batches``.

    The other layers are in full precision, so each layer sees the same inputs it sees when it
    is quantized alone: one calibration pass serves every choice.
    """
    model = probe_model(teacher, layers)
    calibrate(model, batches, num_batches=len(batches))
    return model


class _Tracer(fx.Tracer):
    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return isinstance(module, (QuantConv2d, QuantLinear)) or super().is_leaf_module(module, qualified_name)


@dataclass
class Outputs:
    """What a run gives a proxy: the logits and the last feature map (attribution's input)."""

    logits: torch.Tensor
    features: torch.Tensor


class LayerProbe:
    """Runs a calibrated probe model with one layer at a time quantized, re-running only downstream.

    Example::

        probe = LayerProbe(calibrated_probe_model(teacher, layers, batches), "resnet18", layers)
        for reference, runs in probe.runs(images, layers, candidates):
            for layer, bits, outputs in runs: ...
    """

    def __init__(self, model: nn.Module, model_name: str, layers: Sequence[str], precision: str = "fp32") -> None:
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be fp32 or bf16, got {precision!r}")
        self.bf16 = precision == "bf16"
        if self.bf16:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        entry = model_entry(model_name)
        self.classifier = model.get_submodule(entry.classifier)
        self.graph_module = fx.GraphModule(model, _Tracer().trace(model))
        nodes = list(self.graph_module.graph.nodes)
        inside = [n for n in nodes if entry.feature_module in (n.meta.get("nn_module_stack") or {})]
        if not inside:
            raise ValueError(f"no traced node belongs to the feature module {entry.feature_module!r}")
        self.feature_node = inside[-1]
        self.output_node = nodes[-1]
        self.layer_node = {}
        for name in layers:
            found = [n for n in nodes if n.op == "call_module" and n.target == name]
            if len(found) != 1:
                raise ValueError(f"layer {name!r} is called {len(found)} times in the traced model (expected once)")
            self.layer_node[name] = found[0]
        self.downstream = {name: self._downstream(node) for name, node in self.layer_node.items()}

    @staticmethod
    def _downstream(node: fx.Node) -> set[fx.Node]:
        seen, stack = {node}, [node]
        while stack:
            for user in stack.pop().users:
                if user not in seen:
                    seen.add(user)
                    stack.append(user)
        return seen

    def _run(self, images: torch.Tensor, env: dict[fx.Node, object] | None) -> tuple[Outputs, dict]:
        interpreter = fx.Interpreter(self.graph_module, garbage_collect_values=False)
        autocast = torch.autocast(images.device.type, dtype=torch.bfloat16) if self.bf16 else contextlib.nullcontext()
        with autocast:
            logits = interpreter.run(images, initial_env=env)
        return Outputs(logits.float(), interpreter.env[self.feature_node].float()), interpreter.env

    @torch.no_grad()
    def reference(self, images: torch.Tensor) -> tuple[Outputs, dict]:
        """The FP run of a batch and every intermediate value."""
        if self.bf16:
            images = images.contiguous(memory_format=torch.channels_last)
        return self._run(images, None)

    @torch.no_grad()
    def quantized(self, images: torch.Tensor, env: dict, layer: str, bits: LayerBits) -> Outputs:
        """The run with ``layer`` alone at ``bits``, reusing the FP values upstream of it."""
        module = self.model.get_submodule(layer)
        downstream = self.downstream[layer]
        kept = {node: value for node, value in env.items() if node not in downstream}
        module.w_bits, module.a_bits = bits.w_bits, bits.a_bits
        try:
            return self._run(images, kept)[0]
        finally:
            module.w_bits = module.a_bits = FULL_PRECISION_BITS

    def runs(self, images: torch.Tensor, layers: Sequence[str], candidates: Sequence[LayerBits]
             ) -> Iterator[tuple[str, LayerBits, Outputs, Outputs]]:
        """(layer, bits, FP outputs, quantized outputs) for every layer and candidate on a batch."""
        if self.bf16:
            images = images.contiguous(memory_format=torch.channels_last)
        reference, env = self.reference(images)
        for layer in layers:
            for bits in candidates:
                yield layer, bits, reference, self.quantized(images, env, layer, bits)
