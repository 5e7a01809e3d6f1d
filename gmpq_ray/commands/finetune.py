"""``gmpq finetune``: finetune a policy with QAT on many Ray Train workers, or resume such a run."""

from __future__ import annotations

import argparse
import sys


def add_parser(commands) -> None:
    finetune = commands.add_parser("finetune", help="finetune a policy with QAT (Ray Train, DDP)")
    finetune.set_defaults(handler=run)
    finetune.add_argument("policy", help="policy JSON file, e.g. runs/quickstart/best_policy.json")
    finetune.add_argument("job", help="finetune job YAML file, e.g. jobs/finetune_digits.yaml")
    finetune.add_argument("--output", required=True, help="run folder for the results (new or empty)")
    finetune.add_argument("--workers", type=int, default=None, help="number of DDP workers (default: the job's)")
    finetune.add_argument("--gpus-per-worker", type=float, default=None, help="GPUs per worker (default: the job's)")
    finetune.add_argument("--address", default=None, help="Ray cluster address (e.g. auto); default: start a local Ray")
    which = finetune.add_mutually_exclusive_group()
    which.add_argument("--overwrite", action="store_true", help="replace an earlier run's results in --output")
    which.add_argument("--resume", action="store_true", help="continue the interrupted run in --output from its last checkpoint")


def run(args: argparse.Namespace) -> int:
    from gmpq_ray.finetune.runner import finetune

    result = finetune(args.policy, args.job, args.output, workers=args.workers, gpus_per_worker=args.gpus_per_worker,
                      overwrite=args.overwrite, resume=args.resume, address=args.address)
    if result.export is not None and not result.export.passed:
        print(f"gmpq: export check failed: top-1 agreement {100 * result.export.check['top1_agreement']:.2f} % between "
              f"onnxruntime and PyTorch; see {result.export.check_path}", file=sys.stderr)
        return 1
    return 0
