"""Deploying a policy: the quantized network as ONNX with explicit Q/DQ, checked in ONNX Runtime.

Needs the ``[export]`` extra (``onnx``, ``onnxruntime``), imported only when an export runs, so
this package imports without it. :func:`export_run` exports a finetune run folder (or a state
dict with its policy and job); :func:`export_onnx` a quantized network in memory.
"""

from gmpq_ray.export._deps import EXTRA_HINT
from gmpq_ray.export.api import CHECK_FILE, ExportResult, check_outputs, export_onnx, export_run
from gmpq_ray.export.check import MIN_AGREEMENT

__all__ = ["CHECK_FILE", "EXTRA_HINT", "MIN_AGREEMENT", "ExportResult", "check_outputs", "export_onnx", "export_run"]
