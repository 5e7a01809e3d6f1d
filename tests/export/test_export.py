"""``gmpq export``: the digits CNN after a finetune and ResNet-18 with random weights, through onnxruntime."""

from __future__ import annotations

import json
import stat

import pytest
import torch

from gmpq_ray.cli import main
from gmpq_ray.core.cost.bops import CostModel
from gmpq_ray.core.models.registry import create_model
from gmpq_ray.core.policy import LayerBits
from gmpq_ray.core.quant.calibration import calibrate
from gmpq_ray.core.quant.convert import apply_policy
from gmpq_ray.export import CHECK_FILE, export_onnx
from tests.export.export_helpers import QUICKSTART_BITS, make_digits_run

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    return make_digits_run(tmp_path_factory.mktemp("export") / "finetune")


def _ops(path) -> list[str]:
    return [node.op_type for node in onnx.load(str(path)).graph.node]


def test_digits_run_exports_with_explicit_qdq_and_agrees(digits_run, tmp_path, capsys):
    output = tmp_path / "digits.onnx"
    assert main(["export", str(digits_run), "--output", str(output)]) == 0
    printed = capsys.readouterr().out
    assert "top-1 agreement 100.00 %" in printed and "check passed" in printed
    report = json.loads((tmp_path / CHECK_FILE).read_text())
    assert report["passed"] and report["images"] == 359 and report["top1_agreement"] >= 0.995
    assert report["max_logit_diff"] < 1e-3
    assert report["top1_onnxruntime"] == report["top1_pytorch"]
    # 2-bit weights: at most 3 distinct integers (-1, 0, 1); 4-bit at most 15; 8-bit at most 255.
    bits = [(8, 8), *QUICKSTART_BITS, (8, 8)]
    assert [(e["w_bits"], e["a_bits"]) for e in report["layers"].values()] == bits
    for entry in report["layers"].values():
        assert entry["weight_type"] == "int8" and entry["levels_ok"]
        assert entry["weight_levels"] <= 2 ** entry["w_bits"] - 1 == entry["max_levels"]
        assert -entry["weight_min"] <= 2 ** (entry["w_bits"] - 1) - 1 and entry["weight_max"] <= 2 ** (entry["w_bits"] - 1) - 1
    assert report["weights_mb_policy_bits"] < report["weights_mb_fp32"] / 8
    # Every quantized layer is explicit: one DequantizeLinear for its weight, Q -> (Clip) -> DQ for its input.
    ops = _ops(output)
    assert ops.count("QuantizeLinear") == 8 and ops.count("DequantizeLinear") == 16
    # The six 2- and 3-bit inputs, and the stem's signed 8-bit input (narrow [-127, 127]); the
    # classifier's unsigned 8-bit input needs none: uint8 is its grid.
    assert ops.count("Clip") == 7
    assert report["layers"]["features.0.conv"]["input_grid"] == "signed" and report["layers"]["fc"]["input_grid"] == "unsigned"
    model = onnx.load(str(output))
    assert model.opset_import[0].version == 13
    metadata = {p.key: p.value for p in model.metadata_props}
    assert json.loads(metadata["gmpq.policy"])["layers"]["features.6.conv"] == {"w_bits": 4, "a_bits": 3}
    assert json.loads(metadata["gmpq.bops"])["searched_g"] == pytest.approx(0.03185, rel=1e-3)
    assert metadata["gmpq.version"]
    stored = {t.name: t for t in model.graph.initializer}
    assert stored["features.1.conv.weight_quantized"].data_type == onnx.TensorProto.INT8
    assert stat.S_IMODE(output.stat().st_mode) == stat.S_IMODE((tmp_path / CHECK_FILE).stat().st_mode) == 0o644


