"""GPU check: does the GPU path (CUDA, bf16 autocast, channels_last, compiled kernels) work and how fast?

Needs PyTorch only (no Ray, no Optuna, no timm): run it from the repository root on a GPU host,

    PYTHONPATH=. python benchmarks/gpu_check.py

and, as a smoke test on a CPU (the numbers there mean nothing),

    PYTHONPATH=. python benchmarks/gpu_check.py --device cpu --batch-size 8 --steps 3 --qat-steps 2 --rounds 2

Three parts, each with its peak memory (CUDA: peak allocated; CPU: what autograd keeps plus
weights, grads and momentum, as ``bench_search_step.py`` measures it):

1. **Step benchmark** (``bench_search_step.py``'s variants, same code): on ResNet18 with the
   CIFAR stem at batch 256, 32x32, an FP training step (a) against a supernet step with the
   complexity loss only (b) and the full GMPQ step (c), with the eager and the compiled quantizer
   kernels. Targets on an H100/H200: c/a <= 1.5x time (at the very least 2.0x; the reference
   code: 6.8x on an H100) and <= 2x peak memory (reference: 8.2x).
2. **Supernet search**: ``--steps`` (50) GMPQ steps on synthetic data with the weight and α
   optimizers of a search trial; checks that every loss is finite, that α moved, and derives
   the argmax policy (repaired to the BOPs limit when over it).
3. **QAT**: ``--qat-steps`` steps of that policy's quantized network, from the FP weights.

Prints a table, then one JSON line (``{"gpu_check": ...}``) with every number and ``ok``.
Exit code 0 when every check passed (the speed and memory targets are reported, not enforced),
1 otherwise.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time

import torch

from benchmarks.bench_search_step import resolve_device, run_variants, sync
from gmpq_ray.core.cost.bops import CostModel, format_bops
from gmpq_ray.core.cost.repair import repair_policy
from gmpq_ray.core.data.bundle import make_synthetic
from gmpq_ray.core.models.registry import create_model
from gmpq_ray.core.objective.loss import GMPQObjective
from gmpq_ray.core.policy import LayerBits
from gmpq_ray.core.quant.calibration import calibrate
from gmpq_ray.core.quant.convert import apply_policy, argmax_policy, supernet_layers, to_supernet
from gmpq_ray.core.quant.kernels_compiled import compiler_available, use_compiled_kernels
from gmpq_ray.core.train.finetuning import QATLoss

TARGET_TIME, FLOOR_TIME, TARGET_MEMORY = 1.5, 2.0, 2.0


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", help="cuda, cpu or auto (CUDA where there is one)")
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--cifar-stem", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--num-classes", type=int, default=10)
    parser.add_argument("--bits", type=int, nargs="+", default=[2, 3, 4, 6], help="weight and activation candidates")
    parser.add_argument("--steps", type=int, default=50, help="supernet search steps")
    parser.add_argument("--qat-steps", type=int, default=5, help="QAT steps of the derived policy")
    parser.add_argument("--rounds", type=int, default=12, help="timed steps per variant of the step benchmark")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--variants", default="abc", help="step benchmark variants (see bench_search_step.py)")
    parser.add_argument("--kernels", nargs="+", choices=["eager", "compiled"], default=None,
                        help="quantizer kernels (default: eager and compiled on CUDA, eager on the CPU)")
    parser.add_argument("--teacher-precision", default="auto", choices=["auto", "fp32", "bf16"])
    return parser.parse_args(argv)


def peak_memory(device: torch.device, run) -> tuple[float, int]:
    """Seconds and peak CUDA memory of ``run()`` (0 bytes on the CPU)."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    sync(device)
    start = time.perf_counter()
    run()
    sync(device)
    seconds = time.perf_counter() - start
    return seconds, torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0


def step_benchmark(args, device, kernels, autocast, channels_last) -> dict:
    variants = run_variants(args, device, kernels, autocast, channels_last)
    rows = {}
    for variant in variants:
        key = variant.name[0] + (f"_{variant.kernels}" if variant.kernels else "")
        rows[key] = {"name": variant.name, "kernels": variant.kernels, "ms": 1e3 * statistics.median(variant.times),
                     "memory_mib": variant.memory_bytes / 2**20}
    ratios = {}
    for mode in kernels:
        for top in ("b", "c"):
            if f"{top}_{mode}" in rows and "a" in rows:
                ratios[f"{top}/a_{mode}"] = {"time": rows[f"{top}_{mode}"]["ms"] / rows["a"]["ms"],
                                             "memory": rows[f"{top}_{mode}"]["memory_mib"] / rows["a"]["memory_mib"]}
    return {"rows": rows, "ratios": ratios}


