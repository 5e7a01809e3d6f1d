"""``gmpq ablate``: the dataset-transfer ablation of the GMPQ appendix (Table 1 and Figure 1).

For every architecture: the FP model on the large target data set (given weights, or trained
there), its top-1; then for every small data set, a GMPQ search (:func:`run_search`, trials in
parallel on Ray Tune; the searches of all pairs at once, each driven by a Ray task) and the
finetune of its winning policy on the target (:func:`finetune`, DDP on Ray Train, one after the
other since each uses the whole cluster). The run folder receives ``<architecture>/<data set>/{search,finetune}/``
(full run folders), ``<architecture>/fp_target.pt`` and ``fp_metrics.json``, and the tables
``transfer.csv`` and ``transfer.md`` and one ``bits_<architecture>.png`` an architecture.

Every top-1 is on the target's held-out test split where it has one (:func:`report_split`, as
``gmpq compare``: the searches select on their own validation splits, the finetunes run a fixed
number of epochs, so no selection sees it), else on its validation split; ``transfer.csv``'s
``split`` column and ``transfer.md`` say which.

A pair whose search ends without a policy (every trial pruned or failed) gets a row with its
error and the ablation goes on. ``resume=True`` continues an interrupted ablation: finished
pieces are kept, interrupted searches and finetunes resume from their checkpoints.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import ray
import torch
import yaml

from gmpq_ray.core.atomic import save_torch_atomic
from gmpq_ray.core.cost.bops import CostModel
from gmpq_ray.core.errors import NoResultError, UserInputError
from gmpq_ray.core.models.pretrained import is_weights_name, local_path, read_state_dict
from gmpq_ray.core.models.registry import create_model
from gmpq_ray.core.policy import FULL_PRECISION_BITS, Policy, write_text_atomic
from gmpq_ray.core.train.finetuning import QATLoss, load_fp_weights, topk_metrics, topk_sums
from gmpq_ray.core.train.loop import train_classifier
from gmpq_ray.experiments.ablate_job import AblationJob, ArchitectureConfig, Pair, load_ablation_job, slug
from gmpq_ray.experiments.baselines import best_uniform_policy, random_feasible_policies
from gmpq_ray.experiments.compare import report_split
from gmpq_ray.finetune.job import FinetuneJob
from gmpq_ray.finetune.runner import FINAL_FILE, finetune, latest_checkpoint
from gmpq_ray.report.transfer import FULL_PRECISION, plot_transfer_bits, transfer_markdown
from gmpq_ray.runtime import Interrupted, RunFolder, StopSignals, check_new_output
from gmpq_ray.runtime.cluster import start_ray
from gmpq_ray.search.runner import check_trial_resources, run_search

JOB_COPY = "ablation.yaml"
RUN_KIND = "ablate"
FP_STATE, FP_METRICS = "fp_target.pt", "fp_metrics.json"


def run_ablation(
    job: AblationJob | str | Path,
    output_dir: str | Path,
    address: str | None = None,
    overwrite: bool = False,
    resume: bool = False,
    log: Callable[[str], None] = print,
) -> pd.DataFrame:
    """Run the ablation and write its tables and figures; returns the ``transfer.csv`` table.

    Example::

        table = run_ablation("jobs/dataset_transfer_quickstart.yaml", "runs/transfer")
    """
    if not isinstance(job, AblationJob):
        job_path = Path(job)
        job = load_ablation_job(job_path)
    else:
        job_path = None
    out = _prepare(job, output_dir, overwrite, resume, job_path)
    start = time.perf_counter()
    started_ray = start_ray(address)
    rows, policies = [], {}
    try:
        for pair in job.pairs:
            check_trial_resources(pair.search)
        folder = RunFolder.reopen(out, RUN_KIND) if resume else RunFolder.create(out, RUN_KIND, overwrite)
        with folder, StopSignals() as signals:
            try:
                if not resume:
                    _write_job_copy(job, job_path, out)
                searches = _search_all(job.pairs, out, resume, log)
                for arch in job.config.architectures:
                    pairs = job.pairs_of(arch.label)
                    fp_path = _fp_weights(job, arch, pairs[0].finetune, out / slug(arch.label), log)
                    rows.append(_fp_row(arch, pairs[0], fp_path, out / slug(arch.label), log))
                    for pair in pairs:
                        row, policy = _finetune_pair(pair, searches[pair.folder], fp_path, out / pair.folder, address, resume, log)
                        rows.append(row)
                        if policy is not None:
                            policies.setdefault(arch.label, {})[pair.dataset] = policy
                    if job.config.target.baselines:
                        for label, policy in _baseline_policies(pairs[0], pairs[0].search.search.seed):
                            folder = out / slug(arch.label) / slug(label)
                            row, _ = _finetune_pair(_as_baseline(pairs[0], label), (policy, None, ""), fp_path, folder, address, resume, log)
                            rows.append(row)
            except (KeyboardInterrupt, Interrupted):
                raise signals.interrupted("ablation", f"gmpq ablate {job_path or 'JOB'} --output {out} --resume") from None
    finally:
        if started_ray:
            ray.shutdown()
    table = pd.DataFrame(rows)
    write_text_atomic(out / "transfer.csv", table.to_csv(index=False))
    markdown = transfer_markdown(table, f"{job.config.name}: top-1 and BOPs on the target of policies searched on each data set",
                                 _notes(job, time.perf_counter() - start))
    write_text_atomic(out / "transfer.md", markdown)
    for arch, found in policies.items():
        plot_transfer_bits(found, out / f"bits_{slug(arch)}.png", f"{arch}: per-layer bitwidths searched on each data set")
    log(f"\n{markdown}\nwritten to {out / 'transfer.md'}, {out / 'transfer.csv'} and {out}/bits_*.png")
    return table


def _prepare(job: AblationJob, output_dir, overwrite: bool, resume: bool, job_path: Path | None) -> Path:
    """Check the data roots and FP weights, then claim the output folder."""
    if resume and overwrite:
        raise UserInputError("give --resume or --overwrite, not both")
    for pair in job.pairs:
        pair.search.data.num_classes_and_channels()
    num_classes, in_channels = job.config.target.data.num_classes_and_channels()
    for arch in job.config.architectures:
        if arch.fp_state_dict is not None:
            _check_fp_state(arch, job.pairs_of(arch.label)[0].finetune.model, num_classes, in_channels)
    if resume:
        out = Path(output_dir).resolve()
        if not (out / JOB_COPY).is_file():
            raise UserInputError(f"--resume: {out} is not an ablation run folder (no {JOB_COPY})")
        return out
    inputs = [job_path, job.config.target.data.root, *(pair.search.data.root for pair in job.pairs),
              *(local_path(arch.fp_state_dict) for arch in job.config.architectures)]
    return check_new_output(output_dir, RUN_KIND, overwrite, inputs)


def _write_job_copy(job: AblationJob, job_path: Path | None, out: Path) -> None:
    if job_path is not None:
        write_text_atomic(out / JOB_COPY, job_path.read_text())
    else:
        write_text_atomic(out / JOB_COPY, yaml.safe_dump({"name": job.config.name}))


def _check_fp_state(arch: ArchitectureConfig, model_name: str, num_classes: int, in_channels: int) -> None:
    state = read_state_dict(arch.fp_state_dict, f"architectures[{arch.label}].fp_state_dict")
    load_fp_weights(create_model(model_name, num_classes, in_channels), state,
                    f"architectures[{arch.label}].fp_state_dict {arch.fp_state_dict}")


@ray.remote
def _train_fp_remote(job: FinetuneJob, epochs: int, lr: float) -> dict[str, torch.Tensor]:
    data = job.data.load()
    torch.manual_seed(job.seed)
    model = create_model(job.model, data.num_classes, data.in_channels, job.cifar_stem)
    train_loader, val_loader = data.loaders(job.data.batch_size, seed=job.seed)
    device = "cuda" if job.gpus_per_worker > 0 and torch.cuda.is_available() else "cpu"
    train_classifier(model, train_loader, val_loader, epochs, lr, device=device, progress=False)
    return {k: v.cpu() for k, v in model.state_dict().items()}


@ray.remote
def _evaluate_fp_remote(job: FinetuneJob, fp_state: dict[str, torch.Tensor], split: str = "val") -> dict[str, float]:
    data = job.data.load()
    device = torch.device("cuda" if job.gpus_per_worker > 0 and torch.cuda.is_available() else "cpu")
    model = create_model(job.model, data.num_classes, data.in_channels, job.cifar_stem)
    model.load_state_dict(fp_state)
    model.to(device)
    on_gpu = device.type == "cuda"
    if on_gpu:
        model.to(memory_format=torch.channels_last)
    loader = data.eval_loader(split, job.data.batch_size)
    loss = QATLoss(autocast=torch.bfloat16 if on_gpu else None, channels_last=on_gpu)
    return topk_metrics(topk_sums(model, loader, loss, device).cpu())


def _task_resources(job: FinetuneJob) -> dict[str, float]:
    return {"num_cpus": job.cpus_per_worker, "num_gpus": job.gpus_per_worker}


def _fp_weights(job: AblationJob, arch: ArchitectureConfig, finetune_job: FinetuneJob, folder: Path, log) -> Path:
    """The architecture's FP weights on the target: given, kept from an earlier run, or trained now."""
    if arch.fp_state_dict is not None and not is_weights_name(arch.fp_state_dict):
        return Path(arch.fp_state_dict)
    path = folder / FP_STATE
    if arch.fp_state_dict is not None and not path.is_file():  # pretrained by name: a file for the workers
        folder.mkdir(parents=True, exist_ok=True)
        save_torch_atomic(read_state_dict(arch.fp_state_dict, f"architectures[{arch.label}].fp_state_dict"), path)
    if not path.is_file():
        target = job.config.target
        log(f"== {arch.label}: training the FP model on the target ({target.fp_epochs} epochs) ==")
        state = ray.get(_train_fp_remote.options(**_task_resources(finetune_job)).remote(finetune_job, target.fp_epochs, target.fp_lr))
        folder.mkdir(parents=True, exist_ok=True)
        save_torch_atomic(state, path)
    return path


