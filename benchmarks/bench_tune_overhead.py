"""What Ray Tune adds to a search, measured side by side on the machine it runs on.

Three measurements, one Ray session:

1. **Per trial**: N trials of an empty function trainable (one report, no work), one at a time,
   through ``tune.Tuner``: wall time per trial with actors reused between trials (as ``gmpq
   search`` runs them) and with a new actor per trial, against calling the function in-process.
   This is Tune's actor start, scheduling, result handling and experiment-state saving.
2. **Per report**: one trial reporting R times with no work in between against one reporting
   once; the difference over R - 1 is what one ``tune.report`` costs (metrics only, and with a
   small checkpoint as the GMPQ trials write every epoch).
3. **Throughput**: the same real GMPQ search (differentiable trials on the embedded digits,
   teacher loaded, one CPU per trial) run with one trial at a time and with N at a time:
   trials per hour, and the speed-up of N concurrent trials over one.

    python benchmarks/bench_tune_overhead.py --trials 6 --reports 200 --concurrent 2
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import ray
import torch
import yaml
from ray import tune

from gmpq_ray.core.data.bundle import DataConfig
from gmpq_ray.core.models.registry import create_model
from gmpq_ray.core.train.loop import train_classifier
from gmpq_ray.search.runner import run_search


def empty_trial(config: dict) -> None:
    """Reports ``config['reports']`` times, optionally with a checkpoint, and does nothing else."""
    for step in range(config["reports"]):
        if config["checkpoint"]:
            with tempfile.TemporaryDirectory() as folder:
                torch.save({"step": step}, Path(folder) / "state.pt")
                tune.report({"step": step}, checkpoint=tune.Checkpoint.from_directory(folder))
        else:
            tune.report({"step": step})


def tune_wall(folder: Path, name: str, trials: int, reports: int, checkpoint: bool = False, reuse_actors: bool = True) -> float:
    """Wall seconds of ``trials`` empty trials, one at a time, each reporting ``reports`` times
    (actors reused between trials, as ``gmpq search`` runs them, unless ``reuse_actors`` is False)."""
    tuner = tune.Tuner(
        tune.with_resources(empty_trial, {"cpu": 1}),
        param_space={"reports": reports, "checkpoint": checkpoint},
        tune_config=tune.TuneConfig(num_samples=trials, max_concurrent_trials=1, reuse_actors=reuse_actors),
        run_config=tune.RunConfig(name=name, storage_path=str(folder), verbose=0),
    )
    start = time.perf_counter()
    grid = tuner.fit()
    seconds = time.perf_counter() - start
    assert not grid.errors, grid.errors
    return seconds


def in_process_seconds(trials: int) -> float:
    """The same empty work without Tune: the function body, called ``trials`` times."""
    start = time.perf_counter()
    for _ in range(trials):
        {"step": 0}  # noqa: B018 - the whole of an empty trial's own work
    return time.perf_counter() - start


def search_job(folder: Path, name: str, trials: int, concurrent: int, epochs: int, teacher: Path) -> Path:
    """A differentiable digits search of ``trials`` fixed-hyper-parameter trials, ``concurrent`` at a time."""
    space = yaml.safe_load((Path(__file__).resolve().parent.parent / "searchspaces" / "digits_cnn.yaml").read_text())
    job = {
        "name": f"bench-{name}",
        "searchspace": space,
        "data": {"name": "digits", "image_size": 16, "batch_size": 64},
        "teacher": {"state_dict": str(teacher)},
        "search": {"method": "differentiable", "epochs": epochs, "num_trials": trials,
                   "max_concurrent_trials": concurrent, "pruner": {"type": "none"},
                   # Nothing stops a trial early: each one costs the same in both runs.
                   "bops_warmup_epochs": epochs + 1,
                   "params": {"lambda_attr": {"value": 20.0}, "lambda_c": {"value": 0.3},
                              "lr_weights": {"value": 0.02}, "lr_alpha": {"value": 0.3}}},
        "resources": {"cpus_per_trial": 1},
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def digits_teacher(folder: Path) -> Path:
    """A briefly trained FP teacher, shared by both throughput runs so neither pays for it."""
    torch.manual_seed(0)
    data = DataConfig(name="digits", image_size=16).load()
    model = create_model("digits_cnn", data.num_classes, data.in_channels)
    train_loader, val_loader = data.loaders(64, seed=0)
    train_classifier(model, train_loader, val_loader, 3, 0.05, 5e-4, torch.device("cpu"), progress=False, log=lambda _: None)
    path = folder / "teacher.pt"
    torch.save(model.state_dict(), path)
    return path


def throughput(folder: Path, trials: int, concurrent: int, epochs: int, teacher: Path) -> float:
    """Trials per hour of a real search run ``concurrent`` trials at a time."""
    job = search_job(folder, f"c{concurrent}", trials, concurrent, epochs, teacher)
    result = run_search(job, folder / f"c{concurrent}", progress=False, log=lambda _: None)
    return trials / result.seconds * 3600


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=6, help="trials of each measurement")
    parser.add_argument("--reports", type=int, default=200, help="reports of the per-report trial")
    parser.add_argument("--concurrent", type=int, default=max(2, min(4, os.cpu_count() or 1)),
                        help="concurrent trials of the throughput run (one CPU each)")
    parser.add_argument("--epochs", type=int, default=2, help="epochs of each real GMPQ trial")
    args = parser.parse_args()

    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "0")  # as gmpq search runs it
    ray.init(num_cpus=max(args.concurrent, 2), include_dashboard=False, log_to_driver=False)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            per_trial = tune_wall(folder, "trials", args.trials, 1) / args.trials
            per_fresh_trial = tune_wall(folder, "fresh-trials", args.trials, 1, reuse_actors=False) / args.trials
            direct = in_process_seconds(args.trials) / args.trials
            one = tune_wall(folder, "one-report", 1, 1)
            many = tune_wall(folder, "many-reports", 1, args.reports)
            many_ckpt = tune_wall(folder, "many-checkpoints", 1, args.reports, checkpoint=True)
            per_report = (many - one) / (args.reports - 1)
            per_ckpt_report = (many_ckpt - one) / (args.reports - 1)
            teacher = digits_teacher(folder)
            serial = throughput(folder, args.trials, 1, args.epochs, teacher)
            parallel = throughput(folder, args.trials, args.concurrent, args.epochs, teacher)
    finally:
        ray.shutdown()

    print(f"Ray Tune overhead on {os.cpu_count()} CPUs (ray {ray.__version__}, torch {torch.__version__})")
    print(f"  per trial: {per_trial:.2f} s of Tune per empty trial with actors reused (as gmpq search runs), "
          f"{per_fresh_trial:.2f} s with a new actor each ({args.trials} trials, one at a time); "
          f"in-process the same work takes {direct * 1e6:.1f} us")
    print(f"  per report: {per_report * 1e3:.1f} ms with metrics only, {per_ckpt_report * 1e3:.1f} ms with a "
          f"checkpoint ({args.reports} reports against 1)")
    print(f"  GMPQ search ({args.trials} digits supernet trials, {args.epochs} epochs, 1 CPU each): "
          f"{serial:.0f} trials/hour one at a time, {parallel:.0f} trials/hour {args.concurrent} at a time")
    print(f"{args.concurrent} concurrent / 1: {parallel / serial:.2f}x the trials per hour")


if __name__ == "__main__":
    main()
