"""Candidate evaluation, injected into the search (as nncf's ``eval_fn``): ``evaluate(policy) -> terms``.

``PolicyEvaluator`` quantizes the full-precision model with a candidate policy, calibrated on the search images
carrying the certification noise (SPEC §4), optionally fine-tunes it for a few noisy steps, and scores it on the
search set (disjoint from the test subset, SPEC §5). Three small pieces compose it:

- a *scorer* measures terms of a model on the search set: ``NoisyTop1`` (HAQ's top-1 on noisy copies) or an
  ``ACREstimator`` (ACR, clean smoothed accuracy, abstain rate of the smoothed classifier), chosen by
  ``EvalConfig.estimator`` from ``ESTIMATORS``: ``scratch`` certifies every search image from scratch with n_p
  samples and fixed per-image seeds (the same noise for every candidate, so candidates differ only by the model);
  ``irs`` / ``irs-one-sided`` (incremental randomized smoothing, SPEC §3) certify FP32 once with ``keep_cache`` and
  each candidate with ``certquant.smoothing.certify_incremental``. Adding an estimator = one class +
  ``register_estimator``;
- a *reward* (``REWARDS``) turns the candidate's terms and FP32's into a number with a pure function of measured
  quantities, ``arq_reward`` or ``haq_reward``, and names the scorer it needs;
- the evaluator quantizes, scores, and returns every term (and timings), which the runner logs per episode.
"""

from __future__ import annotations

import json
import time
import weakref
import zlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from certquant.quant import Policy, bitops_fraction, finetune, noisy_calibration_batch, quantizable_layers, quantize
from certquant.quant.config import ACT_CLIPS, WEIGHT_CLIPS
from certquant.search.racing import race
from certquant.smoothing import (
    ABSTAIN,
    certified_radius,
    certify,
    certify_incremental,
    certify_many,
    clopper_pearson_lower,
    image_seed,
    model_device,
)
from certquant.smoothing.config import CertifyConfig
from certquant.smoothing.incremental import DEFAULT_ALPHA_ZETA, DEFAULT_GAMMA, ONE_SIDED, TWO_SIDED
from certquant.train import accuracy
from certquant.utils.config import check
from certquant.utils.errors import CertquantError

Terms = dict[str, Any]
Evaluator = Callable[[Policy], Terms]  # what the search needs: a policy in, reward terms (with "reward") out


