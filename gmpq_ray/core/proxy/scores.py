"""Zero-cost proxies: how much quantizing one layer alone damages the FP network, no training.

Every proxy returns, for each searched layer and each (w_bits, a_bits) candidate, a *damage*
(lower is better) measured on a few batches; :mod:`gmpq_ray.core.proxy.solver` then allocates
bits exactly under the BOPs limit. Registered proxies (``search.proxy``):

* ``arc``: the drop in attribution rank consistency, ``1 - ARC`` of the network with that layer
  quantized against the FP network (GMPQ's own criterion, as a zero-cost proxy). The maps are
  the closed-form class activation maps for the class the FP network predicts, so no label is
  needed;
* ``kl``: ``KL(p_FP || p_quantized)`` of the output distributions, averaged over images (no label);
* ``fit``: FIT, the Fisher-information-trace sensitivity of Zandonati, Pol, Pierini, Sirkin and
  Kopetz, "FIT: A Metric for Model Sensitivity", ICLR 2023 (arXiv:2210.08502): the loss change
  a perturbation ``d`` causes is about ``d^T F d`` with ``F`` the empirical Fisher information,
  approximated per layer by ``Tr(F_l) / n_l * ||d_l||^2`` for the layer's weights and for its
  input activations. ``Tr(F)`` comes from per-image gradients of the cross-entropy (the
  labels are needed), ``d`` from the project's own quantizers at each candidate (the paper
  models it as uniform noise of the quantization step).

Scoring is pure PyTorch; :func:`score_layers` is what each Ray scoring task runs.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from gmpq_ray.core.errors import UserInputError
from gmpq_ray.core.objective.attribution import attribution_rank_consistency, class_activation_map
from gmpq_ray.core.policy import LayerBits
from gmpq_ray.core.proxy.probe import Batch, LayerProbe, Outputs
from gmpq_ray.core.quant.functions import quantize_weight
from gmpq_ray.core.quant.layers import QuantConv2d

Scores = dict[str, dict[LayerBits, float]]


class Proxy(abc.ABC):
    """A zero-cost proxy. ``needs_labels``: it reads the batches' labels. ``one_pass``: it scores
    every layer from one pass over the batches (one task for all layers), else each layer's
    candidates are run separately (layers are split over tasks)."""

    name: str
    needs_labels: bool = False
    one_pass: bool = False

    @abc.abstractmethod
    def score(self, model: nn.Module, model_name: str, batches: Sequence[Batch], layers: Sequence[str],
              candidates: Sequence[LayerBits], precision: str = "fp32") -> Scores:
        """Damage of every (layer, candidate) in ``layers`` x ``candidates`` on ``batches``.

        ``model`` is a calibrated probe model (:func:`~gmpq_ray.core.proxy.probe.calibrated_probe_model`);
        ``precision`` (fp32 or bf16) is how the probe runs, where a proxy runs it.
        """


class OutputProxy(Proxy):
    """A proxy that compares the outputs of each quantized run with the FP run's, batch by batch."""

    @abc.abstractmethod
    def batch_damage(self, probe: LayerProbe, reference: Outputs, quantized: Outputs) -> torch.Tensor:
        """Summed damage over the images of a batch."""

    def score(self, model, model_name, batches, layers, candidates, precision="fp32") -> Scores:
        probe = LayerProbe(model, model_name, layers, precision)
        total = {layer: {bits: 0.0 for bits in candidates} for layer in layers}
        images_seen = 0
        for images, _ in batches:
            for layer, bits, reference, quantized in probe.runs(images, layers, candidates):
                total[layer][bits] += float(self.batch_damage(probe, reference, quantized))
            images_seen += images.shape[0]
        return {layer: {bits: value / images_seen for bits, value in row.items()} for layer, row in total.items()}


class KLProxy(OutputProxy):
    name = "kl"

    def batch_damage(self, probe, reference, quantized):
        return F.kl_div(quantized.logits.log_softmax(1), reference.logits.log_softmax(1), log_target=True,
                        reduction="sum")


