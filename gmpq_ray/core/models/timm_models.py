"""timm CNNs as registry entries: ``timm:<name>`` (``timm:resnet18``, ``timm:efficientnet_b0``).

timm is imported only when such a name is used. The entry is read from timm's own interface
on a meta-device copy (no memory, no download): the last feature map is the output of
``forward_features`` (the outermost module that returns it gets the hook), the classifier is
``get_classifier()``, and the closed-form attribution applies when ``forward_head`` is a global
average pool and that classifier only (MobileNetV3's ``conv_head`` after the pool is not: its
attribution takes the autograd path).

Every model is built with ``pretrained=False``; pretrained weights are loaded by name through
:mod:`gmpq_ray.core.models.pretrained`. ``cifar_stem`` sets the first conv's stride to 1 and drops a
stem max-pool where there is one, keeping every layer's name.
"""

from __future__ import annotations

import difflib
import functools
from types import ModuleType

import torch
from torch import nn

from gmpq_ray.core.errors import UserInputError

TIMM_PREFIX = "timm:"
_AVERAGE_POOLS = {"avg", "fast", "fastavg"}


def import_timm(purpose: str) -> ModuleType:
    """timm, or a :class:`UserInputError` saying how to install it."""
    try:
        import timm
    except ImportError:
        raise UserInputError(f"{purpose} needs timm, which is not installed: pip install 'gmpq-ray[timm]'") from None
    return timm


def timm_architecture(name: str) -> str:
    """The timm architecture of ``timm:<name>``, checked against ``timm.list_models()``."""
    timm = import_timm(f"model {name!r}")
    arch = name.removeprefix(TIMM_PREFIX)
    # A pretrained tag (resnet18.a1_in1k) names weights, not an architecture.
    if arch.split(".", 1)[0] not in timm.list_models():
        close = difflib.get_close_matches(arch, timm.list_models(), n=8, cutoff=0.6)
        hint = f"; close names: {', '.join(close)}" if close else ""
        raise UserInputError(f"unknown timm model {arch!r}{hint} (all of them: timm.list_models())")
    return arch


def build_timm(arch: str, num_classes: int, in_channels: int, cifar_stem: bool) -> nn.Module:
    """``timm.create_model(arch, pretrained=False)``, with the CIFAR stem tweak if asked."""
    timm = import_timm(f"model 'timm:{arch}'")
    model = timm.create_model(arch, pretrained=False, num_classes=num_classes, in_chans=in_channels)
    if cifar_stem:
        stem = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
        stem.stride = (1, 1)
        for name in ("maxpool", "stem.pool"):
            try:
                model.get_submodule(name)
            except AttributeError:
                continue
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, nn.Identity())
    return model


def _conv_problem(name: str, model: nn.Module) -> str | None:
    convs = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    if len(convs) < 2:
        return (f"timm model {name!r} has no convolution to search ({len(convs)} Conv2d: the first one and the "
                "classifier stay fixed); GMPQ searches the bits of CNN convolutions")
    custom = sorted({type(m).__name__ for _, m in convs if type(m).forward is not nn.Conv2d.forward})
    if custom:
        return (f"timm model {name!r} uses convolutions with their own forward ({', '.join(custom)}, e.g. the "
                "'same' padding of tf_ variants), which the module swap would change; pick a variant without them")
    return None


def _outermost(names: list[str]) -> str:
    depth = min(n.count(".") for n in names)
    return [n for n in names if n.count(".") == depth][-1]


@functools.cache
def timm_entry(name: str):
    """The :class:`~gmpq_ray.core.models.registry.ModelEntry` of ``timm:<arch>``, read on a meta-device copy."""
    from gmpq_ray.core.models.registry import ModelEntry

    arch = timm_architecture(name)
    with torch.device("meta"):
        model = build_timm(arch, num_classes=10, in_channels=3, cifar_stem=False).eval()
    problem = _conv_problem(name, model)
    if problem:
        raise UserInputError(problem)
    size = model.pretrained_cfg.get("input_size", (3, 224, 224))[-2:] if getattr(model, "pretrained_cfg", None) else (224, 224)
    outputs: dict[str, torch.Tensor] = {}
    hooks = [m.register_forward_hook(lambda _m, _a, out, n=n: outputs.setdefault(n, out)) for n, m in model.named_modules() if n]
    try:
        features = model.forward_features(torch.empty(1, 3, *size, device="meta"))
        producers = [n for n, out in outputs.items() if out is features]
        outputs.clear()
        model.forward_head(features)
        head = [n for n in outputs if any(True for _ in model.get_submodule(n).parameters(recurse=False))]
    finally:
        for hook in hooks:
            hook.remove()
    classifier = model.get_classifier()
    classifier_name = next((n for n, m in model.named_modules() if m is classifier), None)
    if not isinstance(features, torch.Tensor) or features.dim() != 4 or not producers:
        raise UserInputError(f"timm model {name!r}: forward_features gives no (B, C, H, W) feature map to attribute")
    if not isinstance(classifier, nn.Linear) or classifier_name is None:
        raise UserInputError(f"timm model {name!r}: its classifier is a {type(classifier).__name__}, not a Linear layer")
    pools = {getattr(m, "pool_type", "avg") for m in model.modules() if hasattr(m, "pool_type")}
    cam_head = head == [classifier_name] and pools <= _AVERAGE_POOLS and classifier.in_features == features.shape[1]
    return ModelEntry(
        name=name,
        build=functools.partial(_build, arch),
        feature_module=_outermost(producers),
        classifier=classifier_name,
        cam_head=cam_head,
    )


def _build(arch: str, num_classes: int = 1000, in_channels: int = 3, cifar_stem: bool = False) -> nn.Module:
    return build_timm(arch, num_classes, in_channels, cifar_stem)
