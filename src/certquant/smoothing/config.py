"""Settings of certification (CERTIFY, Cohen et al. 2019) and of incremental certification (IRS, Ugare et al. 2024):
frozen, validated once here; every command and config file overrides these defaults and nothing else repeats them."""

from __future__ import annotations

from dataclasses import dataclass

from certquant.utils.config import check, check_sigma

__all__ = ["DISPARITIES", "CertifyConfig", "IRSConfig", "check_sigma"]

DISPARITIES = ("two-sided", "one-sided")


RUNTIMES = ("torch", "onnx")  # certify.runtime


@dataclass(frozen=True)
class CertifyConfig:
    """CERTIFY's sample counts, confidence and noise seeding."""

    n0: int = 100
    """Selection samples: the most frequent class among them is c_A."""
    n: int = 4000
    """Estimation samples bounding pA (the literature: 100,000; 10,000 for cheaper runs; 4,000 sizes the default run
    for a 2-core CPU)."""
    alpha: float = 0.001
    """Failure probability of each certificate."""
    batch: int = 1000
    """Noisy samples per noise batch (part of the noise seeding: another batch size draws other noise)."""
    seed: int = 0
    """Run seed: image i's noise is seeded by image_seed(seed, i)."""
    runtime: str = "torch"
    """What ``certquant run`` certifies: torch (the PyTorch model) or onnx (its ONNX export, integer kernels, run by
    onnxruntime on the CPU: the same certificates for quantized models, and on a CPU faster than PyTorch's fake
    quantization for small models (README, Deploy: speed); the deploy extra)."""

    def __post_init__(self) -> None:
        check(self.n0 >= 1 and self.n >= 1, f"certify needs n0 >= 1 and n >= 1 noise samples, got {self.n0}, {self.n}")
        check(self.runtime in RUNTIMES, f"certify.runtime must be one of {', '.join(RUNTIMES)}, got {self.runtime!r}")
        check(0.0 < self.alpha < 1.0, f"alpha must be in (0, 1), e.g. 0.001, got {self.alpha}")
        check(self.batch >= 1, f"batch (noisy samples per noise batch) must be >= 1, got {self.batch}")
        check(self.seed >= 0, f"seed must be >= 0, got {self.seed}")


@dataclass(frozen=True)
class IRSConfig:
    """Incremental randomized smoothing: certify an approximation f' of f from f's cached certification."""

    n_p: int = 400
    """Noise samples reused per image (1 to 10 percent of the base certification's n)."""
    gamma: float = 0.99
    """Above this base pA_lower, f' is certified directly with its n_p samples (SPEC 3: 0.99 CIFAR-scale)."""
    alpha_zeta: float = 0.001
    """Failure probability of the disparity bound zeta (certificates hold at 1 - (alpha + alpha_zeta))."""
    disparity: str = "one-sided"
    """one-sided (bounds f = c_A, f' != c_A; never looser; the benchmark's choice) or two-sided (bounds f != f', as
    published)."""

    def __post_init__(self) -> None:
        check(self.disparity in DISPARITIES, f"unknown disparity '{self.disparity}': use {' or '.join(DISPARITIES)}")
        whole = isinstance(self.n_p, int) and not isinstance(self.n_p, bool)
        check(whole and self.n_p >= 1, f"n_p must be an integer >= 1 (reused noise samples), got {self.n_p!r}")
        check(0.0 < self.gamma <= 1.0, f"gamma must be in (0, 1] (e.g. 0.99), got {self.gamma}")
        check(0.0 < self.alpha_zeta < 1.0, f"alpha_zeta must be in (0, 1) (e.g. 0.001), got {self.alpha_zeta}")
