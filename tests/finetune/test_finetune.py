"""``gmpq finetune``: a real Ray Train run on 2 CPU workers, interrupted and resumed; bad input."""

from __future__ import annotations

import json
import shutil
import time

import pandas as pd
import pytest
import torch
import yaml

import gmpq_ray.api
from gmpq_ray.cli import main
from gmpq_ray.core.cost.bops import CostModel
from gmpq_ray.core.errors import UserInputError
from gmpq_ray.core.models.registry import create_model
from gmpq_ray.core.policy import LayerBits, Policy
from gmpq_ray.core.quant.convert import apply_policy
from gmpq_ray.core.quant.layers import QuantConv2d, QuantLinear
from gmpq_ray.finetune.job import job_to_dict, load_finetune_job
from tests.finetune.finetune_helpers import (
    CLASSES,
    IMAGE_SIZE,
    make_image_folder,
    mixed_policy,
    save_fp_weights,
    write_finetune_job,
)


@pytest.fixture
def setup(tmp_path):
    """(policy path, job path) of a 2-worker finetune of the digits CNN on a 3-class ImageFolder tree."""
    root = make_image_folder(tmp_path / "data")
    fp = save_fp_weights(tmp_path / "fp.pt")
    mixed_policy().save(tmp_path / "policy.json")
    return tmp_path / "policy.json", write_finetune_job(tmp_path, root, fp, stop_after_epochs=1)


def refused(capsys, *args: str) -> str:
    code = main(list(args))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("gmpq: error:"), err
    return err[0]


@pytest.mark.ray
def test_interrupted_finetune_resumes_from_its_ray_train_checkpoint(setup, tmp_path, ray_local):
    policy_path, job_path = setup
    out = tmp_path / "out"
    first = gmpq_ray.api.finetune(policy_path, job_path, out, log=lambda _: None)
    assert not first.finished and list(first.history.epoch) == [1]
    assert (out / "train" / "epoch_0001" / "state.pt").is_file()
    assert not (out / "final_metrics.json").exists() and not (out / "model.pt").exists()
    # Without --resume the interrupted run is neither overwritten nor silently continued.
    with pytest.raises(UserInputError, match="interrupted finetune"):
        gmpq_ray.api.finetune(policy_path, job_path, out, log=lambda _: None)

    second = gmpq_ray.api.finetune(policy_path, job_path, out, resume=True, log=lambda _: None)
    assert second.finished
    history = pd.read_csv(out / "metrics.csv")
    assert list(history.epoch) == [1, 2] and set(history.workers) == {2}
    # Epoch 1's row is the one the first run recorded (read from its checkpoint, not re-run),
    # and epoch 2 follows the cosine schedule of a 2-epoch run.
    assert history.iloc[0].to_dict() == pytest.approx(first.history.iloc[0].to_dict())
    assert history.lr.tolist() == pytest.approx([0.01, 0.005])
    assert sorted(p.name for p in (out / "train").glob("epoch_*")) == ["epoch_0001", "epoch_0002"]

    final = json.loads((out / "final_metrics.json").read_text())
    policy = Policy.load(policy_path)
    searched, total = CostModel.for_model("digits_cnn", IMAGE_SIZE, len(CLASSES), 3).policy_bops(policy)
    assert (final["bops_searched"], final["bops_total"]) == (searched, total)
    assert final["epochs"] == 2 and 0 <= final["top1"] <= final["top5"] <= 1
    assert final["top1"] == pytest.approx(history.top1.iloc[-1])

    # Every layer with b-bit weights holds at most 2^b distinct weight values per output channel.
    model = apply_policy(create_model("digits_cnn", len(CLASSES), 3), policy)
    model.load_state_dict(torch.load(out / "model.pt", weights_only=True))
    layers = [m for m in model.modules() if isinstance(m, (QuantConv2d, QuantLinear))]
    assert len(layers) == 8
    for layer in layers:
        weights = layer.quantized_weight().detach().flatten(1)
        assert max(len(channel.unique()) for channel in weights) <= 2**layer.w_bits
    # The finetune changed the weights it started from.
    start = torch.load(tmp_path / "fp.pt", weights_only=True)
    assert not torch.equal(model.features[1].conv.weight, start["features.1.conv.weight"])

    # A run folder whose Ray Train snapshot lists a checkpoint that is gone: one clear line.
    shutil.rmtree(out / "train" / "epoch_0002")
    longer = write_finetune_job(tmp_path, tmp_path / "data", tmp_path / "fp.pt", stop_after_epochs=1, epochs=3)
    with pytest.raises(UserInputError, match=r"cannot be resumed \(The run snapshot contains a reference to a checkpoint"):
        gmpq_ray.api.finetune(policy_path, longer, out, resume=True, log=lambda _: None)


