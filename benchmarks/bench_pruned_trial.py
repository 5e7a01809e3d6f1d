"""What a BOPs-breaking trial costs, against a feasible one, in one search.

A raw-mode sampling search on the embedded digits evaluates N feasible and N over-budget
policies (enqueued as Optuna initial points, alternating). The scheduler stops each over-budget
trial at its first report, before the network is built. Printed side by side: the trainable's
own time (Tune's ``time_total_s``) of each kind in that search, and the end-to-end time of a
search made only of over-budget trials against one made only of feasible trials (Tune's actor
start per trial included), with the ratios pruned / feasible.

    python benchmarks/bench_pruned_trial.py --pairs 3 --epochs 3
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path
from types import SimpleNamespace

import ray
import yaml

from gmpq_ray.core.cost.bops import CostModel
from gmpq_ray.search.runner import NoResultError, run_search


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=3, help="feasible and over-budget trials of each kind")
    parser.add_argument("--epochs", type=int, default=3, help="QAT epochs of a feasible trial")
    args = parser.parse_args()

    layers = CostModel.for_model("digits_cnn", 16, 10, 1).searched

    def point(w: int, a: int) -> dict:
        return {**{f"w_bits/{n}": w for n in layers}, **{f"a_bits/{n}": a for n in layers}}

    feasible, over = point(2, 2), point(4, 4)  # 26 M and 104 M BOPs against a 33 M limit
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        try:
            mixed = run_job(folder, "mixed", [p for _ in range(args.pairs) for p in (feasible, over)], args.epochs)
            teacher = folder / "mixed" / "teacher.pt"
            walls = {kind: run_job(folder, kind, [p] * args.pairs, args.epochs, teacher).seconds
                     for kind, p in (("over", over), ("feasible", feasible))}
        finally:
            ray.shutdown()
    trials = mixed.trials
    pruned = trials[trials.stop_reason == "bops_limit"]
    done = trials[trials.status == "TERMINATED"]
    own_p, own_f = statistics.median(pruned.time_total_s), statistics.median(done.time_total_s)
    print(f"digits_cnn, raw sampling search, limit 33 M BOPs, {args.epochs} QAT epochs per feasible trial, one trial at a time")
    print(f"  in one search of {len(trials)} alternating trials: median trainable time of a pruned trial "
          f"{own_p:.3f} s ({len(pruned)} trials), of a feasible one {own_f:.3f} s ({len(done)} trials)")
    print(f"  end to end, a search of {args.pairs} over-budget trials took {walls['over']:.1f} s, "
          f"one of {args.pairs} feasible trials {walls['feasible']:.1f} s (teacher loaded, Ray already up)")
    print(f"pruned / feasible: {own_p / own_f:.2%} of the trainable time; "
          f"{walls['over'] / walls['feasible']:.1%} end to end, Tune's per-trial actor start included")


def run_job(folder: Path, name: str, points: list[dict], epochs: int, teacher: Path | None = None):
    """One raw-mode sampling search evaluating exactly ``points``, one trial at a time."""
    job = {
        "name": f"bench-{name}",
        "searchspace": {"model": "digits_cnn", "input_size": 16, "num_classes": 10, "in_channels": 1,
                        "w_bits": [2, 3, 4], "a_bits": [2, 3, 4], "bops_limit": "33M"},
        "data": {"name": "digits", "image_size": 16, "batch_size": 64},
        "teacher": {"epochs": 3, **({"state_dict": str(teacher)} if teacher else {})},
        "search": {"method": "sampling", "proposal_mode": "raw", "epochs": epochs, "num_trials": len(points),
                   "max_concurrent_trials": 1, "pruner": {"type": "none"}, "initial_points": points},
        "resources": {"cpus_per_trial": 1},
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(job))
    try:
        return run_search(path, folder / name, progress=False, log=lambda _: None)
    except NoResultError as err:  # a search of only over-budget trials finds nothing, by design
        return SimpleNamespace(seconds=err.seconds)


if __name__ == "__main__":
    main()
