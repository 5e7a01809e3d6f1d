"""``gmpq ablate``: the dataset-transfer ablation (search on each small data set, finetune on the large one)."""

from __future__ import annotations

import argparse


def add_parser(commands) -> None:
    ablate = commands.add_parser("ablate", help="dataset-transfer ablation: search on small data sets, finetune on a large one")
    ablate.set_defaults(handler=run)
    ablate.add_argument("job", help="ablation job YAML, e.g. jobs/dataset_transfer_quickstart.yaml")
    ablate.add_argument("--output", required=True, help="run folder for the results (new or empty)")
    ablate.add_argument("--address", default=None, help="Ray cluster address (e.g. auto); default: start a local Ray")
    which = ablate.add_mutually_exclusive_group()
    which.add_argument("--overwrite", action="store_true", help="replace an earlier run's results in --output")
    which.add_argument("--resume", action="store_true", help="continue the interrupted ablation in --output")


def run(args: argparse.Namespace) -> int:
    from gmpq_ray.experiments.ablate import run_ablation

    run_ablation(args.job, args.output, address=args.address, overwrite=args.overwrite, resume=args.resume)
    return 0
