"""Search jobs: the YAML a user launches, parsed into typed, validated dataclasses.

A job names a search space (a YAML path relative to the job file, or an inline mapping), the
small data set, the FP teacher, the search method with the hyper-parameters Optuna tunes, and
the resources per trial. See ``jobs/quickstart.yaml``. This module imports no Ray.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from gmpq_ray.core.config import key_path, load_yaml, parse, require, require_name, require_seed, short_repr
from gmpq_ray.core.cost.searchspace import SearchSpace
from gmpq_ray.core.data.bundle import DataConfig
from gmpq_ray.core.errors import UserInputError
from gmpq_ray.core.models.pretrained import is_weights_name
from gmpq_ray.core.objective.complexity_term import DEFAULT_DUAL_LR, REFERENCE_CD, ComplexityForm
from gmpq_ray.core.train.teacher import TeacherPrecision
from gmpq_ray.search.methods import METHOD_NAMES
from gmpq_ray.search.metrics import TRIAL_METRICS

# The ``search.method`` names: the registered search methods (gmpq_ray.search.methods).
MethodName = Literal[METHOD_NAMES]  # type: ignore[valid-type]

# Hyper-parameters of the differentiable search that a job may tune, with their defaults.
# Where the GMPQ reference code (ZiweiWangTHU/GMPQ, search_attention.py; its README's search
# command for ResNet-18 on CIFAR-10) has the knob, the default is its value:
SEARCH_PARAM_DEFAULTS: dict[str, float] = {
    "lambda_attr": 40.0,    # --aw 40 (README command; the argparse default is 20)
    "lr_weights": 0.1,      # --lr 0.1, SGD momentum 0.9
    "lr_alpha": 0.01,       # --lra 0.01, SGD momentum 0.9
    "weight_decay": 1e-4,   # --wd 1e-4, on the weights *and* on alpha (both optimizers)
    "kappa": 24.0,          # --product 24: p = kappa * mean_l 1/(E[b_w] E[b_a]) (capacity-aware)
    "cd": REFERENCE_CD,     # --cd 3e-4: weight of E[BOPs]/MACs(first searched layer), complexity: reference
    # Not in the reference: the budget multiplier (complexity: budget, the default here) starts
    # at lambda_c and its first step is dual_lr (see core/objective/complexity_term.py).
    "lambda_c": 1.0,
    "dual_lr": DEFAULT_DUAL_LR,
}
# What each parameter's values must exceed (learning rates, kappa, p and the multiplier's step:
# > 0), or reach (>= 0: a lambda, cd or the weight decay of 0 switches its term off).
_POSITIVE_PARAMS = ("lr_weights", "lr_alpha", "kappa", "p", "dual_lr")
_NON_NEGATIVE_PARAMS = ("lambda_attr", "lambda_c", "weight_decay", "cd")
# Tunable without a default: ``p``, the reference's fixed imitation exponent (--pnorm 3, the
# exponent its README's command runs with). A job gives either ``p`` or ``kappa``, not both.
OPTIONAL_SEARCH_PARAMS: tuple[str, ...] = ("p",)


@dataclass
class TeacherConfig:
    """The FP teacher: trained once per search, or loaded from a state dict."""

    epochs: int = 10
    lr: float = 0.05
    weight_decay: float = 5e-4
    state_dict: str | None = None

    def validate(self, where: str) -> None:
        require(self.epochs >= 0, f"{key_path(where)}epochs", "must not be negative")
        require(self.lr > 0, f"{key_path(where)}lr", "must be positive")
        require(self.weight_decay >= 0, f"{key_path(where)}weight_decay", f"must not be negative, got {self.weight_decay}")
        require(self.state_dict is not None or self.epochs >= 1, f"{where}", "give epochs >= 1 or a state_dict")


@dataclass
class ParamSpec:
    """One tuned hyper-parameter: a fixed ``value``, a range (``low``, ``high``, ``log``), or ``choices``."""

    value: float | None = None
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: list[float] | None = None

    def validate(self, where: str) -> None:
        given = [self.value is not None, self.low is not None or self.high is not None, self.choices is not None]
        require(sum(given) == 1, where, "give exactly one of value, low/high, or choices")
        if self.low is not None or self.high is not None:
            require(self.low is not None and self.high is not None, where, "a range needs both low and high")
            require(self.low < self.high, where, f"low ({self.low}) must be below high ({self.high})")
            require(not self.log or self.low > 0, where, "a log range needs low > 0")
        if self.choices is not None:
            require(len(self.choices) >= 1, f"{key_path(where)}choices", "needs at least one value")
        for number in (self.value, self.low, self.high, *(self.choices or [])):
            require(number is None or math.isfinite(number), where, "values must be finite")


@dataclass
class PrunerConfig:
    """The Optuna pruner that stops trials whose ARC degrades (fed each epoch's ``arc``)."""

    type: Literal["none", "median", "percentile", "successive_halving"] = "median"
    n_startup_trials: int = 2
    n_warmup_steps: int = 1
    percentile: float = 25.0
    min_resource: int = 1
    reduction_factor: int = 3

    def validate(self, where: str) -> None:
        require(self.n_startup_trials >= 0 and self.n_warmup_steps >= 0, where, "counts must not be negative")
        require(0 < self.percentile < 100, f"{key_path(where)}percentile", "must be between 0 and 100")
        require(self.min_resource >= 1 and self.reduction_factor >= 2, where, "min_resource >= 1 and reduction_factor >= 2")


@dataclass
class SearchConfig:
    """How the search runs: method, trials, epochs, objective, sampler and tuned parameters."""

    method: MethodName = "differentiable"
    epochs: int = 6
    num_trials: int = 2
    max_concurrent_trials: int = 2
    metric: str = "policy_accuracy"
    mode: Literal["max", "min"] = "max"
    sampler: Literal["tpe", "nsga2", "random"] = "tpe"
    proposal_mode: Literal["repair", "raw"] = "repair"
    arc_weight: float = 0.0
    qat_lr: float = 0.01
    time_budget_s: float | None = None
    bops_warmup_epochs: int | None = None
    bops_tolerance: float = 0.1
    pruner: PrunerConfig = field(default_factory=PrunerConfig)
    seed: int = 0
    attribution: Literal["closed_form", "autograd"] = "closed_form"
    teacher_precision: TeacherPrecision = "auto"
    quantizer_kernels: Literal["auto", "compiled", "eager"] = "auto"
    complexity: ComplexityForm = "budget"
    schedule: Literal["step", "cosine"] = "step"
    step_epochs: int = 10
    # Differentiable only: raise the derived policy's bits up to the limit after repair. Off by
    # default, so that the reported policy is the supernet's argmax (repaired only if over).
    fill_budget: bool = False
    proxy: Literal["arc", "kl", "fit"] = "kl"
    proxy_batches: int = 4
    proxy_data: Literal["train", "noise"] = "train"
    proxy_precision: Literal["fp32", "bf16"] = "fp32"
    max_failures: int = 2
    params: dict[str, ParamSpec] = field(default_factory=dict)
    initial_points: list[dict[str, float]] = field(default_factory=list)

    def validate(self, where: str) -> None:
        require(self.epochs >= 1, f"{key_path(where)}epochs", "must be at least 1")
        require(self.num_trials >= 1, f"{key_path(where)}num_trials", "must be at least 1")
        require(self.max_concurrent_trials >= 1, f"{key_path(where)}max_concurrent_trials", "must be at least 1")
        require(self.max_failures >= 0, f"{key_path(where)}max_failures", "must not be negative")
        require(self.sampler != "nsga2" or self.method == "sampling", f"{key_path(where)}sampler",
                "nsga2 (multi-objective) needs method: sampling")
        require(self.time_budget_s is None or self.time_budget_s > 0, f"{key_path(where)}time_budget_s", "must be positive")
        require(self.qat_lr > 0, f"{key_path(where)}qat_lr", "must be positive")
        require(self.bops_warmup_epochs is None or self.bops_warmup_epochs >= 0, f"{key_path(where)}bops_warmup_epochs",
                "must not be negative")
        require(self.bops_tolerance >= 0, f"{key_path(where)}bops_tolerance", "must not be negative")
        require(self.arc_weight >= 0, f"{key_path(where)}arc_weight", f"must not be negative, got {self.arc_weight}")
        require_seed(self.seed, f"{key_path(where)}seed")
        require(self.step_epochs >= 1, f"{key_path(where)}step_epochs", "must be at least 1")
        allowed = sorted([*SEARCH_PARAM_DEFAULTS, *OPTIONAL_SEARCH_PARAMS])
        unknown = sorted(set(self.params) - set(allowed))
        require(not unknown, f"{key_path(where)}params", f"unknown parameter(s) {short_repr(unknown)}; allowed: {allowed}")
        require(not ("p" in self.params and "kappa" in self.params), f"{key_path(where)}params.p",
                "give either p (a fixed imitation exponent) or kappa (the capacity-aware one), not both")
        for name, spec in self.params.items():
            smallest = min(number for number in (spec.value, spec.low, *(spec.choices or [])) if number is not None)
            if name in _POSITIVE_PARAMS:
                require(smallest > 0, f"{key_path(where)}params.{name}", f"must be positive, got {smallest}")
            elif name in _NON_NEGATIVE_PARAMS:
                require(smallest >= 0, f"{key_path(where)}params.{name}", f"must not be negative, got {smallest}")
        require(self.proxy_batches >= 1, f"{key_path(where)}proxy_batches", "must be at least 1 (the proxies score on these batches)")
        require(not (self.proxy == "fit" and self.proxy_data == "noise"), f"{key_path(where)}proxy",
                "'fit' needs labels; proxy_data 'noise' has none (use kl or arc, or proxy_data: train)")
        require(self.method != "proxy" or self.time_budget_s is None, f"{key_path(where)}time_budget_s",
                "does not apply to method 'proxy' (one scoring and one solve, no trials to cut short)")
        require(self.metric in TRIAL_METRICS, f"{key_path(where)}metric",
                f"{short_repr(self.metric)} is not reported by trials; choose from {sorted(TRIAL_METRICS)}")

        tuned = sorted(name for name, spec in self.resolved_params().items() if spec.value is None)
        # Sampling points name per-layer bits: checked against the search space in parse_job.
        for i, point in enumerate(self.initial_points if self.method == "differentiable" else []):
            where_point = f"{key_path(where)}initial_points[{i}]"
            require(sorted(point) == tuned, where_point, f"must give exactly the tuned parameters {tuned}, got {sorted(point)}")
            for name, value in point.items():
                spec = self.params[name]
                inside = value in spec.choices if spec.choices is not None else spec.low <= value <= spec.high
                require(inside, f"{where_point}.{name}", f"{value} is outside the parameter's range or choices")

    def supernet_bops_warmup(self) -> int:
        """Epochs a supernet gets before its expected BOPs are held to the limit (default: half)."""
        return self.bops_warmup_epochs if self.bops_warmup_epochs is not None else math.ceil(self.epochs / 2)

    def resolved_params(self) -> dict[str, ParamSpec]:
        """Every tunable parameter: the job's spec, or its fixed default (``p`` only where given)."""
        resolved = {name: self.params.get(name, ParamSpec(value=default)) for name, default in SEARCH_PARAM_DEFAULTS.items()}
        resolved.update({name: self.params[name] for name in OPTIONAL_SEARCH_PARAMS if name in self.params})
        return resolved


@dataclass
class ResourcesConfig:
    """Resources of one trial. With ``workers_per_trial`` > 1 a differentiable trial trains on
    that many DDP workers (Ray Train), each on a shard of the data, sharing the trial's CPUs and GPUs."""

    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    workers_per_trial: int = 1

    def validate(self, where: str) -> None:
        require(self.cpus_per_trial > 0, f"{key_path(where)}cpus_per_trial", "must be positive")
        require(self.gpus_per_trial >= 0, f"{key_path(where)}gpus_per_trial", "must not be negative")
        require(self.workers_per_trial >= 1, f"{key_path(where)}workers_per_trial", "must be at least 1")


@dataclass
class JobFile:
    """A search job as its YAML file gives it: the search space a path (relative to the file)
    or an inline mapping. :func:`parse_job` resolves it into a :class:`Job`."""

    name: str
    # A path or a mapping, checked when it is resolved (so that any other value gets one message).
    searchspace: Any
    data: DataConfig = field(default_factory=DataConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)

    def validate(self, where: str) -> None:
        require_name(self.name, f"{key_path(where)}name")


@dataclass
class Job(JobFile):
    """A whole search job, resolved: its search space parsed, its paths absolute."""

    searchspace: SearchSpace
    base_dir: str = field(default=".", init=False)

    @property
    def space(self) -> SearchSpace:
        return self.searchspace


def job_to_dict(job: Job) -> dict[str, Any]:
    """The plain-data form of a resolved job: the search space inline, paths absolute.

    :func:`load_job` reads it back to the same job; a run folder keeps it as ``job.yaml`` so that
    ``--resume`` needs nothing else.
    """
    from gmpq_ray.core.config import config_to_dict

    data = config_to_dict(job, omit_defaults=(ParamSpec,))  # a ParamSpec keeps only what it sets
    data["searchspace"]["bops_limit"] = f"{job.space.bops_limit / 1e6:.6f}M"
    return data


def load_job(path: str | Path) -> Job:
    """Read, validate and resolve a job file (search space and paths relative to it)."""
    path = Path(path)
    return parse_job(load_yaml(path), path)


def parse_job(raw: Any, path: Path) -> Job:
    """Validate and resolve a parsed job mapping read from ``path``."""
    written = parse(JobFile, raw, str(path))
    base = path.resolve().parent
    settings = {f.name: getattr(written, f.name) for f in dataclasses.fields(JobFile)}
    job = Job(**{**settings, "searchspace": _load_space(written.searchspace, base, f"{path}: searchspace")})
    job.base_dir = str(base)
    job.data.resolve_paths(base)
    if job.teacher.state_dict is not None and not is_weights_name(job.teacher.state_dict):
        state = (base / job.teacher.state_dict).resolve()
        if not state.is_file():
            raise UserInputError(f"{path}: teacher.state_dict {state} does not exist")
        job.teacher.state_dict = str(state)
    if job.search.method == "sampling":
        # A sampled policy is evaluated by short QAT on one worker; only supernets are sharded.
        require(job.resources.workers_per_trial == 1, f"{path}: resources.workers_per_trial",
                "must be 1 with search.method 'sampling' (only differentiable trials train on several workers)")
        _check_sampling_points(job, f"{path}: search.initial_points")
    require(job.search.method != "proxy" or job.resources.workers_per_trial == 1, f"{path}: resources.workers_per_trial",
            "must be 1 with search.method 'proxy' (its scorings are Ray tasks of cpus_per_trial each)")
    return job


def _check_sampling_points(job: Job, where: str) -> None:
    """Initial points of a sampling search give bits for every searched layer, within the space."""
    space = job.space
    layers = space.cost_model().searched
    expected = sorted([f"w_bits/{n}" for n in layers] + [f"a_bits/{n}" for n in layers])
    for i, point in enumerate(job.search.initial_points):
        require(sorted(point) == expected, f"{where}[{i}]",
                f"must give w_bits/<layer> and a_bits/<layer> for every searched layer ({len(expected)} keys)")
        for key, bits in point.items():
            candidates = space.w_bits if key.startswith("w_bits/") else space.a_bits
            require(bits in candidates, f"{where}[{i}].{key}", f"{bits} is not among the candidates {candidates}")


def _load_space(value: Any, base: Path, where: str) -> SearchSpace:
    if isinstance(value, str):
        space_path = (base / value).resolve()
        if not space_path.is_file():
            raise UserInputError(f"{where}: search space file {space_path} does not exist")
        return SearchSpace.load(space_path)
    if isinstance(value, dict):
        return SearchSpace.from_dict(value, where)
    raise UserInputError(f"{where}: give a search space YAML path or an inline mapping")
