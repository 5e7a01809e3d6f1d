"""``gmpq ablate``: a reduced dataset-transfer ablation on the digits, its outputs, and bad jobs."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from gmpq_ray.cli import main
from gmpq_ray.core.cost.bops import CostModel
from gmpq_ray.core.policy import Policy
from gmpq_ray.experiments.ablate import run_ablation
from gmpq_ray.report.transfer import FULL_PRECISION, plot_transfer_bits, transfer_markdown
from tests.conftest import REPO

PNG = b"\x89PNG\r\n\x1a\n"


def write_ablation_job(folder: Path, **changes) -> Path:
    """The quickstart ablation, reduced: 2 small data sets, 1 trial of 2 epochs each, 1 finetune epoch."""
    job = yaml.safe_load((REPO / "jobs" / "dataset_transfer_quickstart.yaml").read_text())
    job["architectures"][0]["searchspace"] = str(REPO / "searchspaces" / "digits_cnn.yaml")
    job["search_datasets"] = job["search_datasets"][1:]  # digits 5-9, digits 30%
    job["teacher"] = {"epochs": 1, "lr": 0.05}
    job["search"].update(epochs=2, num_trials=1, max_concurrent_trials=1, bops_warmup_epochs=3)
    job["target"].update(fp_epochs=1, finetune={"epochs": 1, "lr": 0.01, "distill": True, "workers": 1})
    job.update(changes)
    path = folder / "ablation.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


@pytest.mark.ray
def test_reduced_quickstart_writes_the_table_and_figures(tmp_path, ray_local):
    out = tmp_path / "transfer"
    table = run_ablation(write_ablation_job(tmp_path), out, log=lambda _: None)
    # The searched columns, then the baselines they are read against (same limit, same finetune).
    assert list(table.search_dataset) == [FULL_PRECISION, "digits 5-9", "digits 30%", "best uniform", "random feasible"]
    assert (table.error == "").all() and table.top1.between(0, 1).all()
    # Every top-1 is on the digits' held-out test split: the searches selected on val, the finetunes ran fixed epochs.
    assert (table.split == "test").all()
    saved = pd.read_csv(out / "transfer.csv", keep_default_na=False)
    assert list(saved.search_dataset) == list(table.search_dataset)
    cost = CostModel.for_model("digits_cnn", 16, 10, 1)
    assert saved.bops_total_g[0] == pytest.approx(cost.uniform_bops(32, 32) / 1e9)
    for row in saved.iloc[3:].itertuples():
        assert row.bops_searched_g <= 0.033 + 1e-12
        assert (out / "digits_cnn" / row.search_dataset.replace(" ", "_") / "finetune" / "final_metrics.json").is_file()
    for row in saved.iloc[1:3].itertuples():
        folder = out / "digits_cnn" / row.search_dataset.replace(" ", "_").replace("%", "")
        policy = Policy.load(folder / "search" / "best_policy.json")
        # The searches run at once: each run folder holds its own trial and experiment state only
        # (Tune staged two experiments started in one second in one folder, and synced it to both).
        assert len(list((folder / "search" / "tune").glob("supernet_trial_*"))) == 1
        assert len(list((folder / "search" / "tune").glob("experiment_state-*.json"))) == 1
        assert (row.bops_searched_g * 1e9, row.bops_total_g * 1e9) == pytest.approx(cost.policy_bops(policy))
        assert row.bops_searched_g <= 0.033 + 1e-12
        assert (folder / "finetune" / "final_metrics.json").is_file() and (folder / "finetune" / "model.pt").is_file()
        final = json.loads((folder / "finetune" / "final_metrics.json").read_text())
        assert final["split"] == "test" and final["top1"] == pytest.approx(row.top1) and 0 <= final["val_top1"] <= 1
        epochs = pd.read_csv(folder / "finetune" / "metrics.csv")
        assert epochs.top1.iloc[-1] == pytest.approx(final["val_top1"])  # every epoch on val, the last one on test too
    markdown = (out / "transfer.md").read_text()
    assert ("| Architecture | Full-precision top-1 (test) | BOPs (G) | digits 5-9 top-1 (test) | BOPs (G) | "
            "digits 30% top-1 (test) | BOPs (G) | best uniform top-1 (test) | BOPs (G) | random feasible top-1 (test) | "
            "BOPs (G) |") in markdown
    assert "Top-1 in % on the target's held-out test split (no search or finetune selected on it)." in markdown
    assert json.loads((out / "digits_cnn" / "fp_metrics.json").read_text())["split"] == "test"
    assert markdown.count("| digits CNN |") == 1
    assert (out / "bits_digits_cnn.png").read_bytes()[:8] == PNG
    assert (out / "digits_cnn" / "fp_target.pt").is_file()
    # The two searches ran at the same time: their trials' training windows overlap.
    windows = [search_window(out / "digits_cnn" / name / "search") for name in ("digits_5-9", "digits_30")]
    assert max(start for start, _ in windows) < min(end for _, end in windows), windows


def search_window(folder: Path) -> tuple[float, float]:
    """(start, end) wall-clock times of a search's trial reports, from Tune's result.json files."""
    import json

    results = [json.loads(line) for path in (folder / "tune").glob("*/result.json")
               for line in path.read_text().splitlines() if line.strip()]
    return min(r["timestamp"] - r["time_this_iter_s"] for r in results), max(r["timestamp"] for r in results)


def test_markdown_table_matches_the_appendix_layout(tmp_path):
    rows = [
        {"architecture": "ResNet18", "search_dataset": FULL_PRECISION, "top1": 0.697, "bops_searched_g": 1736.2, "bops_total_g": 1853.4},
        {"architecture": "ResNet18", "search_dataset": "CIFAR-10", "top1": 0.699, "bops_searched_g": 15.3, "bops_total_g": 22.9},
        {"architecture": "ResNet18", "search_dataset": "Cars", "top1": None, "bops_searched_g": None, "bops_total_g": None},
    ]
    markdown = transfer_markdown(pd.DataFrame(rows), "t")
    assert "| ResNet18 | 69.7 | 1853.4 | 69.9 | 15.3 | - | - |" in markdown
    assert "| Architecture | Full-precision top-1 | BOPs (G) | CIFAR-10 top-1 | BOPs (G) |" in markdown
    # With the split each top-1 is on (transfer.csv's column), the headers name it.
    with_split = pd.DataFrame([{**row, "split": "val" if row["top1"] else ""} for row in rows])
    assert "| Architecture | Full-precision top-1 (val) | BOPs (G) | CIFAR-10 top-1 (val) | BOPs (G) | Cars top-1 (val) |" \
        in transfer_markdown(with_split, "t")


def test_the_reported_split_follows_the_target(tmp_path):
    """The notes of transfer.md name the split: test where the target holds one out, else val."""
    from gmpq_ray.experiments.ablate import _notes
    from gmpq_ray.experiments.ablate_job import load_ablation_job

    job = load_ablation_job(write_ablation_job(tmp_path))
    assert job.config.target.data.has_test
    assert _notes(job, 60)[0].startswith("Top-1 in % on the target's held-out test split")
    job.config.target.data = dataclasses.replace(job.config.target.data, name="cifar10", root=str(tmp_path))
    assert _notes(job, 60)[0].startswith("Top-1 in % on the target's validation split (it holds no test split out)")


def test_bits_figure_has_a_series_per_data_set(tmp_path):
    cost = CostModel.for_model("resnet18", 224)
    policies = {name: cost.uniform_policy("resnet18", w, a) for name, w, a in (("CIFAR-10", 3, 4), ("Cars", 2, 3), ("Pets", 4, 2))}
    path = plot_transfer_bits(policies, tmp_path / "bits.png", "ResNet18")
    assert path.read_bytes()[:8] == PNG and path.stat().st_size > 10_000


def refused(capsys, *args: str) -> str:
    code = main(list(args))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("gmpq: error:"), err
    return err[0]


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"colour": "red"}, "unknown key(s) ['colour']"),
        ({"search_datasets": []}, "search_datasets: needs at least one data set"),
        ({"target": {"data": {"name": "digits"}, "fp_epochs": 0}}, "give fp_state_dict (FP weights on the target) or target.fp_epochs >= 1"),
        ({"target": {"data": {"name": "digits"}, "fp_epochs": 1, "finetune": {"model": "resnet18"}}}, "target.finetune: ['model'] are set per"),
        ({"target": {"data": {"name": "digits"}, "fp_epochs": 1, "finetune": {"workers": 0}}}, "workers: must be at least 1"),
        ({"target": {"data": {"name": "imagenet", "root": "nowhere"}, "fp_epochs": 1}}, "does not exist; expected ROOT/train/<class>/*.jpg"),
        ({"search": {"epochs": 0}}, "search.epochs"),
    ],
)
def test_bad_ablation_jobs_are_refused_before_anything_runs(tmp_path, capsys, changes, expected):
    job = write_ablation_job(tmp_path, **changes)
    line = refused(capsys, "ablate", str(job), "--output", str(tmp_path / "o"))
    assert expected in line and not (tmp_path / "o").exists()


def test_duplicate_labels_and_missing_fp_weights(tmp_path, capsys):
    job = yaml.safe_load(write_ablation_job(tmp_path).read_text())
    job["search_datasets"].append(dict(job["search_datasets"][0]))
    (tmp_path / "dup.yaml").write_text(yaml.safe_dump(job))
    assert "labels must differ" in refused(capsys, "ablate", str(tmp_path / "dup.yaml"), "--output", str(tmp_path / "o"))
    job = write_ablation_job(tmp_path, architectures=[{"label": "cnn", "searchspace": str(REPO / "searchspaces" / "digits_cnn.yaml"),
                                                       "fp_state_dict": "missing.pt"}])
    assert "fp_state_dict" in refused(capsys, "ablate", str(job), "--output", str(tmp_path / "o"))


def test_an_ablation_can_search_with_the_proxy_method(tmp_path):
    """Every pair's search is a search job: ``search: {method: proxy}`` reaches each one (run end to
    end by hand: one pair searched and finetuned in 1.4 min on the 2-core machine)."""
    from gmpq_ray.experiments.ablate import _notes
    from gmpq_ray.experiments.ablate_job import load_ablation_job

    raw = yaml.safe_load((REPO / "jobs" / "dataset_transfer_quickstart.yaml").read_text())
    raw["architectures"][0]["searchspace"] = str(REPO / "searchspaces" / "digits_cnn.yaml")
    raw["search"] = {"method": "proxy", "proxy": "arc", "proxy_batches": 2}
    path = tmp_path / "ablate.yaml"
    path.write_text(yaml.safe_dump(raw))
    job = load_ablation_job(path)
    assert {(p.search.search.method, p.search.search.proxy) for p in job.pairs} == {("proxy", "arc")}
    assert "proxy (arc, 2 batches), one solve per data set" in _notes(job, 60)[1]
