"""How long the training-free proxy search takes: scoring and exact solve, through ``core``.

Scores every (searched layer, w_bits, a_bits) choice of a space with each proxy in one process
(what one scoring task runs, given every layer), then solves the allocation under the space's
limit, and prints the time split. Weights are freshly initialized: the work does not depend on
them. Targets (issue 13): the digits CNN space in <= 5 s, ResNet18 (CIFAR stem, 32x32, 19
layers x 16 candidates, a few batches of 32) in <= 60 s on the 2-core CPU.

    python benchmarks/bench_proxy_speed.py                       # digits and ResNet18, every proxy
    python benchmarks/bench_proxy_speed.py --spaces resnet18 --device cuda --batch-size 256
    python benchmarks/bench_proxy_speed.py --ray-workers 2  # also through the search's Ray tasks, 2 at once

With ``--ray-workers N`` each proxy is also timed the way ``gmpq search`` runs it: a local Ray of
N CPUs, the calibrated teacher and batches put in the object store once, the layers split over
scoring tasks (:func:`gmpq_ray.search.proxy_search.score_with_ray_tasks`), worker start included.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from gmpq_ray.core.cost.searchspace import SearchSpace
from gmpq_ray.core.data.bundle import load_digits, make_synthetic
from gmpq_ray.core.models.registry import create_model
from gmpq_ray.core.policy import LayerBits
from gmpq_ray.core.proxy import PROXIES, calibrated_probe_model, score_layers, solve_allocation

REPO = Path(__file__).resolve().parents[1]
SPACES = {
    # name: (search space file, cifar stem, image size, data)
    "digits": ("digits_cnn.yaml", False, 16, "digits"),
    "resnet18": ("resnet18.yaml", True, 32, "synthetic"),
}


def batches_for(space: SearchSpace, data_name: str, image_size: int, batch_size: int, count: int, device: str):
    if data_name == "digits":
        data = load_digits(image_size)
        images, labels = data.train.tensors
    else:
        data = make_synthetic(num_train=batch_size * count, num_val=8, num_classes=10, image_size=image_size, in_channels=3)
        images, labels = data.train.tensors
    return [(x.to(device), y.to(device)) for x, y in zip(images.split(batch_size), labels.split(batch_size))][:count], data


def ray_scoring(space: SearchSpace, cifar_stem: bool, proxy: str, teacher, data, batches, layers, candidates,
                precision: str) -> tuple[float, int]:
    """Seconds to score through the search's Ray tasks (Ray already started), and the task count."""
    import dataclasses

    from gmpq_ray.search.job import Job, ResourcesConfig, SearchConfig
    from gmpq_ray.search.proxy_search import score_with_ray_tasks

    job = Job(name="bench", searchspace=dataclasses.replace(space, cifar_stem=cifar_stem),
              search=SearchConfig(method="proxy", proxy=proxy, proxy_batches=len(batches), proxy_precision=precision), resources=ResourcesConfig(cpus_per_trial=1))
    start = time.perf_counter()
    _, tasks = score_with_ray_tasks(job, teacher.cpu(), data.num_classes, data.in_channels,
                                    [(x.cpu(), y.cpu()) for x, y in batches], layers, candidates)
    return time.perf_counter() - start, tasks


def run(space_name: str, proxies: list[str], batch_size: int, count: int, device: str, ray_workers: int, precision: str) -> None:
    file, cifar_stem, image_size, data_name = SPACES[space_name]
    space = SearchSpace.load(REPO / "searchspaces" / file)
    cost = space.cost_model()
    layers = list(cost.searched)
    candidates = [LayerBits(w, a) for w in space.w_bits for a in space.a_bits]
    batches, data = batches_for(space, data_name, image_size, batch_size, count, device)
    torch.manual_seed(0)
    teacher = create_model(space.model, data.num_classes, data.in_channels, cifar_stem).to(device).eval()
    print(f"{space_name}: {len(layers)} layers x {len(candidates)} candidates, {count} batch(es) of {batch_size} at "
          f"{image_size}x{image_size}, limit {space.bops_limit / 1e9:.4g} G, {device}, {torch.get_num_threads()} thread(s), {precision}")
    for proxy in proxies:
        start = time.perf_counter()
        model = calibrated_probe_model(teacher, layers, batches)
        scores = score_layers(proxy, model, space.model, batches, layers, candidates, precision)
        if device == "cuda":
            torch.cuda.synchronize()
        scoring = time.perf_counter() - start
        start = time.perf_counter()
        allocation = solve_allocation(scores, cost.macs, space.bops_limit, space.w_bits, space.a_bits)
        solve = time.perf_counter() - start
        print(f"  {proxy:4s} scoring {scoring:7.2f} s   solve {solve:6.3f} s   total {scoring + solve:7.2f} s   "
              f"-> {allocation.bops / 1e9:.4g} G BOPs, bits {' '.join(f'{b.w_bits}/{b.a_bits}' for b in allocation.layers.values())}")
        if ray_workers:
            seconds, tasks = ray_scoring(space, cifar_stem, proxy, teacher, data, batches, layers, candidates, precision)
            print(f"  {proxy:4s} scoring {seconds:7.2f} s   through {tasks} Ray task(s) on {ray_workers} CPU(s), "
                  f"+ solve {solve:6.3f} s = {seconds + solve:7.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spaces", nargs="+", default=list(SPACES), choices=list(SPACES))
    parser.add_argument("--proxies", nargs="+", default=sorted(PROXIES), choices=sorted(PROXIES))
    parser.add_argument("--batch-size", type=int, default=None, help="default: 64 for the digits, 32 for ResNet18")
    parser.add_argument("--batches", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch threads in this process (1: what a task of 1 CPU uses)")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"], help="how the probe runs (search.proxy_precision)")
    parser.add_argument("--ray-workers", type=int, default=0, help="also time the scoring through Ray tasks on N CPUs")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, load average {' '.join(f'{v:.1f}' for v in __import__('os').getloadavg())}")
    if args.ray_workers:
        import ray

        ray.init(num_cpus=args.ray_workers, include_dashboard=False, log_to_driver=False)
    for name in args.spaces:
        run(name, args.proxies, args.batch_size or (64 if name == "digits" else 32), args.batches, args.device, args.ray_workers, args.precision)


if __name__ == "__main__":
    main()
