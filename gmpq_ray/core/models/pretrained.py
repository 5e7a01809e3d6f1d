"""FP weights from a file or by name: ``torchvision:<WeightsEnum>`` and ``timm:<name>``.

Wherever a job takes FP weights (``fp_state_dict`` of finetune and ablation jobs,
``teacher.state_dict`` of a search job) it takes a path to a state dict file, or a name:

* ``torchvision:ResNet18_Weights.IMAGENET1K_V1`` (``...DEFAULT`` too): the file goes to
  torch's hub cache, ``$TORCH_HOME/hub/checkpoints`` (``~/.cache/torch`` by default);
* ``timm:resnet18.a1_in1k``: ``timm.create_model(name, pretrained=True)``, whose files go to
  the Hugging Face cache (``$HF_HOME``, ``~/.cache/huggingface``).

A name downloads once and then reads the cache. Without a network (and with an empty cache) the
error says so and how to pass a local file instead; nothing else in this project downloads.

Example::

    state = read_state_dict("torchvision:ResNet18_Weights.IMAGENET1K_V1", "fp_state_dict")
    create_model("resnet18").load_state_dict(state)
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gmpq_ray.core.errors import UserInputError
from gmpq_ray.core.models.timm_models import TIMM_PREFIX

TORCHVISION_PREFIX = "torchvision:"


def is_weights_name(source: str | None) -> bool:
    """Whether ``source`` names pretrained weights rather than a file."""
    return isinstance(source, str) and source.startswith((TORCHVISION_PREFIX, TIMM_PREFIX))


def local_path(source: str | None) -> str | None:
    """``source`` if it is a file path, None if it names pretrained weights (or is None)."""
    return None if source is None or is_weights_name(source) else source


def load_torch_file(path: str | Path, problem: Callable[[BaseException], str], map_location: torch.device | str = "cpu") -> Any:
    """``torch.load(path, weights_only=True)``: the one way this project reads a saved state.

    Args:
        path: the file (a state dict, a checkpoint's state).
        problem: the message of the :class:`UserInputError` raised when the file cannot be read,
            from the error torch raised (a corrupt or foreign file: say which, not how torch failed).
        map_location: where its tensors go.
    """
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        raise UserInputError(problem(err)) from None


def read_state_dict(source: str | Path, where: str) -> dict[str, torch.Tensor]:
    """The state dict in file ``source``, or of the pretrained weights it names, on the CPU.

    Args:
        source: a path, ``torchvision:<WeightsEnum>.<member>`` or ``timm:<model>.<tag>``.
        where: the field it comes from, for error messages (``fp_state_dict``).

    Raises:
        UserInputError: an unreadable file, an unknown name (the message lists the choices), or
            weights that are not cached and cannot be downloaded.
    """
    if is_weights_name(str(source)):
        name = str(source)
        state = _torchvision_state(name, where) if name.startswith(TORCHVISION_PREFIX) else _timm_state(name, where)
        return {key: value.detach().cpu() for key, value in state.items()}
    state = load_torch_file(source, lambda err: f"{where} {source}: not a loadable PyTorch state dict ({type(err).__name__})")
    if not isinstance(state, Mapping):
        raise UserInputError(f"{where} {source}: holds a {type(state).__name__}, not a state dict")
    return dict(state)


def load_matching(model: nn.Module, state: Mapping[str, torch.Tensor]) -> list[str]:
    """Load the entries of ``state`` whose name and shape fit ``model``; return the model's keys left as they were.

    For pretrained weights on another task: an ImageNet classifier (or stem) on a 10-class
    CIFAR network keeps its fresh initialization, to be trained.
    """
    own = model.state_dict()
    fitting = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(fitting, strict=False)
    return [k for k in own if k not in fitting]


def _offline_error(name: str, where: str, cache: str, err: BaseException) -> UserInputError:
    reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return UserInputError(
        f"{where} {name}: the weights are not in the cache ({cache}) and could not be downloaded, "
        f"offline? ({type(err).__name__}: {reason[:160]}); download them where there is a network, "
        f"or save the model's state dict with torch.save and give its path as {where}"
    )


def _torchvision_state(name: str, where: str) -> Mapping[str, torch.Tensor]:
    from torchvision.models import get_model_weights, get_weight, list_models

    weights_name = name.removeprefix(TORCHVISION_PREFIX)
    enum_name, _, member = weights_name.partition(".")
    enums = {}
    for model_name in list_models():
        enum = get_model_weights(model_name)
        enums[enum.__name__] = enum
    if enum_name not in enums:
        close = difflib.get_close_matches(enum_name, sorted(enums), n=8, cutoff=0.5)
        raise UserInputError(f"{where} {name}: torchvision has no weights {enum_name!r}"
                             f"{'; close names: ' + ', '.join(close) if close else ''} (all of them: torchvision.models.list_models() "
                             "with get_model_weights)")
    choices = list(enums[enum_name].__members__)  # DEFAULT is an alias among them
    if member not in choices:
        raise UserInputError(f"{where} {name}: choose {enum_name}.<one of {', '.join(choices)}>")
    weights = get_weight(weights_name)
    try:
        return weights.get_state_dict(progress=False, check_hash=True)
    except (OSError, ConnectionError, TimeoutError) as err:  # URLError, socket and HTTP errors are OSErrors
        raise _offline_error(name, where, str(Path(torch.hub.get_dir()) / "checkpoints"), err) from None


def _timm_state(name: str, where: str) -> Mapping[str, torch.Tensor]:
    from gmpq_ray.core.models.timm_models import import_timm

    timm = import_timm(f"{where} {name}")
    tagged = name.removeprefix(TIMM_PREFIX)
    arch = tagged.split(".", 1)[0]
    default_tag = "." not in tagged and bool(timm.list_pretrained(f"{tagged}.*"))
    if tagged not in timm.list_pretrained() and not default_tag:
        tags = timm.list_pretrained(f"{arch}.*") or difflib.get_close_matches(tagged, timm.list_pretrained(), n=8, cutoff=0.6)
        raise UserInputError(f"{where} {name}: timm has no pretrained weights {tagged!r}"
                             f"{'; choose one of ' + ', '.join(tags) if tags else ''} (all of them: timm.list_pretrained())")
    try:
        model = timm.create_model(tagged, pretrained=True)
    except (OSError, ConnectionError, TimeoutError, RuntimeError) as err:
        # huggingface_hub's offline and HTTP errors are OSErrors; timm re-raises some as RuntimeError.
        raise _offline_error(name, where, _hf_cache(), err) from None
    return model.state_dict()


def _hf_cache() -> str:
    try:
        from huggingface_hub import constants
    except ImportError:
        return "the Hugging Face cache"
    return str(constants.HF_HUB_CACHE)
