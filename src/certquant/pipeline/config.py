"""Run configuration: YAML -> nested dataclasses with documented defaults; unknown keys are refused by name."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from certquant.utils.errors import CertquantError


@dataclass
class CertifyConfig:
    """Certification of every model in the report (Cohen et al.'s CERTIFY)."""

    n0: int = 100  # selection samples
    n: int = 4000  # estimation samples (the literature: 100,000; 10,000 for cheaper runs)
    alpha: float = 0.001  # failure probability of each certificate
    skip: int = 100  # every skip-th test image (Cohen et al.: every 20th CIFAR-10 test image)
    max_images: int = 100  # at most this many test images (the literature: 500)
    batch: int = 1000  # noisy samples per forward pass
    seed: int = 0


@dataclass
class SearchConfig:
    """The mixed-precision search (SPEC §5)."""

    budgets: list[float] = field(default_factory=lambda: [0.015625])  # BitOPs fractions of FP32 (0.015625 = W4A4)
    methods: list[str] = field(default_factory=lambda: ["arq", "haq", "uniform"])
    episodes: int = 40  # DDPG episodes per search (HAQ: 600); random search gets the same number of evaluations
    warmup: int = 15  # episodes of uniform random actions before the actor is used
    search_images: int = 20  # images of the search set, drawn from the training split (disjoint from the test subset)
    n_p: int = 400  # samples per search image for the ARQ reward
    estimator: str = "scratch"  # ARQ's ACR estimator: scratch, irs or irs-one-sided
    clean_weight: float = 1.0  # ARQ's reward: lambda * (dACR + clean_weight * d clean smoothed accuracy); 0: ACR alone
    w_bits: list[int] = field(default_factory=lambda: [2, 8])  # [b_min, b_max] for weights
    a_bits: list[int] = field(default_factory=lambda: [2, 8])  # [b_min, b_max] for activations
    pin_first_last: bool = False  # HAQ's convention: first and last layer at 8 bits
    final_top_k: int = 1  # re-score the k best distinct policies of each search on fresh images; 1: the search's best
    final_images: int = 200  # fresh held-out validation images of that final selection (after the search set's)
    seed: int = 0


@dataclass
class FinetuneConfig:
    """Quantization-aware fine-tuning of each best policy, with the base model's Gaussian noise."""

    epochs: int = 1
    images: int = 10_000  # training images used (the first N of the training split)
    lr: float = 0.01
    batch: int = 128
    calibration_images: int = 512  # noisy training images used to calibrate activation ranges
    seed: int = 0


@dataclass
class RunConfig:
    """One `certquant run`: a noise-trained checkpoint, a noise level, budgets and methods."""

    dataset: str = "fashion-mnist"
    checkpoint: str = "small-cnn-fmnist-s0.25"  # file path or zoo name
    sigma: float | None = None  # default: the checkpoint's training sigma
    device: str = "auto"
    certify: CertifyConfig = field(default_factory=CertifyConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _build(cls: type, values: dict[str, Any], where: str) -> Any:
    if not isinstance(values, dict):
        raise CertquantError(f"config section '{where or 'top level'}' must be a mapping, got {type(values).__name__}")
    known = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        path = f"{where}.{key}" if where else key
        if key not in known:
            raise CertquantError(f"unknown config key '{path}'; known keys here: {', '.join(known)}")
        sub = known[key].default_factory if known[key].default_factory is not dataclasses.MISSING else None
        if dataclasses.is_dataclass(sub):
            value = _build(sub, value or {}, path)
        kwargs[key] = value
    return cls(**kwargs)


def config_from_dict(values: dict[str, Any]) -> RunConfig:
    cfg = _build(RunConfig, values or {}, "")
    validate(cfg)
    return cfg


def load_config(path: str | Path | None) -> RunConfig:
    """Read a YAML config (None: all defaults)."""
    if path is None:
        return config_from_dict({})
    path = Path(path)
    if not path.is_file():
        raise CertquantError(f"config '{path}' not found: pass --config with an existing YAML file (see configs/)")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise CertquantError(f"config '{path}' is not valid YAML: {str(exc).splitlines()[0]}") from None
    return config_from_dict(values)


def validate(cfg: RunConfig) -> None:
    """Checks that need no data or model (those come when the run starts)."""
    if cfg.sigma is not None and cfg.sigma <= 0:
        raise CertquantError(f"sigma must be > 0, got {cfg.sigma}")
    for budget in cfg.search.budgets:
        if not 0 < float(budget) <= 1:
            raise CertquantError(f"budget {budget} must be a fraction of FP32 BitOPs in (0, 1]")
    unknown = set(cfg.search.methods) - {"arq", "haq", "uniform", "random"}
    if unknown:
        raise CertquantError(f"unknown method(s) {', '.join(sorted(unknown))}: use arq, haq, uniform, random")
    if cfg.search.final_top_k < 1 or cfg.search.final_images < 1:
        raise CertquantError("search.final_top_k and search.final_images must be >= 1 (final_top_k 1: no re-selection)")
    if cfg.certify.n0 < 1 or cfg.certify.n < 1 or not 0 < cfg.certify.alpha < 1:
        raise CertquantError("certify needs n0 >= 1, n >= 1 and 0 < alpha < 1")