class ARCProxy(OutputProxy):
    name = "arc"

    def batch_damage(self, probe, reference, quantized):
        predicted = reference.logits.argmax(1)
        weight = probe.classifier.weight
        fp_maps = class_activation_map(reference.features, weight, predicted)
        q_maps = class_activation_map(quantized.features, weight, predicted)
        return (1 - attribution_rank_consistency(q_maps, fp_maps)) * predicted.shape[0]


class FITProxy(Proxy):
    name = "fit"
    needs_labels = True
    one_pass = True

    def score(self, model, model_name, batches, layers, candidates, precision="fp32") -> Scores:
        # Gradients and squared perturbations stay in fp32 whatever ``precision`` says.
        model = model.eval()
        convs: dict[str, QuantConv2d] = {name: model.get_submodule(name) for name in layers}
        w_bits = sorted({b.w_bits for b in candidates})
        a_bits = sorted({b.a_bits for b in candidates})
        weight_fisher = {name: torch.zeros(()) for name in layers}
        act_fisher = {name: torch.zeros(()) for name in layers}
        act_noise = {name: {a: torch.zeros(()) for a in a_bits} for name in layers}
        inputs: dict[str, torch.Tensor] = {}

        def keep_input(name):
            def hook(module, args):
                inputs[name] = args[0]
            return hook

        params = [convs[name].weight for name in layers]
        handles = [convs[name].register_forward_pre_hook(keep_input(name)) for name in layers]
        for param in params:
            param.requires_grad_(True)
        samples = 0
        try:
            with torch.enable_grad():
                for images, labels in batches:
                    if labels is None:
                        raise UserInputError("search.proxy: 'fit' needs labels; these scoring batches have none")
                    # Per-image gradients: the empirical Fisher is the mean of their outer products.
                    for index in range(images.shape[0]):
                        image = images[index:index + 1].requires_grad_(True)
                        loss = F.cross_entropy(model(image), labels[index:index + 1])
                        grads = torch.autograd.grad(loss, params + [inputs[name] for name in layers])
                        for i, name in enumerate(layers):
                            weight_fisher[name] += grads[i].pow(2).sum()
                            act_fisher[name] += grads[len(layers) + i].pow(2).sum()
                            with torch.no_grad():
                                x = inputs[name]
                                for a in a_bits:
                                    act_noise[name][a] += (convs[name].act_quant(x, (a,)) - x).pow(2).sum()
                        samples += 1
        finally:
            for handle in handles:
                handle.remove()
            for param in params:
                param.requires_grad_(False)
        scores: Scores = {}
        with torch.no_grad():
            for name in layers:
                weight = convs[name].weight
                per_weight = float(weight_fisher[name]) / samples / weight.numel()
                per_input = float(act_fisher[name]) / samples / inputs[name].numel()
                weight_noise = {w: float((quantize_weight(weight, w) - weight).pow(2).sum()) for w in w_bits}
                scores[name] = {bits: per_weight * weight_noise[bits.w_bits]
                                + per_input * float(act_noise[name][bits.a_bits]) / samples
                                for bits in candidates}
        return scores


PROXIES: dict[str, Proxy] = {proxy.name: proxy for proxy in (ARCProxy(), KLProxy(), FITProxy())}


def get_proxy(name: str) -> Proxy:
    """The registered proxy ``name``; raises a :class:`UserInputError` naming the choices."""
    try:
        return PROXIES[name]
    except KeyError:
        raise UserInputError(f"search.proxy: unknown proxy {name!r}; choose from {sorted(PROXIES)}") from None


def score_layers(proxy: str, model: nn.Module, model_name: str, batches: Sequence[Batch], layers: Sequence[str],
                 candidates: Sequence[LayerBits], precision: str = "fp32") -> Scores:
    """Damage of every (layer, candidate) by the proxy ``proxy``, in one process (what a task runs).

    Example::

        model = calibrated_probe_model(teacher, layers, batches)
        scores = score_layers("kl", model, "digits_cnn", batches, layers, candidates)
    """
    chosen = get_proxy(proxy)
    if chosen.needs_labels and any(labels is None for _, labels in batches):
        raise UserInputError(f"search.proxy: {proxy!r} needs labels; the scoring batches have none")
    return chosen.score(model, model_name, batches, list(layers), list(candidates), precision)