def _fp_row(arch: ArchitectureConfig, pair: Pair, fp_path: Path, folder: Path, log) -> dict:
    """The FP row: the FP model's top-1 on the target (its report split), its BOPs at 32/32 bits."""
    metrics_path = folder / FP_METRICS
    split = report_split(pair.finetune.data)
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    if metrics.get("split", "val") != split:  # not yet evaluated, or (an older run) on another split
        state = torch.load(fp_path, map_location="cpu", weights_only=True)
        metrics = ray.get(_evaluate_fp_remote.options(**_task_resources(pair.finetune)).remote(pair.finetune, state, split))
        metrics["split"] = split
        folder.mkdir(parents=True, exist_ok=True)
        write_text_atomic(metrics_path, json.dumps(metrics, indent=2) + "\n")
    log(f"== {arch.label}: FP top-1 {metrics['top1']:.4f} on the target's {split} split ==")
    cost = _cost_model(pair.finetune)
    fp_bops = cost.policy_bops(cost.uniform_policy(pair.finetune.model, FULL_PRECISION_BITS, FULL_PRECISION_BITS))
    return {"architecture": arch.label, "search_dataset": FULL_PRECISION, "top1": metrics["top1"], "top5": metrics["top5"],
            "split": split, "bops_searched_g": fp_bops.searched / 1e9, "bops_total_g": fp_bops.total / 1e9, "policy": "32/32", "error": ""}