@dataclass(frozen=True)
class EvalConfig:
    """How a candidate policy is quantized and scored (the certificate's n0, alpha and batch come from the run's
    ``CertifyConfig``, the seed from the search)."""

    estimator: str = "paired-margin"
    """ARQ's ACR estimator: paired-margin (the default) or paired (n_p samples against FP32's cached n_fp,
    search/paired.py), scratch (certify from scratch with n0 + n_p samples), irs or irs-one-sided (SPEC 3). Chosen on
    the measured cost-fidelity front (README, reward fidelity): paired-margin with n_p = 16 ranks fine-tuned
    candidates as well as any reward measured, at HAQ's cost per candidate."""
    n_p: int = 16
    """Estimation samples per search image and candidate (IRS: samples of the disparity estimate; scratch: 400 was
    the earlier default)."""
    n_fp: int = 100
    """IRS and paired: estimation samples of the one-time FP32 certification whose cache they reuse (paired: FP32's
    own sampling error is common to every candidate, so 100 ranks as 1,000 did; IRS wants 10,000)."""
    gamma: float = DEFAULT_GAMMA
    """IRS only: above this FP32 pA_lower a candidate is certified directly with its n_p samples (SPEC 3)."""
    alpha_zeta: float = DEFAULT_ALPHA_ZETA
    """IRS only: failure probability of the disparity bound zeta."""
    lam: float = 0.1
    """lambda: the reward scale (SPEC 5: 0.1)."""
    clean_weight: float = 1.0
    """ARQ: weight of (clean smoothed accuracy - FP32's) beside the ACR difference, inside lambda; 0 = ACR alone."""
    noise_copies: int = 16
    """HAQ: noisy copies of each search image for the top-1 accuracy."""
    calib_images: int = 256
    """Noisy calibration inputs for the activation ranges (search images cycled, noise at the run's sigma)."""
    act_clip: str = "auto"
    """Activation clipping of certquant.quant.quantize (auto, max, mse, percentile)."""
    weight_clip: str = "auto"
    """Weight clipping of certquant.quant.quantize (auto, max, mse)."""
    finetune_steps: int = 0
    """Noisy quantization-aware fine-tuning steps per candidate (0: none); each step is one minibatch."""
    finetune_batch: int = 64
    """Fine-tuning minibatch size of a candidate."""
    finetune_lr: float = 0.01
    """Fine-tuning SGD learning rate of a candidate."""
    max_forward: int = 5000
    """scratch: pack several search images' noise into forward passes of at most this many samples (a GPU is
    launch-bound under many small passes: 3.1x faster scoring on ResNet-20; measured 0.97-1.01x on a CPU)."""
    race_delta: float = 0.0
    """Racing (ARQ rewards, search/racing.py): stop scoring a candidate once its reward on the whole search set is
    below the incumbent's with confidence 1 - race_delta (Serfling's bound over a random image order); 0: off."""
    race_batch: int = 10
    """Racing: search images scored between two stopping checks."""

    def __post_init__(self) -> None:
        check(
            self.estimator in ESTIMATORS,
            f"unknown ACR estimator '{self.estimator}': use one of {', '.join(ESTIMATORS)}",
        )
        check(self.lam > 0, f"lambda (lam) must be > 0, got {self.lam}")
        check(
            min(self.n_p, self.n_fp, self.noise_copies, self.calib_images, self.finetune_batch, self.max_forward) >= 1
            and self.finetune_steps >= 0,
            "n_p, n_fp, noise copies, calibration images, fine-tuning batch and samples per forward pass must be "
            ">= 1, finetune_steps >= 0",
        )
        check(
            0.0 < self.gamma <= 1.0 and 0.0 < self.alpha_zeta < 1.0,
            f"gamma must be in (0, 1] and alpha_zeta in (0, 1), got {self.gamma}, {self.alpha_zeta}",
        )
        check(
            self.act_clip in ACT_CLIPS and self.weight_clip in WEIGHT_CLIPS,
            f"act_clip must be one of {', '.join(ACT_CLIPS)} and weight_clip one of {', '.join(WEIGHT_CLIPS)}",
        )
        check(self.finetune_lr > 0, f"finetune_lr must be > 0, got {self.finetune_lr}")
        check(
            0.0 <= self.race_delta < 1.0 and self.race_batch >= 1,
            f"race_delta must be in [0, 1) (0: no racing) and race_batch >= 1, got {self.race_delta}, "
            f"{self.race_batch}",
        )
        check(
            self.race_delta == 0 or self.clean_weight >= 0,
            f"racing needs clean_weight >= 0 (per-image reward terms in a known range), got {self.clean_weight}",
        )
        if self.estimator != "scratch":
            check(
                self.n_p <= self.n_fp,
                f"the {self.estimator} estimator reuses n_p of the n_fp cached FP32 samples: n_p = {self.n_p} must "
                f"be <= n_fp = {self.n_fp} (raise search.n_fp)",
            )


# -- rewards: pure functions of measured quantities -----------------------------------------------------------------


def arq_reward(
    acr: float,
    clean_accuracy: float,
    acr_fp32: float,
    clean_accuracy_fp32: float,
    lam: float = 0.1,
    clean_weight: float = 1.0,
) -> float:
    """ARQ: R = lambda * [(ACR_q - ACR_fp32) + w_clean * (acc_q - acc_fp32)], ACR and clean accuracy of the smoothed
    classifiers on the search set (SPEC 5). w_clean = 1 by default: ACR alone rewards easy samples (SPEC 2) and let
    the search trade clean accuracy away; 0 is the paper's ACR-only form."""
    return lam * ((acr - acr_fp32) + clean_weight * (clean_accuracy - clean_accuracy_fp32))


def haq_reward(noisy_accuracy: float, noisy_accuracy_fp32: float, lam: float = 0.1) -> float:
    """HAQ: R = lambda * (top1_q - top1_fp32), top-1 accuracy of the base classifiers on noisy copies of the search
    images (the noise the smoothed classifier sees)."""
    return lam * (noisy_accuracy - noisy_accuracy_fp32)


# -- scorers: terms of a model on the search set --------------------------------------------------------------------


@dataclass
class SearchSet:
    """The search images, their labels and their per-image noise seeds."""

    images: torch.Tensor
    labels: torch.Tensor
    seeds: list[int]


