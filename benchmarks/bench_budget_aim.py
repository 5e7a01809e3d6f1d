"""Where does the supernet's argmax policy land against the BOPs limit, with no repair and no fill?

A short differentiable GMPQ search through ``gmpq_ray.core`` only (no Ray, no Optuna: it runs on a
GPU host with PyTorch alone): train the FP teacher, build the supernet from it, search, and print
after every epoch the argmax policy's searched-layer BOPs as a share of the limit, with the
expected BOPs and the budget multiplier. The target of the default complexity form
(``budget``) is an argmax inside [0.85, 1.0] x limit. Examples:

    # ResNet-18 (CIFAR stem, searchspaces/resnet18.yaml: 15.3 G at 224) on synthetic 32x32 data
    python benchmarks/bench_budget_aim.py --space searchspaces/resnet18.yaml --cifar-stem --data synthetic

    # the quickstart's digits CNN on the digits at 16x16, three seeds, both complexity forms
    python benchmarks/bench_budget_aim.py --space searchspaces/digits_cnn.yaml --data digits \\
        --seeds 0 1 2 --complexity budget reference

    # the quickstart's range of lambda_c and lambda_attr, the budget controller now and before
    python benchmarks/bench_budget_aim.py --space searchspaces/digits_cnn.yaml --data digits \\
        --batch-size 64 --teacher-epochs 8 --seeds 0 1 --lambda-c 0.1 0.3 1.0 \\
        --lambda-attr 5 15 50 --complexity budget budget-before --quiet

``budget`` is the default controller (band [0.85, 0.95] x limit, the step floored at a quarter
of the first); ``budget-before`` the one it replaced (band [0.9, 0.97], no floor), for a side by
side comparison. It prints one line per (form, seed, lambdas, epoch), or with ``--quiet`` one per
run, and a last line per form: how many runs end with the argmax inside [0.85, 1.0] x limit, and
how many are inside after each epoch (the scheduler may stop a trial after any epoch). A
benchmark, not a test: the numbers go to README ("The loss").
"""

from __future__ import annotations

import argparse
import copy
import itertools
import time
from pathlib import Path

import torch

from gmpq_ray.core import calibrate, create_model, make_synthetic, to_supernet
from gmpq_ray.core.cost.searchspace import SearchSpace
from gmpq_ray.core.data.bundle import load_digits
from gmpq_ray.core.objective.complexity_term import (
    DEFAULT_DUAL_LR,
    REFERENCE_CD,
    BudgetMultiplier,
    ComplexityTerm,
    make_complexity,
)
from gmpq_ray.core.objective.loss import GMPQObjective
from gmpq_ray.core.quant.convert import argmax_policy
from gmpq_ray.core.train.loop import run_epoch, train_classifier

ROOT = Path(__file__).resolve().parents[1]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--space", default=str(ROOT / "searchspaces/resnet18.yaml"))
    parser.add_argument("--cifar-stem", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--data", choices=["synthetic", "digits"], default="synthetic")
    parser.add_argument("--image-size", type=int, default=None, help="default: 32 synthetic, 16 digits")
    parser.add_argument("--num-train", type=int, default=256, help="synthetic training images")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--teacher-epochs", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--complexity", nargs="+", choices=list(FORMS), default=["budget"])
    parser.add_argument("--lambda-attr", type=float, nargs="+", default=[40.0])
    parser.add_argument("--lambda-c", type=float, nargs="+", default=[1.0], help="budget form: the starting multiplier")
    parser.add_argument("--dual-lr", type=float, default=DEFAULT_DUAL_LR)
    parser.add_argument("--cd", type=float, default=REFERENCE_CD)
    parser.add_argument("--lr-weights", type=float, default=0.02)
    parser.add_argument("--lr-alpha", type=float, default=0.3)
    parser.add_argument("--teacher-cache", default=None, help="a folder to keep the trained teachers in, per seed")
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--quiet", action="store_true", help="one line per run instead of one per epoch")
    return parser.parse_args()


# Each form the bench compares: the complexity form and, for the budget form, its band and step floor.
FORMS = {
    "budget": ("budget", {}),
    "budget-before": ("budget", {"low": 0.9, "high": 0.97, "min_step_fraction": 0.0, "step_memory": 0.0}),
    "reference": ("reference", {}),
}


def make_form(name: str, limit: float, floor: float, first_macs: float, lambda_c: float,
              args: argparse.Namespace) -> ComplexityTerm:
    form, band = FORMS[name]
    if form == "budget":
        return BudgetMultiplier(limit, lambda_c, args.dual_lr, floor_bops=floor, **band)
    return make_complexity(form, limit, first_macs, lambda_c, args.dual_lr, args.cd)


