"""How good are the zero-cost proxies? Spearman of proxy score and accuracy after the shared QAT.

The way zero-cost proxies are judged (e.g. MQ-Bench-101 in EMQ): random feasible policies of the
digits space are each scored by every proxy (the summed per-layer damage the proxy search's
solver minimizes) and finetuned by the shared QAT protocol (:func:`gmpq_ray.core.train.qat.evaluate_policy`,
the one ``gmpq compare`` evaluates with); the benchmark prints the Spearman correlation of
``-damage`` and accuracy per proxy (1: the proxy ranks policies exactly as QAT does).

Two sets of policies:

* ``at the limit``: random proposals repaired into the job's limit and filled up to it, the
  policies a search chooses among (all within a few M BOPs of one another);
* ``spread``: the same with a random limit per policy between the all-2-bit floor and uniform
  3-bit, so BOPs differ too (BOPs alone is printed as the baseline a proxy must beat there).

    python benchmarks/bench_proxy_rank.py --policies 20 --epochs 3 --seeds 1
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from pathlib import Path

import torch
from scipy.stats import spearmanr

from gmpq_ray.core.cost.bops import searched_bops
from gmpq_ray.core.cost.repair import repair_policy
from gmpq_ray.core.models.registry import create_model
from gmpq_ray.core.policy import LayerBits, Policy
from gmpq_ray.core.proxy import PROXIES, calibrated_probe_model, score_layers
from gmpq_ray.core.train.loop import train_classifier
from gmpq_ray.core.train.qat import QATConfig, evaluate_policy
from gmpq_ray.search.job import load_job
from gmpq_ray.search.proxy_search import scoring_batches

REPO = Path(__file__).resolve().parents[1]


def random_policies(space, count: int, seed: int, spread: bool) -> list[Policy]:
    cost = space.cost_model()
    rng = random.Random(seed)
    floor = space.floor_bops()
    top = searched_bops({n: LayerBits(3, 3) for n in cost.searched}, cost.macs)
    policies = []
    for _ in range(count):
        proposal = Policy(space.model, {n: LayerBits(rng.choice(space.w_bits), rng.choice(space.a_bits)) for n in cost.searched},
                          {n: space.fixed for n in cost.fixed_layers}, space.input_size)
        limit = rng.uniform(floor, top) if spread else space.bops_limit
        policies.append(repair_policy(proposal, cost.macs, limit, space.w_bits, space.a_bits))
    return policies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--job", default=str(REPO / "jobs" / "sampling_quickstart.yaml"))
    parser.add_argument("--policies", type=int, default=20, help="per set")
    parser.add_argument("--epochs", type=int, default=3, help="QAT epochs per policy")
    parser.add_argument("--seeds", type=int, default=1, help="QAT seeds per policy (accuracy averaged)")
    parser.add_argument("--proxy-batches", type=int, default=4)
    args = parser.parse_args()
    torch.set_num_threads(1)
    start = time.perf_counter()
    job = load_job(args.job)
    job.search.proxy_batches = args.proxy_batches
    space = job.space
    data = job.data.load()
    torch.manual_seed(job.search.seed)
    teacher = create_model(space.model, data.num_classes, data.in_channels, space.cifar_stem)
    train_loader, val_loader = data.loaders(job.data.batch_size, seed=job.search.seed)
    fp = train_classifier(teacher, train_loader, val_loader, job.teacher.epochs, job.teacher.lr, job.teacher.weight_decay,
                          "cpu", progress=False, log=lambda line: None)
    teacher.eval().requires_grad_(False)
    cost = space.cost_model()
    layers = list(cost.searched)
    candidates = [LayerBits(w, a) for w in space.w_bits for a in space.a_bits]
    torch.manual_seed(job.search.seed)
    batches = scoring_batches(job, data)
    damage = {}
    for proxy in sorted(PROXIES):
        begin = time.perf_counter()
        damage[proxy] = score_layers(proxy, calibrated_probe_model(teacher, layers, batches), space.model, batches, layers, candidates)
        print(f"{proxy}: scored {len(layers)} x {len(candidates)} choices in {time.perf_counter() - begin:.1f} s")
    print(f"teacher: {job.teacher.epochs} epochs, last epoch {fp[-1]}")

    qat = QATConfig(epochs=args.epochs, lr=job.search.qat_lr, batch_size=job.data.batch_size)
    for label, spread in (("at the limit", False), ("spread", True)):
        policies = random_policies(space, args.policies, 1 + int(spread), spread)
        accuracy, bops = [], []
        for policy in policies:
            accs = [evaluate_policy(teacher, space.model, policy, data, qat, seed, "cpu", space.fixed).accuracy for seed in range(args.seeds)]
            accuracy.append(statistics.fmean(accs))
            bops.append(searched_bops(policy.layers, cost.macs))
        print(f"\n== {len(policies)} random feasible policies, {label}: BOPs {min(bops) / 1e6:.1f}-{max(bops) / 1e6:.1f} M, "
              f"accuracy after {args.epochs} QAT epochs x {args.seeds} seed(s) {min(accuracy):.4f}-{max(accuracy):.4f} "
              f"(mean {statistics.fmean(accuracy):.4f}) ==")
        for proxy in sorted(PROXIES):
            scores = [-sum(damage[proxy][n][b] for n, b in p.layers.items()) for p in policies]
            rho, pvalue = spearmanr(scores, accuracy)
            print(f"  Spearman(-{proxy} damage, accuracy) = {rho:+.3f}  (p = {pvalue:.3f})")
        if spread:
            rho, pvalue = spearmanr(bops, accuracy)
            print(f"  Spearman(BOPs, accuracy)          = {rho:+.3f}  (p = {pvalue:.3f})  <- the baseline")
    print(f"\n{time.perf_counter() - start:.0f} s in all")


if __name__ == "__main__":
    main()
