"""Cost of one GMPQ search step against a plain FP training step, measured side by side.

On the same network and batch, in one process, it times (median over interleaved rounds):

  (a) an FP training step (cross-entropy);
  (b) a supernet step with cross-entropy and the complexity loss only;
  (c) the full GMPQ step: teacher forward, closed-form attribution imitation, complexity;
  (d) the same with the autograd (Grad-CAM, second backward) attribution path;
  (e) step (c) with the teacher forced to fp32, to show what the bf16 teacher saves where the
      hardware runs bf16 natively (the student trains in fp32 in every variant);

and prints the ratios b/a, c/a, c/b, d/c, e/a and the memory of each step: on CPU the bytes of
the tensors autograd keeps for the backward pass (plus weights, grads and optimizer state),
on CUDA the peak allocated memory. Example:

    python benchmarks/bench_search_step.py --model resnet18 --cifar-stem --batch-size 32 --bits 2 3 4 6

``--kernels eager compiled`` (the default where ``torch.compile`` has a toolchain) times (b) to
(e) once with the eager quantizer kernels and once with the ``torch.compile``d ones (see
``gmpq_ray.core.quant.kernels_compiled.use_compiled_kernels``, and ``search.quantizer_kernels`` of a job),
in the same run; they compile during the warmup steps.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
import torch.nn.functional as F

from gmpq_ray.core import CostModel, GMPQObjective, calibrate, create_model, make_synthetic, to_supernet
from gmpq_ray.core.policy import LayerBits
from gmpq_ray.core.quant.kernels_compiled import compiler_available, use_compiled_kernels
from gmpq_ray.core.train.teacher import teacher_dtype


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--cifar-stem", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--num-classes", type=int, default=10)
    parser.add_argument("--bits", type=int, nargs="+", default=[2, 3, 4, 6], help="weight and activation candidates")
    parser.add_argument("--rounds", type=int, default=12, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    parser.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                        help="bf16 autocast for every variant (default: on for CUDA)")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                        help="channels_last memory format (default: on for CUDA)")
    parser.add_argument("--variants", default="abcde", help="which of a, b, c, d, e to run")
    parser.add_argument("--teacher-precision", default="auto", choices=["auto", "fp32", "bf16"],
                        help="the teacher's forward pass in (c) and (d); auto: bf16 where native")
    parser.add_argument("--kernels", nargs="+", choices=["eager", "compiled"], default=None,
                        help="quantizer kernels to time (b) to (e) with (default: both where torch.compile works, else eager)")
    return parser.parse_args()


class Variant:
    """One kind of training step on its own copy of the network."""

    def __init__(self, name, model, loss_fn, device, autocast, kernels=None):
        self.name, self.model, self.loss_fn, self.kernels = name, model, loss_fn, kernels
        self.device, self.autocast = device, autocast
        self.optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        self.times: list[float] = []
        self.memory_bytes = 0

    def step(self, images, labels):
        if self.kernels is not None:
            use_compiled_kernels(self.kernels == "compiled")
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            loss, _ = self.loss_fn(self.model, images, labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    def timed_step(self, images, labels):
        sync(self.device)
        start = time.perf_counter()
        self.step(images, labels)
        sync(self.device)
        self.times.append(time.perf_counter() - start)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def saved_tensor_bytes(variant: Variant, images, labels) -> int:
    """Bytes autograd keeps for the backward pass of one step (distinct storages)."""
    storages: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    params = {p.untyped_storage().data_ptr() for p in variant.model.parameters()}
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        variant.step(images, labels)
    activations = sum(n for ptr, n in storages.items() if ptr not in params)
    weights = sum(p.numel() * p.element_size() for p in variant.model.parameters())
    # weights + grads + momentum + what the backward pass keeps
    return activations + 3 * weights


def cuda_peak_bytes(variant: Variant, images, labels) -> int:
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(variant.device)
    variant.step(images, labels)
    sync(variant.device)
    return torch.cuda.max_memory_allocated(variant.device)


def resolve_device(name: str) -> torch.device:
    """``auto``: CUDA where there is one, else the CPU."""
    return torch.device("cuda" if name == "auto" and torch.cuda.is_available() else ("cpu" if name == "auto" else name))


def run_variants(args: argparse.Namespace, device: torch.device, kernels: list[str], autocast: bool,
                 channels_last: bool) -> list[Variant]:
    """Build the variants ``args.variants`` asks for, measure each one's memory, then time them interleaved.

    ``args`` needs the fields of :func:`parse_args` that describe the network and the timing
    (model, cifar_stem, batch_size, image_size, num_classes, bits, rounds, warmup, variants,
    teacher_precision); ``benchmarks/gpu_check.py`` calls this too.
    """
    torch.manual_seed(0)

    data = make_synthetic(num_train=args.batch_size * 4, num_val=8, num_classes=args.num_classes,
                          image_size=args.image_size, in_channels=3)
    images, labels = data.train.tensors[0][: args.batch_size], data.train.tensors[1][: args.batch_size]
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    images = images.to(device).contiguous(memory_format=memory_format)
    labels = labels.to(device)

    teacher = create_model(args.model, args.num_classes, 3, args.cifar_stem).to(device, memory_format=memory_format)
    cost = CostModel.for_model(args.model, 224, 1000, 3)  # budgets are deployment BOPs
    limit = cost.searched_macs() * 9  # about uniform 3-bit

    def supernet():
        net = to_supernet(copy.deepcopy(teacher), args.bits, args.bits, fixed_bits=LayerBits(8, 8))
        net.to(device, memory_format=memory_format)
        calibrate(net, [(images, labels)], device, num_batches=1)
        return net

    def fp_loss(model, x, y):
        logits = model(x)
        return F.cross_entropy(logits, y), logits

    def ce_complexity(model, x, y):
        logits = model(x)
        return F.cross_entropy(logits, y) + 1.0 * cost.expected_bops(model) / limit, logits

    variants = []
    if "a" in args.variants:
        variants.append(Variant("a FP step", copy.deepcopy(teacher), fp_loss, device, autocast))
    labels_of = {"b": "b supernet CE+complexity", "c": "c GMPQ step (closed form)",
                 "d": "d GMPQ step (autograd attribution)", "e": "e GMPQ step, fp32 teacher"}
    for mode in kernels:
        if "b" in args.variants:
            variants.append(Variant(labels_of["b"], supernet(), ce_complexity, device, autocast, mode))
        for key, path, precision in (("c", "closed_form", args.teacher_precision),
                                     ("d", "autograd", args.teacher_precision), ("e", "closed_form", "fp32")):
            if key in args.variants:
                net = supernet()
                objective = GMPQObjective(net, teacher, args.model, cost, limit, 40.0, 1.0, attribution=path,
                                          teacher_precision=precision)
                variants.append(Variant(labels_of[key], net, objective, device, autocast, mode))

    for variant in variants:
        variant.memory_bytes = (cuda_peak_bytes if device.type == "cuda" else saved_tensor_bytes)(variant, images, labels)
        for _ in range(args.warmup):
            variant.step(images, labels)
    for _ in range(args.rounds):  # interleaved, so drifts in machine load hit every variant alike
        for variant in variants:
            variant.timed_step(images, labels)
    return variants


def main() -> None:
    args = parse_args()
    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    kernels = args.kernels or (["eager", "compiled"] if compiler_available(device) else ["eager"])
    autocast = device.type == "cuda" if args.bf16 is None else args.bf16
    channels_last = device.type == "cuda" if args.channels_last is None else args.channels_last
    variants = run_variants(args, device, kernels, autocast, channels_last)

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"{args.model}{' (CIFAR stem)' if args.cifar_stem else ''}, batch {args.batch_size}, "
          f"{args.image_size}x{args.image_size}, bits {args.bits}, {name}, torch {torch.__version__}, "
          f"bf16 autocast {'on' if autocast else 'off'}, channels_last {'on' if channels_last else 'off'}, "
          f"quantizer kernels {' and '.join(kernels)}, "
          f"teacher in {str(teacher_dtype(args.teacher_precision, device)).removeprefix('torch.')}")
    memory_label = "peak GPU memory" if device.type == "cuda" else "step memory (saved for backward + weights, grads, momentum)"
    medians = {}
    for variant in variants:
        median = statistics.median(variant.times)
        medians[(variant.name[0], variant.kernels)] = (median, variant.memory_bytes)
        name = variant.name + (f" [{variant.kernels}]" if variant.kernels else "")
        print(f"  {name:49s} {median * 1e3:9.1f} ms  {args.batch_size / median:9.0f} img/s  "
              f"{variant.memory_bytes / 2**20:9.1f} MiB {memory_label}")
    for mode in kernels:
        print(f"ratios with {mode} quantizer kernels (time; memory):")
        for top, bottom in (("b", "a"), ("c", "a"), ("c", "b"), ("d", "c"), ("e", "a")):
            first, second = medians.get((top, mode)), medians.get((bottom, None if bottom == "a" else mode))
            if first and second:
                print(f"  {top}/{bottom}: {first[0] / second[0]:5.2f}x time, {first[1] / second[1]:5.2f}x memory")
        if ("c", mode) in medians:
            epoch = 50_000 / (args.batch_size / medians[("c", mode)][0])
            print(f"  one 50,000-image search epoch at the speed of (c): {epoch:.0f} s")


if __name__ == "__main__":
    main()
