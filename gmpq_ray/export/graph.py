"""The ONNX graph of a quantized network, written node by node with ``onnx.helper``.

The network is traced with :mod:`torch.fx` (quantized layers kept whole) and each traced
operation becomes ONNX nodes. Every quantized layer becomes explicit Q/DQ:

* its input: ``QuantizeLinear`` -> ``Clip`` (to the policy's ``2**b`` levels; left out where the
  container's own range is the grid, unsigned 8-bit) -> ``DequantizeLinear`` (the "QCDQ" form),
  in a uint8 (after a ReLU) or int8 container;
* its weight: an int8 initializer of integers in ``[-(2**(b-1) - 1), 2**(b-1) - 1]`` with one
  float32 scale an output channel, through ``DequantizeLinear(axis=0)``;
* then the float ``Conv`` or ``Gemm`` on the dequantized tensors, as the fake-quant network does.

With ``int4=True`` (opset 21) weights of 4 bits or fewer are stored as packed int4 and 4-bit
unsigned inputs use a uint4 container (no ``Clip``: its range is the grid). Full-precision layers
and the other operations (batch norm, ReLU, pooling, additions) stay float as they are.

The supported operations are those of the registered models (the digits CNN, ResNet-18/50,
MobileNetV2); anything else is a :class:`UserInputError` naming it.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from gmpq_ray.core.errors import UserInputError
from gmpq_ray.core.quant.layers import MixedPrecisionConv2d, QuantConv2d, QuantLinear
from gmpq_ray.export._deps import require
from gmpq_ray.export.quantized import ActivationGrid, activation_grid, check_exportable, quantized_layers, weight_codes

DEFAULT_OPSET, INT4_OPSET = 13, 21
_IR_VERSION = {DEFAULT_OPSET: 7, INT4_OPSET: 10}
INPUT_NAME, OUTPUT_NAME = "images", "logits"


class _Tracer(torch.fx.Tracer):
    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return isinstance(module, (QuantConv2d, QuantLinear, MixedPrecisionConv2d)) or super().is_leaf_module(module, qualified_name)


class _Builder:
    """Collects nodes and initializers; hands out unique tensor names."""

    def __init__(self, onnx, int4: bool) -> None:
        self.onnx, self.int4 = onnx, int4
        self.nodes: list = []
        self.initializers: list = []
        self.used: set[str] = set()

    def name(self, base: str) -> str:
        name, index = base, 1
        while name in self.used:
            index += 1
            name = f"{base}_{index}"
        self.used.add(name)
        return name

    def constant(self, base: str, array: np.ndarray) -> str:
        name = self.name(base)
        self.initializers.append(self.onnx.numpy_helper.from_array(array, name))
        return name

    def node(self, op: str, inputs: Sequence[str], base: str, **attributes: Any) -> str:
        output = self.name(base)
        self.nodes.append(self.onnx.helper.make_node(op, list(inputs), [output], name=output, **attributes))
        return output

    # --- quantized layers ---------------------------------------------------------------------

    def quantize_input(self, name: str, x: str, grid: ActivationGrid) -> str:
        narrow_unsigned4 = self.int4 and not grid.signed and grid.bits == 4
        if narrow_unsigned4:
            import ml_dtypes  # numpy's int4/uint4 types, which onnx's numpy_helper reads

            dtype = ml_dtypes.uint4
        else:
            dtype = np.int8 if grid.signed else np.uint8
        scale = self.constant(f"{name}.input_scale", np.array(grid.scale, dtype=np.float32))
        zero = self.constant(f"{name}.input_zero_point", np.array(0, dtype=dtype))
        q = self.node("QuantizeLinear", [x, scale, zero], f"{name}.input_quantized")
        container = (0, 15) if narrow_unsigned4 else ((-128, 127) if grid.signed else (0, 255))
        if (grid.low, grid.high) != container:
            low = self.constant(f"{name}.input_low", np.array(grid.low, dtype=dtype))
            high = self.constant(f"{name}.input_high", np.array(grid.high, dtype=dtype))
            q = self.node("Clip", [q, low, high], f"{name}.input_clipped")
        return self.node("DequantizeLinear", [q, scale, zero], f"{name}.input_dequantized")

    def layer_weight(self, name: str, layer: QuantConv2d | QuantLinear) -> str:
        codes = weight_codes(layer)
        if codes is None:
            return self.constant(f"{name}.weight", layer.weight.detach().float().cpu().numpy())
        dtype = np.int8
        if self.int4 and codes.bits <= 4:
            import ml_dtypes

            dtype = ml_dtypes.int4
        channels = codes.codes.shape[0]
        values = self.constant(f"{name}.weight_quantized", codes.codes.numpy().astype(dtype))
        scale = self.constant(f"{name}.weight_scale", codes.scales.numpy().astype(np.float32))
        zero = self.constant(f"{name}.weight_zero_point", np.zeros(channels, dtype=dtype))
        return self.node("DequantizeLinear", [values, scale, zero], f"{name}.weight_dequantized", axis=0)

    def bias(self, name: str, layer: nn.Module) -> list[str]:
        if layer.bias is None:
            return []
        return [self.constant(f"{name}.bias", layer.bias.detach().float().cpu().numpy())]

    def quant_layer(self, name: str, layer: nn.Module, x: str) -> str:
        check_exportable(name, layer)
        grid = activation_grid(layer)
        if grid is not None:
            x = self.quantize_input(name, x, grid)
        weight = self.layer_weight(name, layer)
        if isinstance(layer, QuantLinear):
            return self.node("Gemm", [x, weight, *self.bias(name, layer)], name, transB=1)
        return self.conv(name, layer, x, weight)

    def conv(self, name: str, layer: nn.Conv2d, x: str, weight: str) -> str:
        if layer.padding_mode != "zeros" or isinstance(layer.padding, str):
            raise UserInputError(f"layer {name}: padding {layer.padding!r} ({layer.padding_mode}) has no ONNX form here")
        pad_h, pad_w = layer.padding
        return self.node(
            "Conv", [x, weight, *self.bias(name, layer)], name,
            kernel_shape=list(layer.kernel_size), strides=list(layer.stride), pads=[pad_h, pad_w, pad_h, pad_w],
            dilations=list(layer.dilation), group=layer.groups,
        )

    # --- float modules --------------------------------------------------------------------------

    def module(self, name: str, module: nn.Module, x: str) -> str:
        if isinstance(module, (QuantConv2d, QuantLinear, MixedPrecisionConv2d)):
            return self.quant_layer(name, module, x)
        if isinstance(module, nn.Conv2d):
            weight = self.constant(f"{name}.weight", module.weight.detach().float().cpu().numpy())
            return self.conv(name, module, x, weight)
        if isinstance(module, nn.Linear):
            weight = self.constant(f"{name}.weight", module.weight.detach().float().cpu().numpy())
            return self.node("Gemm", [x, weight, *self.bias(name, module)], name, transB=1)
        if isinstance(module, nn.BatchNorm2d):
            if module.running_mean is None:
                raise UserInputError(f"layer {name}: batch norm without running statistics has no ONNX form here")
            inputs = [x] + [
                self.constant(f"{name}.{key}", tensor.detach().float().cpu().numpy())
                for key, tensor in (("weight", module.weight), ("bias", module.bias), ("running_mean", module.running_mean),
                                    ("running_var", module.running_var))
            ]
            return self.node("BatchNormalization", inputs, name, epsilon=float(module.eps))
        if isinstance(module, nn.ReLU):
            return self.node("Relu", [x], name)
        if isinstance(module, nn.Hardtanh):  # ReLU6 too
            return self.clip(name, x, module.min_val, module.max_val)
        if isinstance(module, nn.MaxPool2d):
            return self.max_pool(name, module, x)
        if isinstance(module, nn.AdaptiveAvgPool2d):
            return self.global_pool(name, module.output_size, x)
        if isinstance(module, nn.Flatten):
            return self.flatten(name, x, module.start_dim, module.end_dim)
        if isinstance(module, (nn.Identity, nn.Dropout)):
            return x
        raise UserInputError(f"layer {name}: {type(module).__name__} has no ONNX form in gmpq export")

    def clip(self, name: str, x: str, low: float, high: float) -> str:
        low_name = self.constant(f"{name}.min", np.array(low, dtype=np.float32))
        high_name = self.constant(f"{name}.max", np.array(high, dtype=np.float32))
        return self.node("Clip", [x, low_name, high_name], name)

    def max_pool(self, name: str, module: nn.MaxPool2d, x: str) -> str:
        def pair(value):
            return list(value) if isinstance(value, (tuple, list)) else [value, value]

        kernel, stride = pair(module.kernel_size), pair(module.stride if module.stride is not None else module.kernel_size)
        pad_h, pad_w = pair(module.padding)
        return self.node("MaxPool", [x], name, kernel_shape=kernel, strides=stride, pads=[pad_h, pad_w, pad_h, pad_w],
                         dilations=pair(module.dilation), ceil_mode=int(module.ceil_mode))

    def global_pool(self, name: str, output_size: Any, x: str) -> str:
        if output_size not in (1, (1, 1), [1, 1]):
            raise UserInputError(f"{name}: adaptive average pooling to {output_size} has no ONNX form here (only to 1x1)")
        return self.node("GlobalAveragePool", [x], name)

    def flatten(self, name: str, x: str, start_dim: int, end_dim: int) -> str:
        if end_dim != -1 or start_dim < 0:
            raise UserInputError(f"{name}: flatten({start_dim}, {end_dim}) has no ONNX form here")
        return self.node("Flatten", [x], name, axis=start_dim)

    # --- functions and methods ------------------------------------------------------------------

    def function(self, node: torch.fx.Node, args: list, kwargs: dict) -> str:
        target, name = node.target, node.name
        if target in (operator.add, operator.iadd, torch.add):
            if len(args) != 2 or not all(isinstance(a, str) for a in args) or kwargs.get("alpha", 1) != 1:
                raise UserInputError(f"{name}: only the sum of two tensors has an ONNX form here")
            return self.node("Add", args, name)
        if target in (torch.flatten,) or (node.op == "call_method" and target == "flatten"):
            start = args[1] if len(args) > 1 else kwargs.get("start_dim", 0)
            end = args[2] if len(args) > 2 else kwargs.get("end_dim", -1)
            return self.flatten(name, args[0], start, end)
        if target in (F.relu, torch.relu) or (node.op == "call_method" and target in ("relu", "relu_")):
            return self.node("Relu", [args[0]], name)
        if target is F.relu6:
            return self.clip(name, args[0], 0.0, 6.0)
        if target is F.adaptive_avg_pool2d:
            return self.global_pool(name, args[1] if len(args) > 1 else kwargs["output_size"], args[0])
        if target is F.dropout or (node.op == "call_method" and target == "contiguous"):
            return args[0]
        raise UserInputError(f"operation {node.op} {getattr(target, '__name__', target)} ({name}) has no ONNX form in gmpq export")


def _values(value: Any, env: Mapping[str, str]) -> Any:
    if isinstance(value, torch.fx.Node):
        return env[value.name]
    if isinstance(value, (tuple, list)):
        return type(value)(_values(v, env) for v in value)
    return value


def build_onnx_model(
    model: nn.Module,
    input_shape: Sequence[int],
    metadata: Mapping[str, str] | None = None,
    int4: bool = False,
    producer_version: str = "",
):
    """The ONNX ``ModelProto`` of quantized ``model`` for inputs of ``(N, *input_shape)`` (N free).

    Args:
        model: a network quantized by :func:`~gmpq_ray.core.quant.convert.apply_policy` (eval mode is used).
        input_shape: (C, H, W) of one image.
        metadata: key/value strings stored in the model's ``metadata_props``.
        int4: opset 21, weights of up to 4 bits as int4, 4-bit unsigned inputs as uint4.

    Raises:
        UserInputError: a layer's bits or an operation has no ONNX form.
    """
    onnx = require("onnx")
    for name, layer in quantized_layers(model).items():
        check_exportable(name, layer)
    was_training = model.training
    model.eval()
    try:
        graph_module = torch.fx.GraphModule(model, _Tracer().trace(model))
        builder = _Builder(onnx, int4)
        builder.used.add(INPUT_NAME)
        env: dict[str, str] = {}
        output = None
        for node in graph_module.graph.nodes:
            if node.op == "placeholder":
                if env:
                    raise UserInputError("the model takes more than one input; gmpq export handles image classifiers")
                env[node.name] = INPUT_NAME
            elif node.op == "call_module":
                env[node.name] = builder.module(node.target, model.get_submodule(node.target), env[node.args[0].name])
            elif node.op in ("call_function", "call_method"):
                env[node.name] = builder.function(node, _values(list(node.args), env), _values(dict(node.kwargs), env))
            elif node.op == "output":
                output = _values(node.args[0], env)
            else:
                raise UserInputError(f"operation {node.op} {node.target} has no ONNX form in gmpq export")
    finally:
        model.train(was_training)
    if not isinstance(output, str):
        raise UserInputError("the model's output is not one tensor; gmpq export handles image classifiers")
    builder.nodes.append(onnx.helper.make_node("Identity", [output], [OUTPUT_NAME], name=OUTPUT_NAME))
    channels, height, width = input_shape
    graph = onnx.helper.make_graph(
        builder.nodes, "gmpq_quantized",
        [onnx.helper.make_tensor_value_info(INPUT_NAME, onnx.TensorProto.FLOAT, ["N", channels, height, width])],
        [onnx.helper.make_tensor_value_info(OUTPUT_NAME, onnx.TensorProto.FLOAT, ["N", None])],
        initializer=builder.initializers,
    )
    opset = INT4_OPSET if int4 else DEFAULT_OPSET
    proto = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", opset)], ir_version=_IR_VERSION[opset],
                                   producer_name="gmpq-ray", producer_version=producer_version)
    onnx.helper.set_model_props(proto, dict(metadata or {}))
    onnx.checker.check_model(proto, full_check=True)
    return proto
