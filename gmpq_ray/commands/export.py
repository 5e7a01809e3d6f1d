"""``gmpq export``: a finetuned policy as an ONNX model with explicit Q/DQ, checked in ONNX Runtime."""

from __future__ import annotations

import argparse
import sys


def add_parser(commands) -> None:
    export = commands.add_parser("export", help="export a finetuned policy to ONNX (Q/DQ), checked in onnxruntime")
    export.set_defaults(handler=run)
    export.add_argument("source", metavar="RUN_DIR_OR_STATE",
                        help="a finetune run folder (policy.json, job.yaml, model.pt), or a state dict with --policy and --job")
    export.add_argument("--output", required=True, help="the .onnx file to write (export_check.json goes beside it)")
    export.add_argument("--policy", default=None, help="policy JSON of the state dict (not with a run folder)")
    export.add_argument("--job", default=None, help="finetune job YAML naming the model and the validation data (not with a run folder)")
    export.add_argument("--int4", action="store_true", help="opset 21: int4 weights for layers of 4 bits or fewer, uint4 4-bit inputs")
    export.add_argument("--images", type=int, default=1000, help="validation images the check runs on (default 1000; 0: all)")
    export.add_argument("--overwrite", action="store_true", help="replace an existing model file and export_check.json")


def run(args: argparse.Namespace) -> int:
    from gmpq_ray.export import MIN_AGREEMENT, export_run

    result = export_run(args.source, args.output, policy=args.policy, job=args.job, int4=args.int4, overwrite=args.overwrite,
                        max_images=None if args.images == 0 else args.images)
    if not result.passed:
        agreement = 100 * result.check["top1_agreement"]
        print(f"gmpq: export check failed: top-1 agreement {agreement:.2f} % (at least {100 * MIN_AGREEMENT:.1f} % needed) "
              f"or weights off their grid; the files are kept, see {result.check_path}", file=sys.stderr)
        return 1
    return 0