def test_int4_stores_low_bit_weights_packed(digits_run, tmp_path):
    output = tmp_path / "digits_int4.onnx"
    assert main(["export", str(digits_run), "--output", str(output), "--int4", "--images", "100"]) == 0
    report = json.loads((tmp_path / CHECK_FILE).read_text())
    assert report["passed"] and report["images"] == 100 and report["opset"] == 21
    types = {name: entry["weight_type"] for name, entry in report["layers"].items()}
    assert types["features.1.conv"] == types["features.6.conv"] == "int4" and types["fc"] == "int8"
    stored = {t.name: t for t in onnx.load(str(output)).graph.initializer}
    assert stored["features.1.conv.weight_quantized"].data_type == onnx.TensorProto.INT4


def test_state_dict_with_policy_and_job(digits_run, tmp_path):
    output = tmp_path / "from_state.onnx"
    args = ["export", str(digits_run / "model.pt"), "--policy", str(digits_run / "policy.json"), "--job", str(digits_run / "job.yaml"),
            "--output", str(output), "--images", "64"]
    assert main(args) == 0
    assert json.loads((tmp_path / CHECK_FILE).read_text())["images"] == 64


@pytest.mark.parametrize(("name", "size", "adds", "signed_inputs"), [("resnet18", 16, 8, 1), ("mobilenet_v2", 32, 10, 18)])
def test_random_weights_at_a_small_input(tmp_path, name, size, adds, signed_inputs):
    """ResNet-18 (residual additions, downsampling convs) and MobileNetV2 (depthwise convs, ReLU6,
    signed inputs after the linear bottlenecks) with random weights, CIFAR stem, small inputs."""
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, cifar_stem=True)
    images = torch.randn(48, 3, size, size)
    with torch.no_grad():
        model(images)  # batch-norm statistics of these images, so that no layer's output vanishes
    cost = CostModel.for_model(name, size, 10, 3, True)
    choices = [(2, 2), (3, 4), (4, 3), (6, 8), (4, 4), (8, 5)]
    policy = cost.uniform_policy(name, 4, 4, LayerBits(8, 8))
    policy.layers = {layer: LayerBits(*choices[i % len(choices)]) for i, layer in enumerate(cost.searched)}
    apply_policy(model, policy)
    calibrate(model, [(images, None)], num_batches=1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = export_onnx(model, tmp_path / f"{name}.onnx", images, policy=policy, log=lambda line: None)
    # The model was left in training mode: exporting (BOPs counted, both runtimes run) changes none of its state.
    assert model.training and all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    check = result.check
    # Random weights give near-tied logits, and a float difference of one ulp in a convolution can
    # move an input onto the next grid level: agreement is high, not always 100 % (trained: above).
    assert check["images"] == 48 and check["top1_agreement"] >= 0.9 and check["max_logit_diff"] < 1.0
    assert result.passed == (check["top1_agreement"] >= 0.995)
    assert check["weights_mb_fp32"] == pytest.approx(sum(p.numel() for n, p in model.named_parameters()
                                                         if not n.endswith("clip")) * 4 / 2**20)
    layers = check["layers"]
    assert len(layers) == len(cost.searched) + 2 and all(entry["levels_ok"] for entry in layers.values())
    # The stem's standardized images, and in MobileNetV2 the output of every linear bottleneck.
    assert sum(entry.get("input_grid") == "signed" for entry in layers.values()) == signed_inputs
    ops = _ops(result.onnx_path)
    assert ops.count("Add") == adds and ops.count("QuantizeLinear") == len(layers)


def test_failed_check_exits_1_and_keeps_the_files(digits_run, tmp_path, capsys, monkeypatch):
    import gmpq_ray.export.api as api

    real = api.compare_with_onnxruntime

    def disagreeing(*args, **kwargs):
        return {**real(*args, **kwargs), "top1_agreement": 0.9}

    monkeypatch.setattr(api, "compare_with_onnxruntime", disagreeing)
    output = tmp_path / "digits.onnx"
    assert main(["export", str(digits_run), "--output", str(output), "--images", "32"]) == 1
    err = capsys.readouterr().err
    assert "gmpq: export check failed: top-1 agreement 90.00 %" in err
    assert output.is_file() and not json.loads((tmp_path / CHECK_FILE).read_text())["passed"]