def _cost_model(job: FinetuneJob) -> CostModel:
    num_classes, in_channels = job.data.num_classes_and_channels()
    return CostModel.for_model(job.model, job.deployment_input_size(), num_classes, in_channels, job.cifar_stem)


def _search_all(pairs: list[Pair], out: Path, resume: bool, log) -> dict[str, tuple[Policy | None, float | None, str]]:
    """Every pair's search at once, each driven by its own Ray task (its trials share the cluster
    through Ray's scheduler); returns, by pair folder, (policy, seconds, error)."""
    for pair in pairs:
        log(f"== {pair.architecture}: searching on {pair.dataset} ==")
    # A search's driver only trains the teacher and waits on its trials; it reserves no CPU so
    # that the cluster's CPUs go to the trials, which do reserve theirs.
    search = ray.remote(num_cpus=0, max_retries=0)(_search)
    futures = {pair.folder: search.remote(pair, out / pair.folder / "search", resume) for pair in pairs}
    results = {}
    for pair in pairs:
        policy, seconds, error = ray.get(futures[pair.folder])
        if error:
            log(f"== {pair.architecture} on {pair.dataset}: no policy ({error}) ==")
        results[pair.folder] = (policy, seconds, error)
    return results


def _finetune_pair(pair: Pair, search: tuple[Policy | None, float | None, str], fp_path: Path, folder: Path, address,
                   resume: bool, log) -> tuple[dict, Policy | None]:
    """The pair's row: its search's policy finetuned on the target (or the search's error)."""
    row = {"architecture": pair.architecture, "search_dataset": pair.dataset}
    policy, search_seconds, error = search
    if policy is None:
        return {**row, "error": error}, None
    log(f"== {pair.architecture}: finetuning the {pair.dataset} policy on the target ==")
    result = _finetune(pair, policy, fp_path, folder / "finetune", address, resume, log)
    return {
        **row, "top1": result["top1"], "top5": result["top5"], "split": result.get("split", "val"),
        "bops_searched_g": result["bops_searched_g"], "bops_total_g": result["bops_total_g"],
        "bops_limit_g": pair.search.space.bops_limit / 1e9,
        "policy": " ".join(f"{b.w_bits}/{b.a_bits}" for b in policy.layers.values()),
        "search_seconds": search_seconds, "finetune_seconds": result.get("seconds"), "error": "",
    }, policy