class Scorer:
    """Measures terms of a model (FP32 or a candidate) on the search set."""

    def __init__(
        self, sigma: float, config: EvalConfig, certify_config: CertifyConfig, seed: int, device: torch.device
    ):
        self.sigma, self.config, self.certify_config, self.seed, self.device = (
            sigma,
            config,
            certify_config,
            seed,
            device,
        )

    def prepare(self, fp_model: nn.Module, search: SearchSet) -> None:
        """One-time work on the full-precision model before any candidate (IRS: certify it and keep the caches)."""

    def score(self, model: nn.Module, search: SearchSet) -> Terms:
        raise NotImplementedError


class NoisyTop1(Scorer):
    """Top-1 accuracy of the base classifier on ``noise_copies`` noisy copies of each search image."""

    def score(self, model: nn.Module, search: SearchSet) -> Terms:
        copies = self.config.noise_copies
        x = search.images.repeat_interleave(copies, dim=0)
        y = search.labels.repeat_interleave(copies, dim=0)
        return {
            "noisy_accuracy": accuracy(
                model, x, y, self.sigma, batch_size=self.certify_config.batch, seed=self.seed, device=self.device
            )
        }


class ACREstimator(Scorer):
    """Certificates of a model's smoothed classifier on the search set. A subclass implements ``certify_image``
    (and, when it reuses full-precision work, ``prepare``); ``score`` turns certificates into ACR and accuracy."""

    name: ClassVar[str] = ""

    def certify_image(self, model: nn.Module, k: int, x: torch.Tensor, seed: int) -> tuple[int, float]:
        """(predicted class or ABSTAIN, certified radius) of search image ``k`` (pixels ``x``, noise seed ``seed``)."""
        raise NotImplementedError

    def certify_all(self, model: nn.Module, images: torch.Tensor, seeds: Sequence[int]) -> list[tuple[int, float]]:
        """(predicted class or ABSTAIN, certified radius) of every search image; one ``certify_image`` each unless a
        subclass batches them."""
        return [self.certify_image(model, k, images[k], seeds[k]) for k in range(len(images))]

    def certify_indices(self, model: nn.Module, search: SearchSet, indices: Sequence[int]) -> list[tuple[int, float]]:
        """Certificates of the search images ``indices`` only (racing scores the set batch by batch)."""
        if len(indices) == len(search.images) and list(indices) == list(range(len(search.images))):
            return self.certify_all(model, search.images, search.seeds)
        return [self.certify_image(model, k, search.images[k], search.seeds[k]) for k in indices]

    def max_radius(self) -> float:
        """The largest radius this estimator can return for one image (racing needs the range); inf: unknown."""
        return float("inf")

    @staticmethod
    def terms_of(certificates: Sequence[tuple[int, float]], labels: Sequence[int]) -> Terms:
        """ACR (a radius counts when certified and correct), clean smoothed accuracy and abstain rate."""
        radii, correct, abstained = [], 0, 0
        for (label, radius), truth in zip(certificates, labels):
            hit = label == int(truth)
            radii.append(radius if hit else 0.0)
            correct += hit
            abstained += label == ABSTAIN
        count = max(1, len(certificates))
        return {"acr": sum(radii) / count, "clean_accuracy": correct / count, "abstain_rate": abstained / count}

    def score(self, model: nn.Module, search: SearchSet) -> Terms:
        """ACR, clean smoothed accuracy and abstain rate over the whole search set."""
        return self.terms_of(self.certify_all(model, search.images, search.seeds), search.labels.tolist())


class ScratchEstimator(ACREstimator):
    """CERTIFY from scratch with n0 + n_p samples at level 1 - alpha, fixed per-image seeds."""

    name = "scratch"

    def certify_image(self, model: nn.Module, k: int, x: torch.Tensor, seed: int) -> tuple[int, float]:
        c = self.certify_config
        cert = certify(model, x, self.sigma, c.n0, self.config.n_p, c.alpha, c.batch, seed)
        return cert.label, cert.radius

    def certify_all(self, model: nn.Module, images: torch.Tensor, seeds: Sequence[int]) -> list[tuple[int, float]]:
        """All search images at once (``certify_many``: the same noise, several images per forward pass; see
        ``EvalConfig.max_forward``)."""
        c = self.certify_config
        certs = certify_many(
            model,
            list(images),
            self.sigma,
            c.n0,
            self.config.n_p,
            c.alpha,
            c.batch,
            seeds,
            max_forward=self.config.max_forward,
        )
        return [(cert.label, cert.radius) for cert in certs]

    def certify_indices(self, model: nn.Module, search: SearchSet, indices: Sequence[int]) -> list[tuple[int, float]]:
        return self.certify_all(model, search.images[list(indices)], [search.seeds[k] for k in indices])

    def max_radius(self) -> float:
        """All n_p samples on c_A: sigma * Phi^-1(alpha^(1/n_p))."""
        return certified_radius(
            clopper_pearson_lower(self.config.n_p, self.config.n_p, self.certify_config.alpha), self.sigma
        )