@pytest.mark.ray
def test_more_workers_than_a_local_ray_has(setup, tmp_path, capsys, ray_local):
    policy_path, job_path = setup
    line = refused(capsys, "finetune", str(policy_path), str(job_path), "--output", str(tmp_path / "o"), "--workers", "3")
    assert "3 worker(s) need 3 CPU; this Ray has 2 CPU" in line and not (tmp_path / "o").exists()
    assert ray_local.is_initialized()  # not ours to shut down


@pytest.mark.ray
def test_unreadable_images_end_in_one_line_from_the_worker(tmp_path, capsys, ray_local):
    root = make_image_folder(tmp_path / "data")
    for image in (root / "train" / "circle").iterdir():  # the layout is fine, the files are cut short
        image.write_bytes(image.read_bytes()[:60])
    mixed_policy().save(tmp_path / "policy.json")
    job = write_finetune_job(tmp_path, root, save_fp_weights(tmp_path / "fp.pt"), workers=1)
    line = refused(capsys, "finetune", str(tmp_path / "policy.json"), str(job), "--output", str(tmp_path / "o"))
    # The worker's error names the image.
    assert line.startswith(f"gmpq: error: finetune worker 0: {root / 'train' / 'circle'}/") and ".png: not a readable image" in line


def test_policy_for_another_model(setup, tmp_path, capsys):
    _, job_path = setup
    other = CostModel.for_model("resnet18", 224).uniform_policy("resnet18", 4, 4, LayerBits(8, 8))
    other.save(tmp_path / "resnet.json")
    line = refused(capsys, "finetune", str(tmp_path / "resnet.json"), str(job_path), "--output", str(tmp_path / "o"))
    assert "the policy is for 'resnet18'" in line and not (tmp_path / "o").exists()
    # Right model name, wrong layers.
    policy = mixed_policy()
    policy.layers["features.9.conv"] = LayerBits(2, 2)
    policy.save(tmp_path / "extra.json")
    line = refused(capsys, "finetune", str(tmp_path / "extra.json"), str(job_path), "--output", str(tmp_path / "o"))
    assert "unknown layer(s) ['features.9.conv']" in line


def test_missing_or_malformed_data_root(setup, tmp_path, capsys):
    policy_path, _ = setup
    job = write_finetune_job(tmp_path, tmp_path / "nowhere", tmp_path / "fp.pt")
    line = refused(capsys, "finetune", str(policy_path), str(job), "--output", str(tmp_path / "o"))
    assert "nowhere does not exist" in line and "ROOT/train/<class>/*.jpg" in line
    (tmp_path / "flat").mkdir()
    job = write_finetune_job(tmp_path, tmp_path / "flat", tmp_path / "fp.pt")
    line = refused(capsys, "finetune", str(policy_path), str(job), "--output", str(tmp_path / "o"))
    assert "no train/ folder" in line and not (tmp_path / "o").exists()


@pytest.mark.parametrize(("flags", "expected"), [(["--workers", "0"], "workers: must be at least 1"),
                                                  (["--gpus-per-worker", "-1"], "gpus_per_worker")])
def test_bad_resources(setup, tmp_path, capsys, flags, expected):
    policy_path, job_path = setup
    line = refused(capsys, "finetune", str(policy_path), str(job_path), "--output", str(tmp_path / "o"), *flags)
    assert expected in line


def test_bad_job_fields(setup, tmp_path, capsys):
    policy_path, _ = setup
    for overrides, expected in [({"epochs": 0}, "finetune.yaml: epochs: must be at least 1"), ({"optimizer": "adam"}, "unknown key(s) ['optimizer']"),
                                ({"data": {"name": "imagenet"}}, "data.root"), ({"model": "vgg99"}, "unknown model 'vgg99'")]:
        job = write_finetune_job(tmp_path, tmp_path / "data", tmp_path / "fp.pt", **overrides)
        assert expected in refused(capsys, "finetune", str(policy_path), str(job), "--output", str(tmp_path / "o"))


