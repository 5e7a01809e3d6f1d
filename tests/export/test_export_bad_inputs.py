"""Bad input to ``gmpq export``: one ``gmpq: error:`` line, exit code 2, nothing written (docs/bad_inputs.md, rows 200+)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch

from gmpq_ray.cli import main
from gmpq_ray.core.errors import UserInputError
from gmpq_ray.core.models.registry import create_model
from gmpq_ray.core.quant.convert import apply_policy, to_supernet
from gmpq_ray.export import CHECK_FILE, export_onnx
from tests.conftest import REPO
from tests.export.export_helpers import make_digits_run, quickstart_policy

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    return make_digits_run(tmp_path_factory.mktemp("export_bad") / "finetune", fp_epochs=1, qat_epochs=0)


def assert_refused(capsys, args, expected, folder):
    code = main(args)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("gmpq: error:"), err
    assert expected in lines[0], lines[0]
    assert not list(folder.glob("*.onnx")) and not (folder / CHECK_FILE).exists() and not list(folder.glob(".*.tmp"))
    return lines[0]


def copy_run(digits_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(digits_run, run)
    return run


def test_existing_output_is_not_overwritten(digits_run, tmp_path, capsys):
    output = tmp_path / "model.onnx"
    output.write_text("earlier")
    code = main(["export", str(digits_run), "--output", str(output)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("gmpq: error: --output:") and "exists; pass --overwrite" in err
    assert output.read_text() == "earlier" and not (tmp_path / CHECK_FILE).exists()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / CHECK_FILE).write_text("{}")
    assert main(["export", str(digits_run), "--output", str(tmp_path / "other" / "model.onnx")]) == 2
    assert "export_check.json exists" in capsys.readouterr().err
    assert not (tmp_path / "other" / "model.onnx").exists()


def test_run_folder_without_final_weights(digits_run, tmp_path, capsys):
    run = copy_run(digits_run, tmp_path)
    (run / "model.pt").unlink()
    assert_refused(capsys, ["export", str(run), "--output", str(tmp_path / "m.onnx")], "holds no final weights (model.pt)", tmp_path)
    (run / "policy.json").unlink()
    assert_refused(capsys, ["export", str(run), "--output", str(tmp_path / "m.onnx")], "is not a finetune run folder", tmp_path)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ("fp_weights", "the weights do not match the policy (Error(s) in loading state_dict"),
        ("other_model", "the weights do not match the policy's model 'digits_cnn' (no features.0.conv.weight)"),
        ("narrower", "size mismatch for features.0.conv.weight"),
        ("unknown_layer", "unknown layer(s) ['features.9.conv']"),
        ("policy_for_resnet", "the policy is for 'resnet18', the job's model is 'digits_cnn'"),
    ],
)
def test_policy_that_does_not_match_the_weights(digits_run, tmp_path, capsys, change, expected):
    run = copy_run(digits_run, tmp_path)
    policy = json.loads((run / "policy.json").read_text())
    if change == "fp_weights":  # the FP teacher given instead of the finetuned model: no activation clips
        shutil.copy(run / "teacher.pt", run / "model.pt")
    elif change == "other_model":
        torch.save(create_model("resnet18", 10, 1, True).state_dict(), run / "model.pt")
    elif change == "narrower":
        from gmpq_ray.core.models.registry import DigitsCNN

        torch.save(apply_policy(DigitsCNN(10, 1, width=8), quickstart_policy()).state_dict(), run / "model.pt")
    elif change == "unknown_layer":
        policy["layers"]["features.9.conv"] = {"w_bits": 2, "a_bits": 2}
    else:
        policy["model"] = "resnet18"
    (run / "policy.json").write_text(json.dumps(policy))
    assert_refused(capsys, ["export", str(run), "--output", str(tmp_path / "m.onnx")], expected, tmp_path)


def test_bits_that_cannot_be_represented(digits_run, tmp_path, capsys):
    run = copy_run(digits_run, tmp_path)
    policy = json.loads((run / "policy.json").read_text())
    policy["layers"]["features.1.conv"]["w_bits"] = 12
    (run / "policy.json").write_text(json.dumps(policy))
    assert_refused(capsys, ["export", str(run), "--output", str(tmp_path / "m.onnx")],
                   "layers.features.1.conv.w_bits: bits must be between 2 and 8, or 32 for full precision; got 12", tmp_path)
    # A network built in code with bits no container holds, or a supernet, is refused by the API too.
    images = torch.randn(4, 1, 16, 16)
    model = apply_policy(create_model("digits_cnn", 10, 1), quickstart_policy())
    model.features[2].conv.a_bits = 16
    with pytest.raises(UserInputError, match=r"layer features.2.conv: a_bits=16 cannot be exported; ONNX Q/DQ here holds 2 to 8 bits"):
        export_onnx(model, tmp_path / "m.onnx", images)
    model.features[2].conv.a_bits = 1
    with pytest.raises(UserInputError, match="a_bits=1 cannot be exported"):
        export_onnx(model, tmp_path / "m.onnx", images)
    supernet = to_supernet(create_model("digits_cnn", 10, 1), [2, 4], [2, 4])
    with pytest.raises(UserInputError, match="is a supernet layer"):
        export_onnx(supernet, tmp_path / "m.onnx", images)
    assert not list(tmp_path.glob("*.onnx")) and not (tmp_path / CHECK_FILE).exists()


def test_state_dict_needs_policy_and_job(digits_run, tmp_path, capsys):
    assert_refused(capsys, ["export", str(digits_run / "model.pt"), "--output", str(tmp_path / "m.onnx")],
                   "a state dict needs --policy and --job", tmp_path)
    assert_refused(capsys, ["export", str(digits_run), "--policy", str(digits_run / "policy.json"), "--output", str(tmp_path / "m.onnx")],
                   "give --policy and --job only with a state dict", tmp_path)
    (tmp_path / "junk.pt").write_bytes(b"not a state dict")
    assert_refused(capsys, ["export", str(tmp_path / "junk.pt"), "--policy", str(digits_run / "policy.json"), "--job",
                            str(digits_run / "job.yaml"), "--output", str(tmp_path / "m.onnx")], "not a loadable PyTorch state dict", tmp_path)
    assert_refused(capsys, ["export", str(digits_run), "--images", "-1", "--output", str(tmp_path / "m.onnx")], "--images", tmp_path)


def test_without_the_export_extra_the_command_names_it(digits_run, tmp_path):
    """onnx and onnxruntime blocked: ``gmpq export`` says which extra to install, exit 2; the package imports without them."""
    script = textwrap.dedent(f"""
        import sys

        # None in sys.modules: "import onnx" fails, and find_spec (torch probes it) says "absent".
        for name in ("onnx", "onnxruntime", "ray"):
            sys.modules[name] = None
        import gmpq_ray.export
        from gmpq_ray.cli import main
        assert "onnx" not in [m.split(".")[0] for m, v in sys.modules.items() if v is not None]
        sys.exit(main(["export", {str(digits_run)!r}, "--output", {str(tmp_path / "m.onnx")!r}]))
    """)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == ("gmpq: error: exporting to ONNX needs the onnx package, which is not installed: "
                                     "pip install 'gmpq-ray[export]'")
    assert not (tmp_path / "m.onnx").exists()
