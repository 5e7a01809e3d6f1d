"""``gmpq compare``: differentiable against sampling-based search under one budget."""

from __future__ import annotations

import argparse


def add_parser(commands) -> None:
    compare = commands.add_parser("compare", help="compare differentiable and sampling-based search")
    compare.set_defaults(handler=run)
    compare.add_argument("job", help="comparison job YAML, e.g. jobs/compare_quickstart.yaml")
    compare.add_argument("--output", required=True, help="run folder for the results (new or empty)")
    compare.add_argument("--address", default=None, help="Ray cluster address; default: start a local Ray")
    compare.add_argument("--overwrite", action="store_true", help="replace an earlier run's results in --output")


def run(args: argparse.Namespace) -> int:
    from gmpq_ray.experiments.compare import run_compare

    run_compare(args.job, args.output, address=args.address, overwrite=args.overwrite)
    return 0