def test_corrupted_or_mismatched_fp_state_dict(setup, tmp_path, capsys):
    policy_path, _ = setup
    (tmp_path / "broken.pt").write_bytes(b"not a state dict")
    job = write_finetune_job(tmp_path, tmp_path / "data", tmp_path / "broken.pt")
    assert "not a loadable PyTorch state dict" in refused(capsys, "finetune", str(policy_path), str(job), "--output", str(tmp_path / "o"))
    save_fp_weights(tmp_path / "ten.pt", num_classes=10)
    job = write_finetune_job(tmp_path, tmp_path / "data", tmp_path / "ten.pt")
    assert "does not match the model" in refused(capsys, "finetune", str(policy_path), str(job), "--output", str(tmp_path / "o"))
    job = write_finetune_job(tmp_path, tmp_path / "data", tmp_path / "missing.pt")
    assert "fp_state_dict" in refused(capsys, "finetune", str(policy_path), str(job), "--output", str(tmp_path / "o"))


def test_corrupted_checkpoint_is_refused_before_any_worker_starts(setup, tmp_path, capsys):
    policy_path, job_path = setup
    out = tmp_path / "out"
    # The run folder an interrupted finetune leaves, with its checkpoint cut short.
    (out / "train" / "epoch_0001").mkdir(parents=True)
    Policy.load(policy_path).save(out / "policy.json")
    (out / "job.yaml").write_text(yaml.safe_dump(job_to_dict(load_finetune_job(job_path))))
    (out / "train" / "epoch_0001" / "state.pt").write_bytes(b"\x80\x02truncated")
    line = refused(capsys, "finetune", str(policy_path), str(job_path), "--output", str(out), "--resume")
    assert "epoch_0001/state.pt is unreadable" in line and "--overwrite" in line
    # A resume with another policy is refused too.
    other = mixed_policy()
    other.layers[next(iter(other.layers))] = LayerBits(4, 4)
    other.save(tmp_path / "other.json")
    assert "the policy differs" in refused(capsys, "finetune", str(tmp_path / "other.json"), str(job_path), "--output", str(out), "--resume")


def test_gpu_recipe_runs_and_agrees_with_float32():
    """bf16 autocast, channels_last and float32 quantizer inputs (the GPU path), checked on the CPU."""
    from gmpq_ray.core.quant.calibration import calibrate
    from gmpq_ray.core.train.finetuning import QATLoss, deployment_model, quantize_activations_in_float32, topk_metrics, topk_sums
    from gmpq_ray.core.train.loop import run_epoch

    torch.manual_seed(0)
    fp = create_model("digits_cnn", len(CLASSES), 3).state_dict()
    model = deployment_model("digits_cnn", len(CLASSES), 3, False, mixed_policy(), fp)
    images, labels = torch.randn(16, 3, IMAGE_SIZE, IMAGE_SIZE), torch.randint(0, len(CLASSES), (16,))
    calibrate(model, [(images, labels)])
    reference = QATLoss()(model, images, labels)[1]
    model.to(memory_format=torch.channels_last)
    quantize_activations_in_float32(model)
    teacher = create_model("digits_cnn", len(CLASSES), 3)
    teacher.load_state_dict(fp)
    loss = QATLoss(teacher, autocast=torch.bfloat16, channels_last=True)
    value, logits = loss(model, images, labels)
    assert logits.dtype == torch.float32 and (logits - reference).abs().max() < 0.05
    # The student starts as the teacher: the KL half of the loss is ~0, the CE half is CE / 2.
    assert value.item() == pytest.approx(0.5 * torch.nn.functional.cross_entropy(reference, labels).item(), abs=0.02)
    run_epoch(model, [(images, labels)], loss, [torch.optim.SGD(model.parameters(), lr=0.01)])
    metrics = topk_metrics(topk_sums(model, [(images, labels)], loss))
    assert 0 <= metrics["top1"] <= metrics["top5"] == 1.0


