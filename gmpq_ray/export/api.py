"""``export_onnx``: a quantized network to an ONNX file with explicit Q/DQ, checked in ONNX Runtime.

Everything the user gave is checked before anything is written: the output paths, the bits of
every layer, the graph (``onnx.checker``). Then the model file and ``export_check.json`` (beside
it) are written atomically. A check that fails (top-1 agreement below 99.5 %, or a layer's
weights off its grid) keeps both files for inspection and says so in the result.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gmpq_ray.core.atomic import write_atomic
from gmpq_ray.core.cost.bops import CostModel, format_bops
from gmpq_ray.core.errors import UserInputError
from gmpq_ray.core.policy import LayerBits, Policy, write_text_atomic
from gmpq_ray.export._deps import require
from gmpq_ray.export.check import MIN_AGREEMENT, compare_with_onnxruntime, passed, storage_mb, weight_levels
from gmpq_ray.export.graph import DEFAULT_OPSET, INT4_OPSET, build_onnx_model
from gmpq_ray.export.quantized import check_exportable, quantized_layers
from gmpq_ray.export.source import load_policy_and_state, load_run_folder

CHECK_FILE = "export_check.json"


@dataclass
class ExportResult:
    """The written model, its check report (the content of ``export_check.json``), and whether it passed."""

    onnx_path: Path
    check_path: Path
    check: dict[str, Any]

    @property
    def passed(self) -> bool:
        return bool(self.check["passed"])


def check_path_for(output: str | Path) -> Path:
    """Where the check report of an export to ``output`` goes: ``export_check.json`` beside it."""
    return Path(output).with_name(CHECK_FILE)


def check_outputs(output: str | Path, overwrite: bool) -> tuple[Path, Path]:
    """The model and report paths; raises if either exists and ``overwrite`` is not set. Changes nothing."""
    output = Path(output)
    report = check_path_for(output)
    for path in (output, report):
        if path.is_dir():
            raise UserInputError(f"--output: {path} is a folder; give the path of the .onnx file to write")
        if path.exists() and not overwrite:
            raise UserInputError(f"--output: {path} exists; pass --overwrite to replace it")
    if output.parent.exists() and not output.parent.is_dir():
        raise UserInputError(f"--output: {output.parent} is not a folder")
    return output, report


def export_onnx(
    model: nn.Module,
    output: str | Path,
    images: torch.Tensor,
    labels: torch.Tensor | None = None,
    policy: Policy | None = None,
    bops: tuple[int, int] | None = None,
    int4: bool = False,
    overwrite: bool = False,
    log: Callable[[str], None] = print,
) -> ExportResult:
    """Write quantized ``model`` as ONNX with explicit Q/DQ and check it in ONNX Runtime on ``images``.

    Args:
        model: a network quantized by :func:`~gmpq_ray.core.quant.convert.apply_policy`, activation
            ranges calibrated (the finetuned one).
        output: the ``.onnx`` file; ``export_check.json`` is written beside it.
        images, labels: validation images (N, C, H, W) the check runs on, and their labels
            (optional: top-1 of both runtimes against them).
        policy: the policy the model was quantized with, stored in the file; it must match the
            model's layers and bits (default: read from the model).
        bops: (searched-layer BOPs, total) stored in the file (default: counted at the images' size).
        int4: opset 21 with int4 weights (4 bits or fewer) and uint4 4-bit inputs; else opset 13,
            int8/uint8 containers with ``Clip`` to the policy's levels.
        overwrite: replace an existing model file and report.

    Returns:
        The paths and the report; ``result.passed`` is False when the check failed (the files are kept).

    Example::

        model = apply_policy(create_model("digits_cnn"), policy); model.load_state_dict(torch.load("model.pt"))
        result = export_onnx(model, "model.onnx", val_images, val_labels, policy=policy)
        assert result.passed
    """
    output, report_path = check_outputs(output, overwrite)
    require("onnx")
    require("onnxruntime")
    layers = quantized_layers(model)
    if not layers:
        raise UserInputError("the model has no quantized layers: apply a policy to it first (apply_policy)")
    for name, layer in layers.items():
        check_exportable(name, layer)
    policy = _check_policy(model, layers, policy)
    input_shape = tuple(int(d) for d in images.shape[1:])
    if bops is None:
        # Counted in eval mode: a forward pass in training mode would move the batch norms' statistics.
        was_training = model.training
        try:
            bops = CostModel.for_module(model.eval(), input_shape, list(policy.fixed_layers) or None).policy_bops(policy)
        finally:
            model.train(was_training)
    from gmpq_ray import __version__

    metadata = {
        "gmpq.policy": json.dumps(policy.to_dict(), sort_keys=False),
        "gmpq.bops": json.dumps({"searched": bops[0], "total": bops[1], "searched_g": bops[0] / 1e9, "total_g": bops[1] / 1e9}),
        "gmpq.version": __version__,
        "gmpq.format": ("QCDQ, int4 weights of up to 4 bits, uint4 4-bit unsigned inputs, int8/uint8 otherwise (opset 21)" if int4
                        else "QCDQ, int8/uint8 containers (opset 13)"),
    }
    proto = build_onnx_model(model, input_shape, metadata, int4=int4, producer_version=__version__)
    data = proto.SerializeToString()
    write_atomic(output, lambda tmp: tmp.write_bytes(data))

    agreement = compare_with_onnxruntime(model, output, images, labels)
    levels = weight_levels(proto, model)
    report = {
        "onnx": str(output), "opset": INT4_OPSET if int4 else DEFAULT_OPSET, "int4": int4, "model": policy.model,
        **agreement, "min_agreement": MIN_AGREEMENT, "passed": passed(agreement, levels),
        **storage_mb(model, output),
        "bops_searched_g": bops[0] / 1e9, "bops_total_g": bops[1] / 1e9, "version": __version__,
        "layers": levels,
    }
    write_text_atomic(report_path, json.dumps(report, indent=2) + "\n")
    result = ExportResult(output, report_path, report)
    log(summary(result, bops))
    return result


def export_run(
    source: str | Path,
    output: str | Path,
    policy: Policy | str | Path | None = None,
    job: str | Path | None = None,
    int4: bool = False,
    overwrite: bool = False,
    max_images: int | None = 1000,
    log: Callable[[str], None] = print,
) -> ExportResult:
    """Export a finetune run folder (``source``), or a state dict ``source`` with its ``policy`` and ``job``.

    The check runs on the first ``max_images`` validation images of the job's data (None: all).

    Example::

        result = export_run("runs/finetune-digits", "runs/finetune-digits/model.onnx")
        print(result.check["top1_agreement"], result.check["weights_mb_policy_bits"])
    """
    check_outputs(output, overwrite)
    require("onnx")
    require("onnxruntime")
    if max_images is not None and max_images < 1:
        raise UserInputError(f"--images: must be at least 1 (0: all), got {max_images}")
    source_path = Path(source)
    if source_path.is_dir():
        if policy is not None or job is not None:
            raise UserInputError(f"{source_path} is a run folder: it holds its policy and job; give --policy and --job only with a state dict")
        loaded = load_run_folder(source_path, max_images)
    else:
        if policy is None or job is None:
            raise UserInputError(f"{source_path}: a state dict needs --policy and --job (or give a finetune run folder)")
        loaded = load_policy_and_state(source_path, policy, job, max_images)
    return export_onnx(loaded.model, output, loaded.images, loaded.labels, loaded.policy, loaded.bops, int4, overwrite, log)


def summary(result: ExportResult, bops: tuple[int, int]) -> str:
    """The lines ``gmpq export`` prints."""
    check = result.check
    lines = [
        f"exported {check['model']} ({len(check['layers'])} quantized layers, {'QCDQ with int4 weights' if check['int4'] else 'QCDQ int8'}, "
        f"opset {check['opset']}) to {result.onnx_path} ({check['onnx_file_mb']:.3f} MB)",
        f"  BOPs: {format_bops(bops[0])} searched layers, {format_bops(bops[1])} total",
        f"  onnxruntime vs PyTorch on {check['images']} validation images: top-1 agreement {100 * check['top1_agreement']:.2f} %, "
        f"max |logit difference| {check['max_logit_diff']:.3g}"
        + (f"; top-1 {100 * check['top1_onnxruntime']:.2f} % (PyTorch {100 * check['top1_pytorch']:.2f} %)" if "top1_pytorch" in check else ""),
        f"  weights: {check['weights_mb_policy_bits']:.4g} MB at the policy's bits (+{check['weight_scales_mb']:.3g} MB of scales) "
        f"vs {check['weights_mb_fp32']:.4g} MB in FP32 ({check['compression']:.1f}x smaller)",
        "  layer: w/a bits, distinct weight levels (at most)",
    ]
    for name, entry in check["layers"].items():
        levels = f"{entry['weight_levels']} ({entry['max_levels']})" if "weight_levels" in entry else "float32 weights"
        lines.append(f"    {name}: {entry['w_bits']}/{entry['a_bits']}, {levels}{'' if entry['levels_ok'] else '  OFF THE GRID'}")
    lines.append(f"check {'passed' if result.passed else 'FAILED'} (written to {result.check_path})")
    return "\n".join(lines)


def _check_policy(model: nn.Module, layers: dict[str, nn.Module], policy: Policy | None) -> Policy:
    """``policy`` checked against the model's quantized layers and bits (or the model's own)."""
    actual = {name: LayerBits(layer.w_bits, layer.a_bits) for name, layer in layers.items()}
    if policy is None:
        return Policy(model=type(model).__name__, layers=actual)
    stated = policy.all_layers()
    unknown = [name for name in stated if name not in actual]
    missing = [name for name in actual if name not in stated]
    if unknown or missing:
        raise UserInputError(f"the policy does not match the model: unknown layer(s) {unknown[:5]}, missing layer(s) {missing[:5]}")
    differ = [f"{name} ({stated[name].w_bits}/{stated[name].a_bits} vs {bits.w_bits}/{bits.a_bits})"
              for name, bits in actual.items() if stated[name] != bits]
    if differ:
        raise UserInputError(f"the policy's bits differ from the model's: {differ[:5]}")
    return policy