_CACHES: weakref.WeakKeyDictionary[nn.Module, dict[tuple, list[Any]]] = weakref.WeakKeyDictionary()


def fp32_caches(fp_model: nn.Module, search: SearchSet, sigma: float, c: CertifyConfig, n_fp: int) -> list[Any]:
    """FP32's certification of every search image with n0 + n_fp samples and ``keep_cache`` (what IRS and the paired
    estimators reuse). Computed once per model and settings in a process: several searches or benchmark rows over
    the same search set share it (the same call gives the same caches, so sharing changes no result)."""
    key = (
        tuple(search.seeds),
        tuple(search.images.shape),
        float(search.images.double().sum()),
        float(sigma),
        c.n0,
        n_fp,
        c.alpha,
        c.batch,
        model_device(fp_model).type,
    )
    memo = _CACHES.setdefault(fp_model, {})
    if key not in memo:
        memo.clear()  # one search set per model at a time: bounded memory
        memo[key] = [
            certify(
                fp_model, search.images[k], sigma, c.n0, n_fp, c.alpha, c.batch, search.seeds[k], keep_cache=True
            ).cache
            for k in range(len(search.images))
        ]
    return memo[key]


class IRSEstimator(ACREstimator):
    """Incremental randomized smoothing (SPEC §3): certify FP32 once with ``keep_cache``, then each candidate with
    n_p samples against the cache (``certquant.smoothing.certify_incremental``)."""

    name = "irs"
    disparity: ClassVar[str] = TWO_SIDED

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.caches: list[Any] = []

    def prepare(self, fp_model: nn.Module, search: SearchSet) -> None:
        self.caches = fp32_caches(fp_model, search, self.sigma, self.certify_config, self.config.n_fp)

    def certify_image(self, model: nn.Module, k: int, x: torch.Tensor, seed: int) -> tuple[int, float]:
        cfg = self.config
        cert = certify_incremental(
            model,
            self.caches[k],
            x,
            self.sigma,
            cfg.n_p,
            gamma=cfg.gamma,
            alpha_zeta=cfg.alpha_zeta,
            disparity=self.disparity,
        )
        return cert.label, cert.radius

    def max_radius(self) -> float:
        """zeta branch: at most FP32's pA_lower (all n_fp samples); direct branch: all n_p at alpha + alpha_zeta."""
        cfg, alpha = self.config, self.certify_config.alpha
        return max(
            certified_radius(clopper_pearson_lower(cfg.n_fp, cfg.n_fp, alpha), self.sigma),
            certified_radius(clopper_pearson_lower(cfg.n_p, cfg.n_p, alpha + cfg.alpha_zeta), self.sigma),
        )


class OneSidedIRSEstimator(IRSEstimator):
    """IRS with the one-sided disparity bound."""

    name = "irs-one-sided"
    disparity = ONE_SIDED


ESTIMATORS: dict[str, type[ACREstimator]] = {
    cls.name: cls for cls in (ScratchEstimator, IRSEstimator, OneSidedIRSEstimator)
}


def register_estimator(cls: type[ACREstimator]) -> type[ACREstimator]:
    """Add (or replace) an ACR estimator under ``cls.name``; usable as a class decorator."""
    ESTIMATORS[cls.name] = cls
    return cls


# -- rewards: which scorer, which function --------------------------------------------------------------------------


class ARQReward:
    """Certified robustness: the configured ACR estimator, ``arq_reward``."""

    name = "arq"

    @staticmethod
    def scorer(config: EvalConfig) -> type[Scorer]:
        return ESTIMATORS[config.estimator]

    @staticmethod
    def value(terms: Terms, reference: Terms, config: EvalConfig) -> float:
        return arq_reward(
            terms["acr"],
            terms["clean_accuracy"],
            reference["acr"],
            reference["clean_accuracy"],
            config.lam,
            config.clean_weight,
        )

    @staticmethod
    def settings(config: EvalConfig) -> Terms:
        return {"estimator": config.estimator, "clean_weight": config.clean_weight}