def main() -> None:
    args = parse_args()
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    if args.threads:
        torch.set_num_threads(args.threads)
    space = SearchSpace.load(args.space)
    cifar_stem = args.cifar_stem if space.model.startswith("resnet") else False
    if args.data == "digits":
        data = load_digits(args.image_size or 16)
    else:
        data = make_synthetic(args.num_train, 128, 10, args.image_size or 32, 3, seed=0)
    cost = space.cost_model()
    limit = space.bops_limit
    first_macs = float(cost.macs[cost.searched[0]])
    print(f"{space.model} ({'CIFAR stem, ' if cifar_stem else ''}{args.data} {data.image_size}x{data.image_size}, "
          f"{len(data.train)} training images), limit {limit / 1e9:.4g} G, device {device}")
    inside = {form: 0 for form in args.complexity}
    inside_after_epoch = {form: [0] * args.epochs for form in args.complexity}
    runs = 0
    for seed in args.seeds:
        torch.manual_seed(seed)
        train_loader, val_loader = data.loaders(args.batch_size, seed=seed)
        teacher = create_model(space.model, data.num_classes, data.in_channels, cifar_stem).to(device)
        cached = Path(args.teacher_cache) / f"{space.model}_{args.data}_{seed}.pt" if args.teacher_cache else None
        if cached is not None and cached.is_file():
            teacher.load_state_dict(torch.load(cached, map_location=device, weights_only=True))
        else:
            train_classifier(teacher, train_loader, val_loader, args.teacher_epochs, 0.05, 5e-4, device, progress=False,
                             log=None)
            if cached is not None:
                cached.parent.mkdir(parents=True, exist_ok=True)
                torch.save(teacher.state_dict(), cached)
        teacher.eval().requires_grad_(False)
        for lambda_c, lambda_attr in itertools.product(args.lambda_c, args.lambda_attr):
            runs += 1
            for form in args.complexity:
                ratios = search(form, seed, lambda_c, lambda_attr, teacher, train_loader, space, cost, first_macs,
                                cifar_stem, device, args)
                for epoch, ratio in enumerate(ratios):
                    inside_after_epoch[form][epoch] += 0.85 <= ratio <= 1.0
                inside[form] += 0.85 <= ratios[-1] <= 1.0
    for form, count in inside.items():
        per_epoch = ", ".join(f"{n}" for n in inside_after_epoch[form])
        print(f"{form}: argmax inside [0.85, 1.0] x limit after the last epoch in {count} of {runs} run(s) "
              f"({count / runs:.0%}); after each epoch: {per_epoch} of {runs}")


def search(form: str, seed: int, lambda_c: float, lambda_attr: float, teacher: torch.nn.Module, train_loader,
           space: SearchSpace, cost, first_macs: float, cifar_stem: bool, device: torch.device,
           args: argparse.Namespace) -> list[float]:
    """One search from ``teacher``: the argmax policy's BOPs / limit after each epoch."""
    limit = space.bops_limit
    torch.manual_seed(seed)
    supernet = to_supernet(copy.deepcopy(teacher).requires_grad_(True), space.w_bits, space.a_bits,
                           space.fixed_layers, space.fixed).to(device)
    calibrate(supernet, train_loader, device)
    complexity = make_form(form, limit, cost.floor_bops(space.w_bits, space.a_bits), first_macs, lambda_c, args)
    objective = GMPQObjective(supernet, teacher, space.model, cost, limit, lambda_attr, lambda_c, complexity=complexity)
    alphas = [p for n, p in supernet.named_parameters() if n.endswith(("alpha_w", "alpha_a"))]
    weights = [p for n, p in supernet.named_parameters() if not n.endswith(("alpha_w", "alpha_a"))]
    weight_opt = torch.optim.SGD(weights, lr=args.lr_weights, momentum=0.9, weight_decay=1e-4)
    alpha_opt = torch.optim.SGD(alphas, lr=args.lr_alpha, momentum=0.9, weight_decay=1e-4)
    ratios = []
    for epoch in range(1, args.epochs + 1):
        start = time.perf_counter()
        result = run_epoch(supernet, train_loader, objective, [weight_opt, alpha_opt], device)
        seconds = time.perf_counter() - start
        expected = float(objective.expected_bops()[0].detach()) / limit
        policy = argmax_policy(supernet, space.model, space.input_size)
        ratios.append(cost.policy_bops(policy, space.fixed)[0] / limit)
        multiplier = getattr(complexity, "multiplier", None)
        if not args.quiet:
            print(f"{form:13s} seed {seed} lambda_c {lambda_c:g} lambda_attr {lambda_attr:g} epoch {epoch}: "
                  f"argmax {ratios[-1]:.3f} x limit, expected {expected:.3f} x limit, "
                  f"multiplier {'-' if multiplier is None else f'{float(multiplier):+.2f}'}, "
                  f"train acc {result.accuracy:.3f}, {seconds:.1f} s/epoch", flush=True)
    if args.quiet:
        mark = "inside" if 0.85 <= ratios[-1] <= 1.0 else "OUT"
        print(f"{form:13s} seed {seed} lambda_c {lambda_c:<4g} lambda_attr {lambda_attr:<4g}: argmax / limit after each "
              f"epoch {' '.join(f'{ratio:.3f}' for ratio in ratios)}  {mark}", flush=True)
    return ratios


if __name__ == "__main__":
    main()