def search_steps(args, device, autocast, channels_last, teacher, images, labels, cost, limit) -> dict:
    """``args.steps`` GMPQ steps with a trial's two optimizers; the argmax policy at the end."""
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    supernet = to_supernet(copy.deepcopy(teacher), args.bits, args.bits, fixed_bits=LayerBits(8, 8))
    supernet.to(device, memory_format=memory_format)
    calibrate(supernet, [(images, labels)], device, num_batches=1)
    objective = GMPQObjective(supernet, teacher, args.model, cost, limit, 40.0, 1.0, teacher_precision=args.teacher_precision)
    layers = supernet_layers(supernet)
    alphas = [p for layer in layers.values() for p in (layer.alpha_w, layer.alpha_a)]
    alpha_ids = {id(p) for p in alphas}
    weight_opt = torch.optim.SGD([p for p in supernet.parameters() if id(p) not in alpha_ids], lr=0.1, momentum=0.9, weight_decay=5e-4)
    alpha_opt = torch.optim.SGD(alphas, lr=0.01, momentum=0.9)
    before = torch.cat([a.detach().flatten() for a in alphas]).clone()
    losses = []
    supernet.train()

    def run():
        for _ in range(args.steps):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                loss, _ = objective(supernet, images, labels)
            weight_opt.zero_grad(set_to_none=True)
            alpha_opt.zero_grad(set_to_none=True)
            loss.backward()
            weight_opt.step()
            alpha_opt.step()
            losses.append(loss.detach())

    seconds, peak = peak_memory(device, run)
    losses_cpu = torch.stack(losses).float().cpu()
    alpha_change = float((torch.cat([a.detach().flatten() for a in alphas]) - before).abs().max())
    policy = argmax_policy(supernet, args.model, 224)
    searched_bops, _ = cost.policy_bops(policy)
    repaired = searched_bops > limit
    if repaired:
        policy = repair_policy(policy, cost.macs, limit, args.bits, args.bits)
    return {
        "steps": args.steps, "seconds": seconds, "ms_per_step": 1e3 * seconds / max(args.steps, 1),
        "peak_memory_mib": peak / 2**20, "first_loss": float(losses_cpu[0]), "last_loss": float(losses_cpu[-1]),
        "losses_finite": bool(torch.isfinite(losses_cpu).all()), "alpha_max_change": alpha_change,
        "alpha_moved": alpha_change > 0, "argmax_bops_g": searched_bops / 1e9, "repaired": repaired,
        "policy_bops_g": cost.policy_bops(policy)[0] / 1e9, "policy_within_limit": cost.policy_bops(policy)[0] <= limit,
        "policy": {name: f"{b.w_bits}/{b.a_bits}" for name, b in policy.layers.items()},
    }, policy


def qat_steps(args, device, autocast, channels_last, teacher, images, labels, policy) -> dict:
    model = apply_policy(copy.deepcopy(teacher), policy).to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    calibrate(model, [(images, labels)], device, num_batches=1)
    loss_fn = QATLoss(teacher, autocast=torch.bfloat16 if autocast else None, channels_last=channels_last)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01, momentum=0.9, weight_decay=4e-5)
    losses = []
    model.train()

    def run():
        for _ in range(args.qat_steps):
            loss, _ = loss_fn(model, images, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.detach())

    seconds, peak = peak_memory(device, run)
    losses_cpu = torch.stack(losses).float().cpu() if losses else torch.zeros(0)
    return {"steps": args.qat_steps, "seconds": seconds, "ms_per_step": 1e3 * seconds / max(args.qat_steps, 1),
            "peak_memory_mib": peak / 2**20, "losses_finite": bool(torch.isfinite(losses_cpu).all()),
            "last_loss": float(losses_cpu[-1]) if len(losses_cpu) else None}


