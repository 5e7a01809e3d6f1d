"""Quantization: fake-quantize kernels, quantized and mixed-precision layers, calibration, and
applying a policy to a model (``convert``)."""
