"""The ``gmpq`` command: ``gmpq search`` and ``gmpq bops``.

Errors a user can cause print one line (``gmpq: error: ...``) and exit with code 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from gmpq_ray.core.errors import UserInputError

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse's own errors: same one-line form, exit 2
        self.exit(EXIT_USAGE, f"gmpq: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="gmpq", description="Generalizable mixed-precision quantization search on Ray Tune and Optuna.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    search = commands.add_parser("search", help="run a GMPQ search job")
    search.add_argument("job", nargs="?", help="job YAML file, e.g. jobs/quickstart.yaml")
    where = search.add_mutually_exclusive_group(required=True)
    where.add_argument("--output", help="run folder for the results (new or empty)")
    where.add_argument("--resume", metavar="DIR", help="continue the interrupted search in run folder DIR")
    search.add_argument("--address", default=None, help="Ray cluster address (e.g. auto); default: start a local Ray")
    search.add_argument("--overwrite", action="store_true", help="replace an earlier run's results in --output")
    search.add_argument("--no-progress", action="store_true", help="no progress bars")

    bops = commands.add_parser("bops", help="BOPs of a uniform or given policy")
    bops.add_argument("model", help="model name, e.g. resnet18")
    bops.add_argument("--input-size", type=int, required=True, help="deployment resolution, e.g. 224")
    which = bops.add_mutually_exclusive_group(required=True)
    which.add_argument("--uniform", nargs=2, type=int, metavar=("W", "A"), help="every layer at W-bit weights, A-bit activations")
    which.add_argument("--policy", help="policy JSON file")
    bops.add_argument("--fixed-bits", type=int, default=None,
                      help="bits of the first conv and classifier (default: same as --uniform, or the policy's)")
    bops.add_argument("--num-classes", type=int, default=1000)
    bops.add_argument("--in-channels", type=int, default=3)
    return parser


def _search(args: argparse.Namespace) -> int:
    from gmpq_ray.search.runner import run_search

    run_search(args.job, args.resume or args.output, address=args.address, overwrite=args.overwrite,
               resume=args.resume is not None, progress=not args.no_progress)
    return 0


def _bops(args: argparse.Namespace) -> int:
    from gmpq_ray.core.complexity import CostModel, format_bops
    from gmpq_ray.core.models import model_entry
    from gmpq_ray.core.policy import LayerBits, Policy, check_bits

    model_entry(args.model)
    if args.input_size < 8:
        raise UserInputError(f"--input-size must be at least 8, got {args.input_size}")
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
        policy.validate_layers(cost.searched, cost.fixed)
        if fixed is not None:
            policy.fixed_layers = {name: fixed for name in cost.fixed}
        label = args.policy
    searched, total = cost.policy_bops(policy)
    print(f"{args.model} at {args.input_size}x{args.input_size}, {label}")
    print(f"  searched layers ({len(cost.searched)}): {format_bops(searched)}")
    print(f"  fixed layers ({', '.join(cost.fixed)}): {format_bops(total - searched)}")
    print(f"  total: {format_bops(total)}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``gmpq`` console command."""
    args = build_parser().parse_args(argv)
    handlers = {"search": _search, "bops": _bops}
    try:
        return handlers[args.command](args)
    except UserInputError as err:
        print(f"gmpq: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("gmpq: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
