"""``gmpq search``: run a GMPQ search job, or resume an interrupted one."""

from __future__ import annotations

import argparse


def add_parser(commands) -> None:
    search = commands.add_parser("search", help="run a GMPQ search job")
    search.set_defaults(handler=run)
    search.add_argument("job", nargs="?", help="job YAML file, e.g. jobs/quickstart.yaml")
    where = search.add_mutually_exclusive_group(required=True)
    where.add_argument("--output", help="run folder for the results (new or empty)")
    where.add_argument("--resume", metavar="DIR", help="continue the interrupted search in run folder DIR")
    search.add_argument("--address", default=None, help="Ray cluster address (e.g. auto); default: start a local Ray")
    search.add_argument("--overwrite", action="store_true", help="replace an earlier run's results in --output")
    search.add_argument("--no-progress", action="store_true", help="no progress bars")

def run(args: argparse.Namespace) -> int:
    from gmpq_ray.search.runner import run_search

    run_search(args.job, args.resume or args.output, address=args.address, overwrite=args.overwrite,
               resume=args.resume is not None, progress=not args.no_progress)
    return 0
