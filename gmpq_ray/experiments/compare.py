"""``gmpq compare``: differentiable, sampling-based and training-free (proxy) search, on equal terms.

The methods run on the same search space, BOPs limit, teacher and compute budget, through the
same engine and pruning scheduler. Then each method's best policy, the best uniform policy that
fits the limit and random feasible policies are evaluated with one QAT protocol
(:class:`gmpq_ray.core.train.qat.QATRun`) over several seeds, as parallel Ray tasks. The run folder
receives one sub-folder per method (a full search run each), ``comparison.csv``,
``comparison.md`` and ``pareto.png``.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import ray
import torch

from gmpq_ray.core.atomic import save_torch_atomic
from gmpq_ray.core.models.pretrained import local_path
from gmpq_ray.core.models.registry import create_model
from gmpq_ray.core.policy import Policy, write_text_atomic
from gmpq_ray.core.train.qat import QATConfig, evaluate_policy
from gmpq_ray.experiments.baselines import best_uniform_policy, random_feasible_policies
from gmpq_ray.experiments.compare_job import CompareJob, load_compare_job
from gmpq_ray.report.pareto import plot_pareto
from gmpq_ray.runtime import RunFolder, check_new_output
from gmpq_ray.runtime.cluster import start_ray
from gmpq_ray.search.job import Job
from gmpq_ray.search.runner import check_trial_resources, run_search
from gmpq_ray.search.teacher import TEACHER_FILE, train_teacher

RUN_KIND = "compare"


@ray.remote(num_cpus=1)
def _evaluate_remote(job: Job, teacher_state: dict, policy_data: dict, qat: QATConfig, seed: int) -> dict:
    torch.set_num_threads(1)
    space = job.space
    data = job.data.load()
    teacher = create_model(space.model, data.num_classes, data.in_channels, space.cifar_stem)
    teacher.load_state_dict(teacher_state)
    evaluation = evaluate_policy(teacher, space.model, Policy.from_dict(policy_data), data, qat, seed, "cpu", space.fixed)
    return {"accuracy": evaluation.accuracy, "arc": evaluation.arc}


def run_compare(
    job: CompareJob | str | Path,
    output_dir: str | Path,
    address: str | None = None,
    overwrite: bool = False,
    log: Callable[[str], None] = print,
) -> pd.DataFrame:
    """Run the comparison job and write its table and figure; returns the table.

    Args:
        job: a :class:`CompareJob` or the path of its YAML.
        output_dir: the run folder (new or empty; ``overwrite`` replaces an earlier compare's).
        address: a Ray cluster address (``auto`` or ``host:port``); None starts a local Ray.
        overwrite: replace an earlier comparison's results in ``output_dir``.
        log: where progress lines and the table go.

    Example::

        table = run_compare("jobs/compare_quickstart.yaml", "runs/compare")
    """
    if not isinstance(job, CompareJob):
        job = load_compare_job(job)
    out = check_new_output(output_dir, RUN_KIND, overwrite, inputs=[job.base.data.root, local_path(job.base.teacher.state_dict)])
    data = job.base.data.load()  # fail on bad data before the folder is made

    started_ray = start_ray(address)
    try:
        check_trial_resources(job.base)
        with RunFolder.create(out, RUN_KIND, overwrite) as folder:
            try:
                teacher_state = train_teacher(job.base, progress=False, log=log)
            except BaseException:
                folder.rollback()
                raise
            save_torch_atomic(teacher_state, out / TEACHER_FILE)
            searches = {}
            for method, method_job in job.methods.items():
                method_job = dataclasses.replace(method_job, teacher=dataclasses.replace(method_job.teacher, state_dict=str(out / TEACHER_FILE)))
                method_job.base_dir = job.base.base_dir
                log(f"== searching with the {method} method ==")
                start = time.perf_counter()
                result = run_search(method_job, out / method, progress=False, log=log)
                searches[method] = (result, time.perf_counter() - start)
            candidates = []
            for method, (result, _) in searches.items():
                if result.unfilled_policy is not None:
                    # The fill is on: the search's own choice and what the greedy fill made of it, apart.
                    candidates += [(method, result.unfilled_policy), (f"{method} + fill", result.best_policy)]
                else:
                    candidates.append((method, result.best_policy))
            candidates.append(("uniform", best_uniform_policy(job.base.space)))
            candidates += [(f"random-{i + 1}", p) for i, p in enumerate(random_feasible_policies(job.base.space, job.compare.random_policies, job.base.search.seed))]
            evaluations = _evaluate_all(job, teacher_state, candidates, data, log)
    finally:
        if started_ray:
            ray.shutdown()
    table = comparison_table(job, searches, candidates, evaluations)
    write_text_atomic(out / "comparison.csv", table.to_csv(index=False))
    split = report_split(data)
    write_text_atomic(out / "comparison.md", comparison_markdown(job, table, split))
    plot_pareto(table, {m: r.trials for m, (r, _) in searches.items()}, job.base.space.bops_limit / 1e9, out / "pareto.png")
    log(comparison_markdown(job, table, split))
    log(f"comparison written to {out / 'comparison.md'}, {out / 'comparison.csv'} and {out / 'pareto.png'}")
    return table


def _evaluate_all(job: CompareJob, teacher_state, candidates, data, log) -> dict[str, list[dict]]:
    evaluation = job.compare.evaluation
    # The searches selected their best trials on the validation split: the report scores every
    # candidate on the held-out test split where the data set has one.
    qat = QATConfig(epochs=evaluation.epochs, lr=evaluation.lr, batch_size=job.base.data.batch_size,
                    eval_split=report_split(data))
    log(f"== evaluating {len(candidates)} policies x {evaluation.seeds} seeds with one QAT protocol "
        f"({evaluation.epochs} epochs, lr {evaluation.lr}), scored on the {qat.eval_split} split ==")
    teacher_ref = ray.put(teacher_state)
    futures = {
        name: [_evaluate_remote.remote(job.base, teacher_ref, policy.to_dict(), qat, seed) for seed in range(evaluation.seeds)]
        for name, policy in candidates
    }
    return {name: ray.get(refs) for name, refs in futures.items()}


def report_split(data) -> str:
    """The split a report scores candidates on: ``test`` where the data set holds one out."""
    return "test" if data.has_test else "val"


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def paired_difference(values: list[float], reference: list[float]) -> tuple[float, float, float]:
    """Mean of the per-seed differences ``values - reference`` and its 95 % t interval (low, high).

    Seed i of every candidate shares the QAT's initial state and batch order, so the
    differences are paired; with one seed the interval is unbounded (nan).
    """
    differences = [a - b for a, b in zip(values, reference)]
    mean = statistics.fmean(differences)
    if len(differences) < 2:
        return mean, float("nan"), float("nan")
    from scipy.stats import t

    half = t.ppf(0.975, len(differences) - 1) * statistics.stdev(differences) / len(differences) ** 0.5
    return mean, mean - half, mean + half


def comparison_table(job: CompareJob, searches, candidates, evaluations) -> pd.DataFrame:
    """One row per evaluated policy: method, BOPs, accuracy and ARC (mean, std over seeds),
    search seconds, trials run and pruned (by reason)."""
    rows = []
    uniform = [e["accuracy"] for e in evaluations["uniform"]] if "uniform" in evaluations else None
    for name, policy in candidates:
        accuracy = _mean_std([e["accuracy"] for e in evaluations[name]])
        arc = _mean_std([e["arc"] for e in evaluations[name]])
        versus = (paired_difference([e["accuracy"] for e in evaluations[name]], uniform) if uniform is not None
                  else (float("nan"),) * 3)
        row = {
            "method": name,
            "bops_g": policy.bops.get("searched_g"),
            "provenance": policy.provenance.get("kind", ""),
            "accuracy_mean": accuracy[0], "accuracy_std": accuracy[1],
            "arc_mean": arc[0], "arc_std": arc[1],
            "vs_uniform_mean": versus[0], "vs_uniform_low": versus[1], "vs_uniform_high": versus[2],
            "seeds": len(evaluations[name]),
            "search_seconds": None, "trials": None, "pruned_bops_limit": None, "pruned_arc": None, "errored": None,
            "policy": " ".join(f"{b.w_bits}/{b.a_bits}" for b in policy.layers.values()),
        }
        if name in searches:
            result, seconds = searches[name]
            trials = result.trials
            row.update(search_seconds=seconds, trials=len(trials),
                       pruned_bops_limit=int((trials.stop_reason == "bops_limit").sum()),
                       pruned_arc=int((trials.stop_reason == "arc").sum()),
                       errored=int((trials.status == "ERROR").sum()))
        rows.append(row)
    return pd.DataFrame(rows)


def comparison_markdown(job: CompareJob, table: pd.DataFrame, split: str = "test") -> str:
    """The comparison as a Markdown table."""
    evaluation = job.compare.evaluation
    budget = job.compare.budget
    lines = [
        f"# {job.base.name}: {' vs '.join(job.methods)} search",
        "",
        f"Search space `{job.base.space.model}`, BOPs limit {job.base.space.bops_limit / 1e9:.4g} G (searched layers); "
        f"budget per method: {f'{budget.num_trials} trials' if budget.num_trials else f'{budget.time_budget_s:g} s'}; "
        f"every policy evaluated with the same QAT ({evaluation.epochs} epochs, lr {evaluation.lr}) over {evaluation.seeds} seeds, "
        f"accuracy and ARC on the **{split}** split"
        + (" (held out: the searches selected their best trials on val)." if split == "test" else
           " (this data set has no held-out test split here: the searches selected on it too)."),
        "`vs uniform`: the paired per-seed accuracy difference to the best uniform policy, mean [95 % interval], points.",
        "",
        f"| method | BOPs (G) | policy | {split} accuracy (%) | vs uniform (points) | {split} ARC | search (s) | trials | "
        "pruned: BOPs / ARC | errored |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in table.itertuples():
        searched = row.trials is not None and not pd.isna(row.trials)
        versus = "-" if row.method == "uniform" or pd.isna(row.vs_uniform_mean) else (
            f"{100 * row.vs_uniform_mean:+.2f} [{100 * row.vs_uniform_low:+.2f}, {100 * row.vs_uniform_high:+.2f}]"
            if not pd.isna(row.vs_uniform_low) else f"{100 * row.vs_uniform_mean:+.2f}")
        lines.append(
            f"| {row.method} | {row.bops_g:.4g} | {row.provenance or '-'} | {100 * row.accuracy_mean:.2f} ± {100 * row.accuracy_std:.2f} | "
            f"{versus} | {row.arc_mean:.3f} ± {row.arc_std:.3f} | "
            + (f"{row.search_seconds:.0f} | {int(row.trials)} | {int(row.pruned_bops_limit)} / {int(row.pruned_arc)} | {int(row.errored)} |"
               if searched else "- | - | - | - |")
        )
    return "\n".join(lines) + "\n"
