"""Bad input to the ``gmpq`` command: one clear line, exit code 2, no output folder written."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from gmpq_ray.cli import main
from tests.conftest import REPO, write_job


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_refused(capsys, args, expected: str, out_dir=None) -> str:
    code, _, err = run_cli(capsys, *args)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gmpq: error:"), err
    assert expected in lines[0], lines[0]
    if out_dir is not None:
        assert not out_dir.exists()
    return lines[0]


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"data__colour": "red"}, "unknown key(s) ['colour']"),
        ({"search__epochs": 0}, "search.epochs"),
        ({"search__metric": "top7"}, "search.metric"),
        ({"search__sampler": "grid"}, "'grid' is not one of"),
        ({"search__teacher_precision": "fp16"}, "search.teacher_precision: 'fp16' is not one of"),
        ({"search__params": {"lambda_x": {"value": 1.0}}}, "unknown parameter(s) ['lambda_x']"),
        ({"search__params": {"lambda_c": {"low": 2.0, "high": 1.0}}}, "low (2.0) must be below high (1.0)"),
        ({"resources__cpus_per_trial": 0}, "cpus_per_trial"),
        ({"teacher__state_dict": "missing.pt"}, "teacher.state_dict"),
        ({"search__params": {"p": {"value": 3.0}, "kappa": {"value": 24.0}}}, "search.params.p: give either p"),
        ({"search__complexity": "linear"}, "search.complexity: 'linear' is not one of"),
        ({"data__test_fraction": 0.0}, "data.test_fraction"),
        ({"data__val_fraction": 0.5, "data__test_fraction": 0.5}, "data.val_fraction: 0.5 with test_fraction 0.5 leaves no training data"),
    ],
)
def test_bad_job_fields(tmp_path, capsys, overrides, expected):
    job = write_job(tmp_path, **overrides)
    assert_refused(capsys, ["search", str(job), "--output", str(tmp_path / "out")], expected, tmp_path / "out")


@pytest.mark.parametrize(
    ("space_changes", "expected"),
    [
        ({"w_bits": [1, 2]}, "searchspace.w_bits[0]: bits must be between 2 and 8"),
        ({"a_bits": [2, 9]}, "searchspace.a_bits[1]"),
        ({"a_bits": [2, 2]}, "repeats a candidate"),
        ({"bops_limit": "1M"}, "is below the smallest policy's"),
        ({"bops_limit": "lots"}, "searchspace.bops_limit"),
        ({"model": "vgg99"}, "unknown model 'vgg99'"),
        ({"depth": 3}, "unknown key(s) ['depth']"),
        ({"fixed_layers": ["nope"]}, "fixed_layers"),
    ],
)
def test_bad_search_space(tmp_path, capsys, space_changes, expected):
    space = {"model": "digits_cnn", "input_size": 16, "num_classes": 10, "in_channels": 1,
             "w_bits": [2, 3, 4], "a_bits": [2, 3, 4], "bops_limit": "33M"}
    space.update(space_changes)
    job = write_job(tmp_path, searchspace=space)
    assert_refused(capsys, ["search", str(job), "--output", str(tmp_path / "out")], expected, tmp_path / "out")


def test_missing_files(tmp_path, capsys):
    assert_refused(capsys, ["search", str(tmp_path / "nope.yaml"), "--output", str(tmp_path / "o")], "file not found", tmp_path / "o")
    job = write_job(tmp_path, searchspace="spaces/none.yaml")
    assert_refused(capsys, ["search", str(job), "--output", str(tmp_path / "o")], "does not exist", tmp_path / "o")
    (tmp_path / "broken.yaml").write_text("name: [unclosed\n")
    assert_refused(capsys, ["search", str(tmp_path / "broken.yaml"), "--output", str(tmp_path / "o")], "not valid YAML")


def test_corrupt_teacher_state_dict(tmp_path, capsys):
    (tmp_path / "teacher.pt").write_bytes(b"not a checkpoint")
    job = write_job(tmp_path, teacher__state_dict="teacher.pt")
    assert_refused(capsys, ["search", str(job), "--output", str(tmp_path / "o")], "not a loadable PyTorch state dict", tmp_path / "o")


def test_teacher_for_another_model(tmp_path, capsys):
    import torch

    from gmpq_ray.core.models.registry import create_model

    torch.save(create_model("digits_cnn", num_classes=4, in_channels=1).state_dict(), tmp_path / "teacher.pt")
    job = write_job(tmp_path, teacher__state_dict="teacher.pt")
    assert_refused(capsys, ["search", str(job), "--output", str(tmp_path / "o")], "does not match digits_cnn", tmp_path / "o")


def test_existing_results_are_not_overwritten(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "best_policy.json").write_text("earlier run")
    job = write_job(tmp_path)
    assert_refused(capsys, ["search", str(job), "--output", str(out)], "already holds results")
    assert (out / "best_policy.json").read_text() == "earlier run"


def test_bops_matches_design_figure(capsys):
    code, out, _ = run_cli(capsys, "bops", "resnet18", "--input-size", "224", "--uniform", "32", "32")
    assert code == 0
    total = float(out.split("total:")[1].split()[0])
    assert total == pytest.approx(1853.4, rel=0.01)
    code, out, _ = run_cli(capsys, "bops", "resnet18", "--input-size", "224", "--uniform", "3", "3", "--fixed-bits", "8")
    assert float(out.split("searched layers (19):")[1].split()[0]) == pytest.approx(15.26, abs=0.01)


def test_bops_of_policy_file(tmp_path, capsys):
    from gmpq_ray.core.cost.bops import CostModel

    cost = CostModel.for_model("digits_cnn", 16, 10, 1)
    policy = cost.uniform_policy("digits_cnn", 2, 3)
    policy.save(tmp_path / "p.json")
    code, out, _ = run_cli(capsys, "bops", "digits_cnn", "--input-size", "16", "--num-classes", "10", "--in-channels", "1",
                           "--policy", str(tmp_path / "p.json"))
    assert code == 0
    assert f"{cost.searched_macs() * 6 / 1e9:.4g} G" in out


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["bops", "vgg99", "--input-size", "224", "--uniform", "4", "4"], "unknown model 'vgg99'"),
        (["bops", "resnet18", "--input-size", "224", "--uniform", "1", "4"], "--uniform W: bits must be between 2 and 8"),
        (["bops", "resnet18", "--input-size", "224", "--policy", "/nonexistent.json"], "does not exist"),
        (["bops", "resnet18", "--input-size", "0", "--uniform", "4", "4"], "--input-size"),
        (["bops", "resnet18", "--input-size", "224"], "one of the arguments --uniform --policy is required"),
        (["search", "job.yaml"], "--output"),
    ],
)
def test_bad_cli_flags(capsys, args, expected):
    try:
        code = main(args)
    except SystemExit as exit_:  # argparse's own errors end here
        code = exit_.code
    err = capsys.readouterr().err
    assert code == 2
    assert expected in err and "Traceback" not in err


def test_bops_policy_for_other_model(tmp_path, capsys):
    from gmpq_ray.core.cost.bops import CostModel

    CostModel.for_model("digits_cnn", 16, 10, 1).uniform_policy("digits_cnn", 2, 2).save(tmp_path / "p.json")
    assert_refused(capsys, ["bops", "resnet18", "--input-size", "224", "--policy", str(tmp_path / "p.json")], "policy is for 'digits_cnn'")


def test_no_traceback_from_the_console_command(tmp_path):
    space = yaml.safe_load((REPO / "searchspaces" / "digits_cnn.yaml").read_text())
    space["bops_limit"] = "1M"
    job = write_job(tmp_path, searchspace=space)
    proc = subprocess.run([sys.executable, "-m", "gmpq_ray.cli", "search", str(job), "--output", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().startswith("gmpq: error:") and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_resume_needs_a_run_folder_and_no_job(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert_refused(capsys, ["search", "--resume", str(tmp_path / "empty")], "not a gmpq run folder (no job.yaml)")
    job = write_job(tmp_path)
    assert_refused(capsys, ["search", str(job), "--resume", str(tmp_path / "empty")], "give either a job file or --resume DIR")


def test_output_that_is_a_file(tmp_path, capsys):
    (tmp_path / "out").write_text("a file")
    assert_refused(capsys, ["search", str(write_job(tmp_path)), "--output", str(tmp_path / "out")], "exists and is not a folder")
    assert (tmp_path / "out").read_text() == "a file"


def test_job_that_is_not_a_mapping(tmp_path, capsys):
    (tmp_path / "list.yaml").write_text("- name: x\n")
    assert_refused(capsys, ["search", str(tmp_path / "list.yaml"), "--output", str(tmp_path / "o")], "list.yaml", tmp_path / "o")


def test_sharded_trials_need_the_differentiable_method(tmp_path, capsys):
    job = write_job(tmp_path, search__method="sampling", resources={"cpus_per_trial": 2, "workers_per_trial": 2})
    assert_refused(capsys, ["search", str(job), "--output", str(tmp_path / "o")],
                   "resources.workers_per_trial: must be 1 with search.method 'sampling'", tmp_path / "o")


def test_bops_of_a_malformed_policy_file(tmp_path, capsys):
    (tmp_path / "p.json").write_text("{\"layers\": ")
    assert_refused(capsys, ["bops", "digits_cnn", "--input-size", "16", "--policy", str(tmp_path / "p.json")], "not valid JSON")


def test_bops_of_a_timm_model(capsys):
    pytest.importorskip("timm")
    code, out, _ = run_cli(capsys, "bops", "timm:resnet18", "--input-size", "224", "--uniform", "4", "4", "--fixed-bits", "8")
    assert code == 0 and "searched layers (19): 27.13 G" in out  # the same MACs as torchvision's resnet18
    assert_refused(capsys, ["bops", "timm:vit_tiny_patch16_224", "--input-size", "224", "--uniform", "4", "4"],
                   "has no convolution to search")


def test_offline_pretrained_teacher(tmp_path, capsys, monkeypatch):
    import urllib.error

    import torch

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda *a, **k: (_ for _ in ()).throw(urllib.error.URLError("offline")))
    job = write_job(tmp_path, teacher__state_dict="torchvision:ResNet18_Weights.IMAGENET1K_V1")
    line = assert_refused(capsys, ["search", str(job), "--output", str(tmp_path / "o")], "could not be downloaded, offline?", tmp_path / "o")
    assert "give its path as teacher.state_dict" in line