class HAQReward:
    """Accuracy under noise: ``NoisyTop1``, ``haq_reward``."""

    name = "haq"

    @staticmethod
    def scorer(config: EvalConfig) -> type[Scorer]:
        return NoisyTop1

    @staticmethod
    def value(terms: Terms, reference: Terms, config: EvalConfig) -> float:
        return haq_reward(terms["noisy_accuracy"], reference["noisy_accuracy"], config.lam)

    @staticmethod
    def settings(config: EvalConfig) -> Terms:
        return {"noise_copies": config.noise_copies}


REWARDS: dict[str, Any] = {cls.name: cls for cls in (ARQReward, HAQReward)}


# -- the evaluator ---------------------------------------------------------------------------------------------------


class PolicyEvaluator:
    """``evaluator(policy)`` -> reward terms of the quantized model on the search set (see the module docstring).

    ``search_indices`` are the search images' indices in their dataset split: each image's certification noise is
    seeded by ``image_seed(seed, index)``, identical for every candidate. Fine-tuning (when
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
        reward: str = "arq",
        certify_config: CertifyConfig | None = None,
        seed: int = 0,
        arch: str | None = None,
        finetune_images: torch.Tensor | None = None,
        finetune_labels: torch.Tensor | None = None,
        device: torch.device | str = "cpu",
    ):
        if reward not in REWARDS:
            raise CertquantError(f"unknown reward '{reward}': use one of {', '.join(REWARDS)}")
        if (
            len(search_images) == 0
            or len(search_images) != len(search_labels)
            or len(search_indices) != len(search_images)
        ):
            raise CertquantError(
                f"the search set needs matching non-empty images, labels and indices "
                f"({len(search_images)}, {len(search_labels)}, {len(search_indices)})"
            )
        self.config = cfg = config or EvalConfig()
        self.certify_config = certify_config or CertifyConfig()
        self.reward_kind = REWARDS[reward]
        self.seed = seed
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.sigma, self.arch = float(sigma), arch
        self.indices = [int(i) for i in search_indices]
        self.search = SearchSet(
            search_images.float(), search_labels.long(), [image_seed(seed, i) for i in self.indices]
        )
        self.layers = quantizable_layers(self.model, tuple(self.search.images.shape[1:]))
        self.calibration = noisy_calibration_batch(self.search.images, self.sigma, cfg.calib_images, seed)
        self.finetune_set = self._finetune_set(finetune_images, finetune_labels)
        self.scorer = self.reward_kind.scorer(cfg)(self.sigma, cfg, self.certify_config, seed, self.device)
        self._reference: Terms | None = None

    @property
    def images(self) -> torch.Tensor:
        return self.search.images

    def _finetune_set(
        self, images: torch.Tensor | None, labels: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        cfg = self.config
        if cfg.finetune_steps == 0:
            return None
        if images is None:
            images, labels = self.search.images, self.search.labels
        if labels is None or len(images) != len(labels) or len(images) == 0:
            raise CertquantError("fine-tuning images and labels must match and be non-empty")
        count = cfg.finetune_steps * cfg.finetune_batch
        order = torch.randperm(len(images), generator=torch.Generator().manual_seed(self.seed))
        idx = order.repeat((count + len(images) - 1) // len(images))[:count]
        return images[idx].float(), labels[idx].long()

    # -- scoring ------------------------------------------------------------------------------------------------

    def reference(self) -> Terms:
        """FP32's terms on the search set (computed once; IRS estimators also build their caches here)."""
        if self._reference is None:
            started = time.perf_counter()
            self.scorer.prepare(self.model, self.search)
            self._reference = {**self.scorer.score(self.model, self.search), "seconds": time.perf_counter() - started}
        return self._reference

    def quantized(self, policy: Policy) -> nn.Module:
        """The candidate model: quantized with noisy calibration, then (optionally) fine-tuned a few noisy steps."""
        cfg = self.config
        qmodel = quantize(
            self.model, policy, self.calibration, arch=self.arch, act_clip=cfg.act_clip, weight_clip=cfg.weight_clip
        )
        if self.finetune_set is not None:
            images, labels = self.finetune_set
            finetune(
                qmodel,
                images,
                labels,
                self.sigma,
                epochs=1,
                lr=cfg.finetune_lr,
                batch_size=cfg.finetune_batch,
                seed=self.seed,
                device=self.device,
                progress=False,
            )  # the search shows its own progress
        return qmodel.eval()

    @property
    def races(self) -> bool:
        """Whether candidates are raced against the incumbent (``config.race_delta`` > 0, an ACR-estimator reward)."""
        return self.config.race_delta > 0 and isinstance(self.scorer, ACREstimator)

    def __call__(self, policy: Policy, incumbent: float | None = None) -> Terms:
        """All reward terms of ``policy``: ``reward``, the candidate's and FP32's raw terms, BitOPs and timings,
        ``forward_samples`` (inputs the candidate classified while scored) and ``images_scored``. With racing and an
        ``incumbent`` reward, scoring may stop early (``raced_out``: its reward, over the images scored, is below
        the incumbent's; see ``certquant.search.racing``)."""
        reference = self.reference()
        started = time.perf_counter()
        qmodel = self.quantized(policy)
        quantized_at = time.perf_counter()
        seen = [0]
        hook = qmodel.register_forward_pre_hook(lambda _module, args: seen.__setitem__(0, seen[0] + len(args[0])))
        try:
            if self.races and incumbent is not None:
                terms = self._race(qmodel, policy, float(incumbent), reference)
            else:
                terms = {**self.scorer.score(qmodel, self.search), "images_scored": len(self.search.images)}
        finally:
            hook.remove()
        done = time.perf_counter()
        kind = self.reward_kind
        reward = kind.value(terms, reference, self.config)
        if terms.get("raced_out") and incumbent is not None:
            reward = min(reward, float(incumbent))  # mean_t <= U_t < tau already implies it (racing.py)
        out: Terms = {
            "reward": reward,
            "reward_kind": kind.name,
            "lambda": self.config.lam,
            **kind.settings(self.config),
        }
        out.update(terms)
        out.update({f"{k}_fp32": v for k, v in reference.items() if k != "seconds"})
        out.update(
            bitops_fraction=bitops_fraction(self.layers, policy),
            seconds_quantize=quantized_at - started,
            seconds_score=done - quantized_at,
            forward_samples=seen[0],
        )
        return out

    def _race(self, qmodel: nn.Module, policy: Policy, incumbent: float, reference: Terms) -> Terms:
        """Racing (``certquant.search.racing``): per-image q_k = r_k + w * correct_k against
        tau = R_inc / lambda + ACR_fp32 + w * clean_fp32, images in a random order seeded by the policy."""
        cfg, scorer, search = self.config, self.scorer, self.search
        assert isinstance(scorer, ACREstimator)
        w = cfg.clean_weight
        target = incumbent / cfg.lam + reference["acr"] + w * reference["clean_accuracy"]
        labels = search.labels.tolist()
        certificates: dict[int, tuple[int, float]] = {}

        def score(indices: list[int]) -> list[float]:
            values = []
            for k, cert in zip(indices, scorer.certify_indices(qmodel, search, indices)):
                certificates[k] = cert
                hit = cert[0] == labels[k]
                values.append((cert[1] if hit else 0.0) + w * hit)
            return values

        key = zlib.crc32(json.dumps([[n, b[0], b[1]] for n, b in policy.items()]).encode())
        order = torch.randperm(len(search.images), generator=torch.Generator().manual_seed(image_seed(self.seed, key)))
        result = race(score, order.tolist(), cfg.race_batch, target, scorer.max_radius() + w, cfg.race_delta)
        scored = sorted(certificates)
        terms = scorer.terms_of([certificates[k] for k in scored], [labels[k] for k in scored])
        return {
            **terms,
            "images_scored": len(scored),
            "raced_out": result.stopped,
            "race_upper": result.upper,
            "race_target": target,
        }

    def describe(self) -> dict[str, Any]:
        """The evaluator's identity for the search's config file (what changes rewards)."""
        return {
            **asdict(self.config),
            "reward": self.reward_kind.name,
            # certify.runtime is left out: it is what the final certification runs, never a search's scoring
            "certify": {k: v for k, v in asdict(self.certify_config).items() if k != "runtime"},
            "seed": self.seed,
            "sigma": self.sigma,
            "search_indices": self.indices,
        }
