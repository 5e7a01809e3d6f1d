"""Quantization: grids and step sizes (``grid``), the fake-quantize kernels by backend
(``kernels_whole``, ``kernels_blocked``, ``kernels_compiled``) and the one choice among them
(``backends``), the autograd functions (``functions``), the activation quantizer
(``activation``), quantized and mixed-precision layers (``layers``), calibration, and applying a
policy to a model (``convert``)."""