def main(argv=None) -> int:
    args = parse_args(argv)
    device = resolve_device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_check: --device cuda, but torch sees no CUDA device", file=sys.stderr)
        return 2
    kernels = args.kernels or (["eager", "compiled"] if device.type == "cuda" and compiler_available(device) else ["eager"])
    autocast = channels_last = device.type == "cuda"
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    started = time.perf_counter()
    environment = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads",
        "torch": torch.__version__, "cuda": torch.version.cuda, "python": sys.version.split()[0],
        "model": args.model, "cifar_stem": args.cifar_stem, "batch_size": args.batch_size, "image_size": args.image_size,
        "bits": args.bits, "bf16_autocast": autocast, "channels_last": channels_last, "kernels": kernels,
    }
    step = step_benchmark(args, device, kernels, autocast, channels_last)

    torch.manual_seed(0)
    data = make_synthetic(num_train=args.batch_size, num_val=2, num_classes=args.num_classes, image_size=args.image_size, in_channels=3)
    images = data.train.tensors[0][: args.batch_size].to(device).contiguous(memory_format=memory_format)
    labels = data.train.tensors[1][: args.batch_size].to(device)
    teacher = create_model(args.model, args.num_classes, 3, args.cifar_stem).to(device, memory_format=memory_format).eval()
    cost = CostModel.for_model(args.model, 224, 1000, 3)
    limit = cost.searched_macs() * 9  # about uniform 3-bit, at the deployment resolution
    use_compiled_kernels("compiled" in kernels)
    search, policy = search_steps(args, device, autocast, channels_last, teacher, images, labels, cost, limit)
    qat = qat_steps(args, device, autocast, channels_last, teacher, images, labels, policy)
    use_compiled_kernels(False)

    checks = {"search_losses_finite": search["losses_finite"], "alpha_moved": search["alpha_moved"],
              "policy_within_limit": search["policy_within_limit"], "qat_losses_finite": qat["losses_finite"]}
    targets = {key: {"time": value["time"] <= TARGET_TIME, "time_floor": value["time"] <= FLOOR_TIME,
                     "memory": value["memory"] <= TARGET_MEMORY}
               for key, value in step["ratios"].items() if key.startswith("c/a")}
    result = {"environment": environment, "step_benchmark": step, "search": {k: v for k, v in search.items() if k != "policy"},
              "policy": search["policy"], "qat": qat, "checks": checks, "targets": targets,
              "seconds": time.perf_counter() - started, "ok": all(checks.values())}
    print_table(result, limit)
    print(json.dumps({"gpu_check": result}, separators=(",", ":")))
    return 0 if result["ok"] else 1


def print_table(result: dict, limit: float) -> None:
    env = result["environment"]
    print(f"gpu_check: {env['model']}{' (CIFAR stem)' if env['cifar_stem'] else ''}, batch {env['batch_size']}, "
          f"{env['image_size']}x{env['image_size']}, {env['device']}, torch {env['torch']}, bf16 autocast "
          f"{'on' if env['bf16_autocast'] else 'off'}, channels_last {'on' if env['channels_last'] else 'off'}")
    # On the CPU: the step benchmark's bytes autograd keeps; the other parts have no peak to read (0).
    memory = "step MiB" if env["device"].startswith("CPU") else "peak MiB"
    print(f"  {'part':46s} {'ms/step':>10s} {memory:>10s}")
    for row in result["step_benchmark"]["rows"].values():
        name = row["name"] + (f" [{row['kernels']}]" if row["kernels"] else "")
        print(f"  {name:46s} {row['ms']:10.1f} {row['memory_mib']:10.1f}")
    for key, label in (("search", f"{result['search']['steps']} supernet steps"), ("qat", f"{result['qat']['steps']} QAT steps")):
        part = result[key]
        print(f"  {label:46s} {part['ms_per_step']:10.1f} {part['peak_memory_mib']:10.1f}")
    for key, ratio in result["step_benchmark"]["ratios"].items():
        target = "" if not key.startswith("c/a") else (
            f"  (targets {TARGET_TIME}x time, {TARGET_MEMORY}x memory: "
            f"{'met' if ratio['time'] <= TARGET_TIME and ratio['memory'] <= TARGET_MEMORY else 'NOT met'})")
        print(f"  {key}: {ratio['time']:.2f}x time, {ratio['memory']:.2f}x memory{target}")
    search = result["search"]
    print(f"  search: loss {search['first_loss']:.3f} -> {search['last_loss']:.3f}, α moved by up to {search['alpha_max_change']:.2g}, "
          f"argmax policy {search['argmax_bops_g']:.3g} G BOPs{' (repaired)' if search['repaired'] else ''}, "
          f"policy {format_bops(search['policy_bops_g'] * 1e9)} (limit {format_bops(limit)})")
    print(f"  checks: {', '.join(f'{k} {v}' for k, v in result['checks'].items())}; "
          f"{'OK' if result['ok'] else 'FAILED'} in {result['seconds']:.0f} s")


if __name__ == "__main__":
    sys.exit(main())
