"""A finetune run folder of the digits CNN made in-process (no Ray): what ``gmpq finetune`` leaves."""

from __future__ import annotations

from pathlib import Path

import torch
import yaml

from gmpq_ray.core.cost.bops import CostModel
from gmpq_ray.core.data.bundle import DataConfig, load_digits
from gmpq_ray.core.models.registry import create_model
from gmpq_ray.core.policy import LayerBits, Policy
from gmpq_ray.core.quant.calibration import calibrate
from gmpq_ray.core.train.loop import cross_entropy, run_epoch, train_classifier
from gmpq_ray.core.train.qat import QATConfig, quantized_copy
from gmpq_ray.finetune.job import FinetuneJob, job_to_dict
from gmpq_ray.finetune.outputs import JOB_FILE, MODEL_FILE, POLICY_FILE

# The quickstart's best policy (README): w/a bits of the six searched layers, fixed layers at 8/8.
QUICKSTART_BITS = [(2, 2), (2, 2), (2, 2), (2, 2), (2, 3), (4, 3)]


def quickstart_policy() -> Policy:
    cost = CostModel.for_model("digits_cnn", 16, 10, 1)
    layers = {name: LayerBits(w, a) for name, (w, a) in zip(cost.searched, QUICKSTART_BITS)}
    return Policy("digits_cnn", layers, {name: LayerBits(8, 8) for name in cost.fixed_layers}, 16)


def make_digits_run(folder: Path, fp_epochs: int = 2, qat_epochs: int = 1) -> Path:
    """Train the FP digits CNN, QAT it at the quickstart's policy, and write a finetune run folder."""
    torch.manual_seed(0)
    data = load_digits(16)
    train_loader, val_loader = data.loaders(64)
    teacher = create_model("digits_cnn", 10, 1)
    train_classifier(teacher, train_loader, val_loader, fp_epochs, progress=False, log=None)
    policy = quickstart_policy()
    model = quantized_copy(teacher, policy)
    calibrate(model, train_loader)
    config = QATConfig()  # its lr and weight decay; the epochs are this helper's (0: calibrated only)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=0.9, weight_decay=config.weight_decay)
    for _ in range(qat_epochs):
        run_epoch(model, train_loader, cross_entropy, [optimizer], "cpu", desc="qat")
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(teacher.state_dict(), folder / "teacher.pt")
    policy.save(folder / POLICY_FILE)
    job = FinetuneJob(fp_state_dict=str(folder / "teacher.pt"), name="digits-finetune", model="digits_cnn",
                      input_size=16, data=DataConfig(name="digits", image_size=16))
    (folder / JOB_FILE).write_text(yaml.safe_dump(job_to_dict(job), sort_keys=False))
    torch.save(model.state_dict(), folder / MODEL_FILE)
    return folder