BEST_UNIFORM, RANDOM_FEASIBLE = "best uniform", "random feasible"


def _baseline_policies(pair: Pair, seed: int) -> list[tuple[str, Policy]]:
    """The best uniform policy and one random feasible policy at the pair's search limit."""
    space = pair.search.space
    return [(BEST_UNIFORM, best_uniform_policy(space)), (RANDOM_FEASIBLE, random_feasible_policies(space, 1, seed)[0])]


def _as_baseline(pair: Pair, label: str) -> Pair:
    """The pair's finetune protocol, labelled (row and finetune run name) as a baseline."""
    name = pair.finetune.name.removesuffix(slug(pair.dataset).replace(".", "_")) + slug(label)
    return dataclasses.replace(pair, dataset=label, finetune=dataclasses.replace(pair.finetune, name=name))


def _search(pair: Pair, folder: Path, resume: bool) -> tuple[Policy | None, float | None, str]:
    """One pair's search: (best policy, seconds, "") or (None, seconds, why no trial gave a policy)."""
    def log(line: str) -> None:  # the lines of concurrent searches, told apart
        print(f"[{pair.architecture} / {pair.dataset}] {line}")

    if resume and (folder / "best_policy.json").is_file():
        return Policy.load(folder / "best_policy.json"), None, ""
    try:
        if resume and (folder / "job.yaml").is_file():
            result = run_search(None, folder, resume=True, progress=False, log=log)
        else:
            result = run_search(pair.search, folder, overwrite=True, progress=False, log=log)
    except NoResultError as err:  # returned, not raised: a task's exception reaches the driver wrapped
        return None, err.seconds, str(err).splitlines()[0]
    return result.best_policy, result.seconds, ""


def _finetune(pair: Pair, policy: Policy, fp_path: Path, folder: Path, address, resume: bool, log) -> dict:
    if resume and (folder / FINAL_FILE).is_file():
        return json.loads((folder / FINAL_FILE).read_text())
    # Per epoch the finetune evaluates on the target's val split; its reported top-1 is on the held-out test split.
    job = dataclasses.replace(pair.finetune, fp_state_dict=str(fp_path), report_split=report_split(pair.finetune.data))
    interrupted = resume and latest_checkpoint(folder) is not None
    result = finetune(policy, job, folder, overwrite=not interrupted, resume=interrupted, address=address, log=log)
    return {**json.loads((folder / FINAL_FILE).read_text()), "seconds": result.seconds}


def _notes(job: AblationJob, seconds: float) -> list[str]:
    search, ft = job.pairs[0].search.search, job.pairs[0].finetune
    searched = (f"proxy ({search.proxy}, {search.proxy_batches} batches), one solve" if search.method == "proxy"
                else f"{search.method}, {search.num_trials} trial(s) x {search.epochs} epoch(s)")
    split = report_split(job.config.target.data)
    where = ("held-out test split (no search or finetune selected on it)" if split == "test" else
             "validation split (it holds no test split out)")
    return [
        f"Top-1 in % on the target's {where}. BOPs: the full-precision row counts the whole network at 32/32 "
        "bits; a searched policy counts its searched layers (the paper's budget; the first conv and the classifier, "
        f"kept at {ft.fixed_bits} bits, are in `bops_total_g` of transfer.csv).",
        f"Search: {searched} per data set; finetune: "
        f"{ft.epochs} epoch(s), lr {ft.lr:g}, {'distilled from the FP model, ' if ft.distill else ''}{ft.workers} worker(s). "
        f"Wall time {seconds / 60:.1f} min.",
        *([f"`{BEST_UNIFORM}` and `{RANDOM_FEASIBLE}`: the best uniform policy and one random feasible policy at the "
           "first search's limit, finetuned by the same protocol, to read each searched column against."]
          if job.config.target.baselines else []),
    ]
