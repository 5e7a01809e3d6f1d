"""``export: true`` in a finetune job: ``gmpq finetune`` (and each winner's finetune in ``gmpq ablate``) writes the export."""

from __future__ import annotations

import json

import pytest
import yaml

import gmpq_ray.api
from gmpq_ray.core.errors import UserInputError
from gmpq_ray.experiments.ablate_job import load_ablation_job
from gmpq_ray.export import CHECK_FILE
from gmpq_ray.finetune.job import load_finetune_job
from tests.conftest import REPO
from tests.finetune.finetune_helpers import make_image_folder, mixed_policy, save_fp_weights, write_finetune_job

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")


@pytest.mark.ray
def test_finetune_with_export_writes_the_checked_onnx_model(tmp_path, ray_local):
    root = make_image_folder(tmp_path / "data")
    fp = save_fp_weights(tmp_path / "fp.pt")
    mixed_policy().save(tmp_path / "policy.json")
    job = write_finetune_job(tmp_path, root, fp, epochs=1, workers=1, export=True)
    lines = []
    result = gmpq_ray.api.finetune(tmp_path / "policy.json", job, tmp_path / "out", log=lines.append)
    assert result.finished and result.export is not None and result.export.passed
    out = tmp_path / "out"
    assert (out / "model.onnx").is_file() and result.export.onnx_path == out / "model.onnx"
    report = json.loads((out / CHECK_FILE).read_text())
    assert report["images"] == 9 and report["top1_agreement"] == 1.0  # the tree's 3 x 3 validation images
    assert report["top1_onnxruntime"] == pytest.approx(result.top1)
    assert any("top-1 agreement 100.00 %" in line for line in lines)


def test_export_needs_the_extra_when_the_job_asks(tmp_path, monkeypatch):
    import gmpq_ray.export._deps as deps

    job = write_finetune_job(tmp_path, tmp_path, save_fp_weights(tmp_path / "fp.pt"), export=True)
    assert load_finetune_job(job).export
    monkeypatch.setattr(deps, "extra_installed", lambda: False)
    with pytest.raises(UserInputError, match=r"export: needs onnx and onnxruntime: pip install 'gmpq-ray\[export\]'"):
        load_finetune_job(job)


def test_ablation_winners_are_exported_when_the_target_finetune_asks(tmp_path):
    data = yaml.safe_load((REPO / "jobs" / "dataset_transfer_quickstart.yaml").read_text())
    data["architectures"][0]["searchspace"] = str(REPO / "searchspaces" / "digits_cnn.yaml")
    data["target"]["finetune"] = {**data["target"].get("finetune", {}), "export": True}
    path = tmp_path / "ablation.yaml"
    path.write_text(yaml.safe_dump(data))
    job = load_ablation_job(path)
    assert job.pairs and all(pair.finetune.export for pair in job.pairs)
