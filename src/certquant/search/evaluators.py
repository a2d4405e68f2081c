"""Candidate evaluation, injected into the search (as nncf's ``eval_fn``): ``evaluate(policy) -> terms``.

``PolicyEvaluator`` quantizes the full-precision model with a candidate policy, calibrated on the search images
carrying the certification noise (SPEC §4), optionally fine-tunes it for a few noisy steps, and scores it on the
search set (disjoint from the test subset, SPEC §5). Rewards, relative to the full-precision model on the same set:

- ``haq``: lambda * (top-1 of the quantized model on noisy search images - the same for FP32);
- ``arq``: lambda * [(ACR of the quantized smoothed classifier - FP32's ACR)
                     + clean_weight * (clean smoothed accuracy - FP32's)], clean_weight 1 by default: ACR alone
           rewards easy samples (SPEC §2) and lets the search trade clean accuracy away; 0 is ACR alone.

The ACR is measured by an ``ACREstimator`` strategy, chosen by name: ``scratch`` certifies every search image from
scratch with n_p samples and fixed per-image seeds (the same noise for every candidate, so candidates differ only by
the model). ``irs`` / ``irs-one-sided`` (incremental randomized smoothing, SPEC §3) are one subclass whose
``prepare`` certifies FP32 with ``keep_cache=True`` and whose ``certify_image`` calls
``certquant.smoothing.certify_incremental`` (two-sided or one-sided disparity).

Every call returns all its reward terms (and timings), which the runner logs per episode.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, ClassVar, Sequence

import torch
from torch import nn

from certquant.quant import Policy, bitops_fraction, finetune, noisy_calibration_batch, quantizable_layers, quantize
from certquant.smoothing import ABSTAIN, certify, certify_incremental, certify_many, image_seed, validate_smoothing_args
from certquant.smoothing.incremental import ONE_SIDED, TWO_SIDED, validate_incremental_args
from certquant.train import accuracy
from certquant.utils.errors import CertquantError

REWARDS = ("arq", "haq")

Terms = dict[str, Any]
Evaluator = Callable[[Policy], Terms]  # what the search needs: a policy in, reward terms (with "reward") out


@dataclass
class EvalConfig:
    """How a candidate policy is quantized and scored."""

    reward: str = "arq"
    """``arq`` (certified robustness: ACR, optionally clean smoothed accuracy) or ``haq`` (noisy top-1 accuracy)."""
    lam: float = 0.1
    """lambda: the reward scale (SPEC §5: 0.1)."""
    clean_weight: float = 1.0
    """arq only: weight of (clean smoothed accuracy - FP32's) beside the ACR difference, inside lambda; 0 = ACR alone."""
    estimator: str = "scratch"
    """arq only: the ACR estimator: scratch (certify from scratch with n_p samples), irs, irs-one-sided."""
    n0: int = 100
    """Selection samples of each certificate (chooses c_A)."""
    n_p: int = 1000
    """Estimation samples per search image and candidate (IRS: samples of the disparity estimate)."""
    n_fp: int = 10_000
    """IRS only: estimation samples of the one-time FP32 certification whose cache IRS reuses."""
    gamma: float = 0.99
    """IRS only: above this FP32 pA_lower a candidate is certified directly with its n_p samples (SPEC §3)."""
    alpha_zeta: float = 0.001
    """IRS only: failure probability of the disparity bound zeta (certificates hold at 1 - (alpha + alpha_zeta))."""
    alpha: float = 0.001
    """Failure probability of each certificate."""
    batch_size: int = 1000
    """Noisy samples per noise batch (part of the noise seeding)."""
    max_forward: int = 5000
    """scratch only: pack several search images' noise into forward passes of at most this many samples (a GPU is
    launch-bound under many small passes: 3.1x faster scoring on ResNet-20; a CPU classifies in 200-sample passes
    anyway, ``smoothing.core.CPU_FORWARD_CHUNK``, where packing measured 0.97-1.01x)."""
    noise_copies: int = 16
    """haq only: noisy copies of each search image for the top-1 accuracy."""
    calib_images: int = 256
    """Noisy calibration inputs for the activation ranges (search images cycled, noise at the certification sigma)."""
    act_clip: str = "auto"
    """Activation clipping of ``certquant.quant.quantize``."""
    weight_clip: str = "auto"
    """Weight clipping of ``certquant.quant.quantize``."""
    finetune_steps: int = 0
    """Noisy quantization-aware fine-tuning steps per candidate (0: none); each step is one minibatch."""
    finetune_batch: int = 64
    """Fine-tuning minibatch size."""
    finetune_lr: float = 0.01
    """Fine-tuning SGD learning rate."""
    seed: int = 0
    """Seed of the certification noise (per image: ``image_seed(seed, index)``), calibration and fine-tuning."""

    def validate(self) -> None:
        if self.reward not in REWARDS:
            raise CertquantError(f"unknown reward '{self.reward}': use one of {', '.join(REWARDS)}")
        if self.estimator not in ESTIMATORS:
            raise CertquantError(f"unknown ACR estimator '{self.estimator}': use one of {', '.join(ESTIMATORS)}")
        if self.lam <= 0:
            raise CertquantError(f"lambda must be > 0, got {self.lam}")
        if min(self.noise_copies, self.calib_images, self.finetune_batch, self.max_forward) < 1 \
                or self.finetune_steps < 0:
            raise CertquantError("noise copies, calibration images, fine-tuning batch and samples per forward pass "
                                 "must be >= 1, steps >= 0")
        validate_smoothing_args(0.5, self.alpha, self.batch_size, self.seed, n0=self.n0, n_p=self.n_p, n_fp=self.n_fp)
        if self.estimator in ("irs", "irs-one-sided"):
            validate_incremental_args(self.n_p, self.gamma, self.alpha_zeta, "two-sided", self.alpha)
            if self.n_p > self.n_fp:
                raise CertquantError(f"IRS reuses n_p of the n_fp FP32 samples: n_p = {self.n_p} must be <= n_fp = "
                                     f"{self.n_fp}")


# -- ACR estimators (strategy) ---------------------------------------------------------------------------------------


class ACREstimator:
    """Certificates of a model's smoothed classifier on the search set. A subclass implements ``certify_image``
    (and, when it reuses full-precision work, ``prepare``); ``estimate`` turns certificates into ACR and accuracy."""

    name: ClassVar[str] = ""

    def __init__(self, sigma: float, config: EvalConfig):
        self.sigma, self.config = sigma, config

    def prepare(self, fp_model: nn.Module, images: torch.Tensor, seeds: Sequence[int]) -> None:
        """One-time work on the full-precision model before any candidate (IRS: certify it and keep the caches)."""

    def certify_image(self, model: nn.Module, k: int, x: torch.Tensor, seed: int) -> tuple[int, float]:
        """(predicted class or ABSTAIN, certified radius) of search image ``k`` (pixels ``x``, noise seed ``seed``)."""
        raise NotImplementedError

    def certify_all(self, model: nn.Module, images: torch.Tensor, seeds: Sequence[int]) -> list[tuple[int, float]]:
        """(predicted class or ABSTAIN, certified radius) of every search image; one ``certify_image`` each unless a
        subclass batches them."""
        return [self.certify_image(model, k, images[k], seeds[k]) for k in range(len(images))]

    def estimate(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, seeds: Sequence[int]) -> Terms:
        """ACR (a radius counts when certified and correct), clean smoothed accuracy and abstain rate."""
        radii, correct, abstained = [], 0, 0
        for k, (label, radius) in enumerate(self.certify_all(model, images, seeds)):
            hit = label == int(labels[k])
            radii.append(radius if hit else 0.0)
            correct += hit
            abstained += label == ABSTAIN
        count = max(1, len(images))
        return {"acr": sum(radii) / count, "clean_accuracy": correct / count, "abstain_rate": abstained / count}


class ScratchEstimator(ACREstimator):
    """CERTIFY from scratch with n0 + n_p samples at level 1 - alpha, fixed per-image seeds."""

    name = "scratch"

    def certify_image(self, model: nn.Module, k: int, x: torch.Tensor, seed: int) -> tuple[int, float]:
        cfg = self.config
        cert = certify(model, x, self.sigma, cfg.n0, cfg.n_p, cfg.alpha, cfg.batch_size, seed)
        return cert.label, cert.radius

    def certify_all(self, model: nn.Module, images: torch.Tensor, seeds: Sequence[int]) -> list[tuple[int, float]]:
        """All search images at once (``certify_many``: the same noise, several images per forward pass; see
        ``EvalConfig.max_forward``)."""
        cfg = self.config
        certs = certify_many(model, list(images), self.sigma, cfg.n0, cfg.n_p, cfg.alpha, cfg.batch_size, seeds,
                             max_forward=cfg.max_forward)
        return [(cert.label, cert.radius) for cert in certs]


class IRSEstimator(ACREstimator):
    """Incremental randomized smoothing (SPEC §3): certify FP32 once with ``keep_cache``, then each candidate with
    n_p samples against the cache (``certquant.smoothing.certify_incremental``)."""

    name = "irs"
    one_sided: ClassVar[bool] = False

    def __init__(self, sigma: float, config: EvalConfig):
        super().__init__(sigma, config)
        self.caches: list[Any] = []

    def prepare(self, fp_model: nn.Module, images: torch.Tensor, seeds: Sequence[int]) -> None:
        cfg = self.config
        self.caches = [certify(fp_model, images[k], self.sigma, cfg.n0, cfg.n_fp, cfg.alpha, cfg.batch_size, seeds[k],
                               keep_cache=True).cache for k in range(len(images))]

    def certify_image(self, model: nn.Module, k: int, x: torch.Tensor, seed: int) -> tuple[int, float]:
        return self._certify_incremental(model, x, self.caches[k])

    def _certify_incremental(self, model: nn.Module, x: torch.Tensor, cache: Any) -> tuple[int, float]:
        cfg = self.config
        cert = certify_incremental(model, cache, x, self.sigma, cfg.n_p, gamma=cfg.gamma, alpha_zeta=cfg.alpha_zeta,
                                   disparity=ONE_SIDED if self.one_sided else TWO_SIDED)
        return cert.label, cert.radius


class OneSidedIRSEstimator(IRSEstimator):
    """IRS with the one-sided disparity bound."""

    name = "irs-one-sided"
    one_sided = True


ESTIMATORS: dict[str, type[ACREstimator]] = {cls.name: cls for cls in (ScratchEstimator, IRSEstimator, OneSidedIRSEstimator)}


def register_estimator(cls: type[ACREstimator]) -> type[ACREstimator]:
    """Add (or replace) an ACR estimator under ``cls.name``; usable as a class decorator."""
    ESTIMATORS[cls.name] = cls
    return cls


# -- the evaluator ---------------------------------------------------------------------------------------------------


class PolicyEvaluator:
    """``evaluator(policy)`` -> reward terms of the quantized model on the search set (see the module docstring).

    ``search_indices`` are the search images' indices in their dataset split: each image's certification noise is
    seeded by ``image_seed(config.seed, index)``, identical for every candidate. Fine-tuning (when
    ``config.finetune_steps`` > 0) draws ``steps * batch`` images from ``finetune_images`` (default: the search set).
    """

    def __init__(
        self,
        model: nn.Module,
        sigma: float,
        search_images: torch.Tensor,
        search_labels: torch.Tensor,
        search_indices: Sequence[int],
        config: EvalConfig | None = None,
        arch: str | None = None,
        finetune_images: torch.Tensor | None = None,
        finetune_labels: torch.Tensor | None = None,
        device: torch.device | str = "cpu",
    ):
        self.config = config or EvalConfig()
        self.config.validate()
        if not sigma > 0:
            raise CertquantError(f"sigma must be > 0, got {sigma}")
        if len(search_images) == 0 or len(search_images) != len(search_labels) or len(search_indices) != len(search_images):
            raise CertquantError(f"the search set needs matching non-empty images, labels and indices "
                                 f"({len(search_images)}, {len(search_labels)}, {len(search_indices)})")
        cfg = self.config
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.sigma, self.arch = float(sigma), arch
        self.images, self.labels = search_images.float(), search_labels.long()
        self.indices = [int(i) for i in search_indices]
        self.seeds = [image_seed(cfg.seed, i) for i in self.indices]
        self.layers = quantizable_layers(self.model, tuple(self.images.shape[1:]))
        self.calibration = noisy_calibration_batch(self.images, self.sigma, cfg.calib_images, cfg.seed)
        self.finetune_set = self._finetune_set(finetune_images, finetune_labels)
        self.estimator = ESTIMATORS[cfg.estimator](self.sigma, cfg) if cfg.reward == "arq" else None
        self._reference: Terms | None = None

    def _finetune_set(self, images: torch.Tensor | None, labels: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor] | None:
        cfg = self.config
        if cfg.finetune_steps == 0:
            return None
        if images is None:
            images, labels = self.images, self.labels
        if labels is None or len(images) != len(labels) or len(images) == 0:
            raise CertquantError("fine-tuning images and labels must match and be non-empty")
        count = cfg.finetune_steps * cfg.finetune_batch
        order = torch.randperm(len(images), generator=torch.Generator().manual_seed(cfg.seed))
        idx = order.repeat((count + len(images) - 1) // len(images))[:count]
        return images[idx].float(), labels[idx].long()

    # -- scoring ------------------------------------------------------------------------------------------------

    def _score(self, model: nn.Module) -> Terms:
        """The raw terms of ``model`` (FP32 or quantized) on the search set."""
        cfg = self.config
        if cfg.reward == "haq":
            copies = cfg.noise_copies
            x = self.images.repeat_interleave(copies, dim=0)
            y = self.labels.repeat_interleave(copies, dim=0)
            return {"noisy_accuracy": accuracy(model, x, y, self.sigma, batch_size=cfg.batch_size, seed=cfg.seed,
                                               device=self.device)}
        assert self.estimator is not None
        return self.estimator.estimate(model, self.images, self.labels, self.seeds)

    def reference(self) -> Terms:
        """FP32's terms on the search set (computed once; IRS estimators also build their caches here)."""
        if self._reference is None:
            started = time.perf_counter()
            if self.estimator is not None:
                self.estimator.prepare(self.model, self.images, self.seeds)
            self._reference = {**self._score(self.model), "seconds": time.perf_counter() - started}
        return self._reference

    def reward(self, terms: Terms, reference: Terms) -> float:
        cfg = self.config
        if cfg.reward == "haq":
            return cfg.lam * (terms["noisy_accuracy"] - reference["noisy_accuracy"])
        return cfg.lam * ((terms["acr"] - reference["acr"])
                          + cfg.clean_weight * (terms["clean_accuracy"] - reference["clean_accuracy"]))

    def quantized(self, policy: Policy) -> nn.Module:
        """The candidate model: quantized with noisy calibration, then (optionally) fine-tuned a few noisy steps."""
        cfg = self.config
        qmodel = quantize(self.model, policy, self.calibration, arch=self.arch, act_clip=cfg.act_clip,
                          weight_clip=cfg.weight_clip)
        if self.finetune_set is not None:
            images, labels = self.finetune_set
            finetune(qmodel, images, labels, self.sigma, epochs=1, lr=cfg.finetune_lr, batch_size=cfg.finetune_batch,
                     seed=cfg.seed, device=self.device, progress=False)  # the search shows its own progress
        return qmodel.eval()

    def __call__(self, policy: Policy) -> Terms:
        """All reward terms of ``policy``: ``reward``, the candidate's and FP32's raw terms, BitOPs and timings."""
        reference = self.reference()
        started = time.perf_counter()
        qmodel = self.quantized(policy)
        quantized_at = time.perf_counter()
        terms = self._score(qmodel)
        done = time.perf_counter()
        out: Terms = {"reward": self.reward(terms, reference), "reward_kind": self.config.reward, "lambda": self.config.lam}
        if self.config.reward == "arq":
            out["estimator"] = self.config.estimator
            out["clean_weight"] = self.config.clean_weight
        out.update(terms)
        out.update({f"{k}_fp32": v for k, v in reference.items() if k != "seconds"})
        out.update(bitops_fraction=bitops_fraction(self.layers, policy), seconds_quantize=quantized_at - started,
                   seconds_score=done - quantized_at)
        return out

    def describe(self) -> dict[str, Any]:
        """The evaluator's identity for the search's config file (what changes rewards)."""
        return {**asdict(self.config), "sigma": self.sigma, "search_indices": self.indices}

