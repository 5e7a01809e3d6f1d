"""The export's check: the ONNX model in ONNX Runtime against the PyTorch fake-quant network.

* **Agreement**: top-1 of both on the same images, the share of images on which they agree, and
  the largest absolute logit difference. Float convolutions sum in another order in each
  runtime, so an input lying within rounding noise of a grid step can land on the neighbouring
  level: logits differ by more than float noise, top-1 almost never.
* **Weight levels**: the distinct integers of each layer's weight initializer, at most
  ``2**b - 1`` for the signed symmetric grid the quantizers use.
* **Size**: the weights at the policy's bits against FP32 (MB = 2**20 bytes), the size column
  of the papers' tables.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from gmpq_ray.core.policy import FULL_PRECISION_BITS
from gmpq_ray.export._deps import require
from gmpq_ray.export.graph import INPUT_NAME
from gmpq_ray.export.quantized import quantized_layers, weight_storage_bytes

MIN_AGREEMENT = 0.995
MEGABYTE = 2**20


@torch.no_grad()
def compare_with_onnxruntime(
    model: nn.Module, onnx_path: str | Path, images: torch.Tensor, labels: torch.Tensor | None = None, batch_size: int = 256,
) -> dict[str, Any]:
    """Top-1 agreement and largest logit difference of the ONNX model and ``model`` on ``images``."""
    ort = require("onnxruntime")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    agree = total = 0
    max_diff = 0.0
    torch_correct = onnx_correct = non_finite = 0
    try:
        for start in range(0, images.shape[0], batch_size):
            batch = images[start:start + batch_size].float()
            reference = model(batch.to(device)).float().cpu().numpy()
            exported = session.run(None, {INPUT_NAME: batch.cpu().numpy()})[0]
            finite = np.isfinite(reference).all(1) & np.isfinite(exported).all(1)
            non_finite += int((~finite).sum())
            if finite.any():
                max_diff = max(max_diff, float(np.abs(exported[finite] - reference[finite]).max()))
            top_reference, top_exported = reference.argmax(1), exported.argmax(1)
            # An image with a NaN or infinite logit in either runtime counts as a disagreement.
            agree += int(((top_reference == top_exported) & finite).sum())
            total += batch.shape[0]
            if labels is not None:
                truth = labels[start:start + batch_size].cpu().numpy()
                torch_correct += int((top_reference == truth).sum())
                onnx_correct += int((top_exported == truth).sum())
    finally:
        model.train(was_training)
    result: dict[str, Any] = {"images": total, "top1_agreement": agree / max(total, 1), "max_logit_diff": max_diff,
                              "images_with_non_finite_logits": non_finite}
    if labels is not None:
        result["top1_pytorch"] = torch_correct / max(total, 1)
        result["top1_onnxruntime"] = onnx_correct / max(total, 1)
    return result


def weight_levels(proto, model: nn.Module) -> dict[str, dict[str, Any]]:
    """Per quantized layer: its bits, the input grid's sign, and the distinct integers of its stored weight."""
    onnx = require("onnx")
    initializers = {t.name: t for t in proto.graph.initializer}
    layers: dict[str, dict[str, Any]] = {}
    for name, layer in quantized_layers(model).items():
        entry: dict[str, Any] = {"w_bits": layer.w_bits, "a_bits": layer.a_bits}
        if layer.a_bits < FULL_PRECISION_BITS:
            entry["input_grid"] = "signed" if layer.act_quant.is_signed() else "unsigned"
        stored = initializers.get(f"{name}.weight_quantized")
        if stored is not None:
            values = onnx.numpy_helper.to_array(stored).astype(np.int16)
            limit = 2**layer.w_bits - 1
            entry.update({
                "weight_type": onnx.TensorProto.DataType.Name(stored.data_type).lower(),
                "weight_levels": int(np.unique(values).size), "max_levels": limit,
                "weight_min": int(values.min()), "weight_max": int(values.max()),
                "levels_ok": bool(np.unique(values).size <= limit and np.abs(values).max() <= 2 ** (layer.w_bits - 1) - 1),
            })
        else:
            entry.update({"weight_type": "float32", "levels_ok": True})
        layers[name] = entry
    return layers


def storage_mb(model: nn.Module, onnx_path: str | Path | None = None) -> dict[str, float]:
    """Weight storage at the policy's bits and in FP32 (MB), and the ONNX file's size."""
    policy_bytes, fp32_bytes, scale_bytes = weight_storage_bytes(model)
    sizes = {
        "weights_mb_policy_bits": policy_bytes / MEGABYTE,
        "weights_mb_fp32": fp32_bytes / MEGABYTE,
        "weight_scales_mb": scale_bytes / MEGABYTE,
        "compression": fp32_bytes / max(policy_bytes, 1.0),
    }
    if onnx_path is not None:
        sizes["onnx_file_mb"] = Path(onnx_path).stat().st_size / MEGABYTE
    return sizes


def passed(agreement: Mapping[str, Any], layers: Mapping[str, Mapping[str, Any]], min_agreement: float = MIN_AGREEMENT) -> bool:
    """Whether the export passes: agreement at least ``min_agreement`` and every layer's levels on its grid."""
    return agreement["top1_agreement"] >= min_agreement and all(entry["levels_ok"] for entry in layers.values())
