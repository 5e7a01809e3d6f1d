"""``gmpq bops``: BOPs of a uniform or given policy, to size budgets."""

from __future__ import annotations

import argparse

from gmpq_ray.core.errors import UserInputError


def add_parser(commands) -> None:
    bops = commands.add_parser("bops", help="BOPs of a uniform or given policy")
    bops.set_defaults(handler=run)
    bops.add_argument("model", help="model name, e.g. resnet18")
    bops.add_argument("--input-size", type=int, required=True, help="deployment resolution, e.g. 224")
    which = bops.add_mutually_exclusive_group(required=True)
    which.add_argument("--uniform", nargs=2, type=int, metavar=("W", "A"), help="every layer at W-bit weights, A-bit activations")
    which.add_argument("--policy", help="policy JSON file")
    bops.add_argument("--fixed-bits", type=int, default=None,
                      help="bits of the first conv and classifier (default: same as --uniform, or the policy's)")
    bops.add_argument("--num-classes", type=int, default=1000)
    bops.add_argument("--in-channels", type=int, default=3)

def run(args: argparse.Namespace) -> int:
    from gmpq_ray.core.config import MAX_CLASSES, MAX_IMAGE_SIZE, MAX_IN_CHANNELS
    from gmpq_ray.core.cost.bops import CostModel, format_bops
    from gmpq_ray.core.models.registry import model_entry
    from gmpq_ray.core.policy import LayerBits, Policy, check_bits

    model_entry(args.model)
    for flag, value, low, high in (("--input-size", args.input_size, 8, MAX_IMAGE_SIZE),
                                   ("--num-classes", args.num_classes, 2, MAX_CLASSES),
                                   ("--in-channels", args.in_channels, 1, MAX_IN_CHANNELS)):
        if not low <= value <= high:
            raise UserInputError(f"{flag} must be between {low} and {high}, got {value}")
    cost = CostModel.for_model(args.model, args.input_size, args.num_classes, args.in_channels)
    fixed = None
    if args.fixed_bits is not None:
        check_bits(args.fixed_bits, "--fixed-bits")
        fixed = LayerBits(args.fixed_bits, args.fixed_bits)
    if args.uniform:
        w, a = (check_bits(b, f"--uniform {name}") for b, name in zip(args.uniform, "WA"))
        policy = cost.uniform_policy(args.model, w, a, fixed)
        label = f"uniform W{w}/A{a}"
    else:
        policy = Policy.load(args.policy)
        if policy.model != args.model:
            raise UserInputError(f"{args.policy}: policy is for {policy.model!r}, not {args.model!r}")
        if policy.input_size is not None and policy.input_size != args.input_size:
            raise UserInputError(f"{args.policy}: the policy is for input size {policy.input_size}, not --input-size "
                                 f"{args.input_size} (its BOPs depend on it)")
        policy.validate_layers(cost.searched, cost.fixed_layers)
        if fixed is not None:
            policy.fixed_layers = {name: fixed for name in cost.fixed_layers}
        label = args.policy
    searched, total = cost.policy_bops(policy)
    print(f"{args.model} at {args.input_size}x{args.input_size}, {label}")
    print(f"  searched layers ({len(cost.searched)}): {format_bops(searched)}")
    print(f"  fixed layers ({', '.join(cost.fixed_layers)}): {format_bops(total - searched)}")
    print(f"  total: {format_bops(total)}")
    return 0