@pytest.mark.ray
def test_ctrl_c_ends_a_finetune_resumably(tmp_path):
    import os
    import signal
    import subprocess
    import sys

    import psutil

    from gmpq_ray.finetune.outputs import latest_checkpoint

    root = make_image_folder(tmp_path / "data")
    fp = save_fp_weights(tmp_path / "fp.pt")
    policy_path = tmp_path / "policy.json"
    mixed_policy().save(policy_path)
    job = write_finetune_job(tmp_path, root, fp, epochs=4, workers=1)
    out = tmp_path / "ft"
    driver = subprocess.Popen([sys.executable, "-m", "gmpq_ray.cli", "finetune", str(policy_path), str(job), "--output", str(out)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    started: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 240
        while latest_checkpoint(out) is None and time.monotonic() < deadline:
            started.extend(p for p in psutil.Process(driver.pid).children(recursive=True) if p not in started)
            time.sleep(0.2)
        assert latest_checkpoint(out) is not None, "no epoch finished"
        os.kill(driver.pid, signal.SIGINT)
        _, stderr = driver.communicate(timeout=120)
    finally:
        for process in started:
            try:
                process.kill()
            except psutil.NoSuchProcess:
                pass
    assert driver.returncode == 130, stderr[-2000:]
    last = stderr.strip().splitlines()[-1]
    assert "finetune interrupted by SIGINT" in last and f"--output {out} --resume" in last
    assert not (out / "final_metrics.json").exists()
    result = gmpq_ray.api.finetune(policy_path, job, out, resume=True, log=lambda _: None)
    assert result.finished and list(result.history.epoch) == [1, 2, 3, 4]


def test_offline_fp_weights_by_name(setup, tmp_path, capsys, monkeypatch):
    import urllib.error

    policy_path, _ = setup
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda *a, **k: (_ for _ in ()).throw(urllib.error.URLError("offline")))
    job = write_finetune_job(tmp_path, tmp_path / "data", "torchvision:ResNet18_Weights.IMAGENET1K_V1")
    line = refused(capsys, "finetune", str(policy_path), str(job), "--output", str(tmp_path / "o"))
    assert "could not be downloaded, offline?" in line and "give its path as fp_state_dict" in line
    assert not (tmp_path / "o").exists()


def test_final_metrics_name_the_split_they_are_on(tmp_path):
    """``report_split: test``: metrics.csv keeps every epoch on val, final_metrics.json reports the last epoch's
    test numbers where the worker evaluated them (the data set has a test split), else val's."""
    from gmpq_ray.finetune.job import FinetuneJob
    from gmpq_ray.finetune.outputs import STATE_FILE, checkpoint_name, write_outputs

    def run(history: list[dict], split: str) -> dict:
        out = tmp_path / split / str(len(history[-1]))
        (out / "train" / checkpoint_name(2)).mkdir(parents=True)
        torch.save({"model": {}, "optimizer": {}, "epoch": 2, "history": history}, out / "train" / checkpoint_name(2) / STATE_FILE)
        job = FinetuneJob(fp_state_dict="fp.pt", model="digits_cnn", epochs=2, report_split=split)
        result = write_outputs(out, job, (10**9, 2 * 10**9), lambda _: None, 1.0)
        final = json.loads((out / "final_metrics.json").read_text())
        assert (result.top1, result.top5) == (final["top1"], final["top5"])
        assert list(pd.read_csv(out / "metrics.csv").top1) == [e["top1"] for e in history]
        return final

    epoch = {"lr": 0.01, "train_loss": 0.1, "train_top1": 0.9, "val_loss": 0.2, "top1": 0.8, "top5": 0.95,
             "epoch_seconds": 1.0, "workers": 1}
    history = [{**epoch, "epoch": 1, "top1": 0.7}, {**epoch, "epoch": 2, "test_loss": 0.3, "test_top1": 0.75, "test_top5": 0.9}]
    final = run(history, "test")
    assert (final["split"], final["top1"], final["top5"], final["val_top1"], final["val_top5"]) == ("test", 0.75, 0.9, 0.8, 0.95)
    final = run(history[:1] + [{**epoch, "epoch": 2}], "val")  # no test numbers (no test split, or report_split val)
    assert (final["split"], final["top1"], final["val_top1"]) == ("val", 0.8, 0.8)
