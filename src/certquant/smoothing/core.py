"""CERTIFY and PREDICT of randomized smoothing (Cohen, Rosenfeld, Kolter, ICML 2019), for one image.

The smoothed classifier is g(x) = argmax_c P[f(x + e) = c], e ~ N(0, sigma^2 I), with x in [0, 1] pixel space (the
model normalizes in its first layer). Noise comes from ``noise.noisy_batches`` (seeded per batch), so a certificate
is a deterministic function of (model, x, sigma, n0, n, alpha, batch_size, seed, device type).
"""

from __future__ import annotations

import contextlib
import itertools
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
from scipy.stats import binomtest
from torch import nn

from certquant.smoothing.bounds import certified_radius, clopper_pearson_lower
from certquant.smoothing.config import check_sigma
from certquant.smoothing.noise import ESTIMATION, PREDICTION, SELECTION, batch_counts, batch_seed, noisy_batches
from certquant.utils.errors import CertquantError, short_reason

ABSTAIN = -1


@dataclass
class CertificationCache:
    """What IRS needs to re-use a certification of f: c_A, pA_lower and f's class for every estimation sample.

    Sample j of the estimation stage is regenerated bit-identically by
    ``noisy_batches(x, sigma, seed, stage, n, batch_size)`` on a device of type ``device`` (see ``noise``);
    ``batch_seeds[b]`` is the explicit seed of estimation batch b (= ``noise.batch_seed(seed, stage, b)``).
    """

    c_a: int  # top class chosen from the n0 selection samples
    n_a: int  # estimation samples classified as c_A
    pa_lower: float  # one-sided Clopper-Pearson lower bound on pA at level 1 - alpha
    n: int
    sigma: float
    alpha: float
    seed: int  # the image's seed
    stage: int  # noise.ESTIMATION
    batch_size: int
    batch_seeds: list[int]
    device: str  # device type the noise was drawn on ("cpu" or "cuda")
    predictions: torch.Tensor  # (n,) f's predicted class per estimation sample, uint8 (<= 256 classes) or int16, CPU

    def noisy_batches(self, x: torch.Tensor, limit: int | None = None) -> Iterator[torch.Tensor]:
        """Regenerate the first ``limit`` (default n) noisy estimation samples of ``x``, batch by batch."""
        if x.device.type != self.device:
            raise CertquantError(
                f"noise was drawn on {self.device}, x is on {x.device.type}: regenerate on {self.device}"
            )
        return noisy_batches(x, self.sigma, self.seed, self.stage, self.n, self.batch_size, limit)


@dataclass
class Certificate:
    """The result of CERTIFY for one image: ``label`` = c_A or -1 (abstain), ``radius`` = sigma * Phi^-1(pA_lower)."""

    label: int
    radius: float
    pa_lower: float
    counts: list[int]  # per-class counts of the n estimation samples
    seconds: float
    c_a: int = ABSTAIN  # the top class of the selection samples (kept even when abstaining)
    n_a: int = 0
    seed: int = 0
    cache: CertificationCache | None = field(default=None, repr=False)


def validate_smoothing_args(sigma: float, alpha: float, batch_size: int, seed: int = 0, **counts: int) -> None:
    """Refuse sigma <= 0, alpha outside (0, 1), a negative seed, a batch size or sample count below 1."""
    check_sigma(sigma)
    if not 0.0 < alpha < 1.0:
        raise CertquantError(f"alpha must be in (0, 1), e.g. 0.001, got {alpha}")
    if batch_size < 1:
        raise CertquantError(f"batch size must be >= 1, got {batch_size}")
    if seed < 0:
        raise CertquantError(f"seed must be >= 0, got {seed}")
    for name, value in counts.items():
        if value < 1:
            raise CertquantError(f"{name} must be >= 1 (number of noise samples), got {value}")


def _check_image(x: torch.Tensor, input_shape: Sequence[int] | None) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 3:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise CertquantError(f"expected one image of shape (C, H, W), got {shape}: pass images[i], not a batch")
    if input_shape is not None and tuple(x.shape) != tuple(input_shape):
        raise CertquantError(
            f"image of shape {tuple(x.shape)} does not fit the model's input {tuple(input_shape)}: "
            "use the dataset the model was trained on"
        )
    if x.numel() and (x.min().item() < -1e-6 or x.max().item() > 1 + 1e-6):
        raise CertquantError(
            "image values lie outside [0, 1]: pass raw pixels (the model normalizes in its first layer)"
        )


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (CPU for a model without any)."""
    tensor = next(itertools.chain(model.parameters(), model.buffers()), None)
    return tensor.device if tensor is not None else torch.device("cpu")


def _as_model_input(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``x`` on the model's device, in the model's floating dtype (float32 for a model without parameters)."""
    tensor = next(itertools.chain(model.parameters(), model.buffers()), None)
    dtype = tensor.dtype if tensor is not None and tensor.is_floating_point() else torch.float32
    return x.to(device=model_device(model), dtype=dtype)


@contextlib.contextmanager
def _evaluating(model: nn.Module) -> Iterator[None]:
    """Eval mode under inference_mode for the duration; the model's previous train/eval mode is restored after."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        model.train(was_training)


def _first_forward(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """The first forward pass, turning a shape mismatch into a one-line error."""
    try:
        logits: torch.Tensor = model(batch)
    except RuntimeError as exc:
        first = short_reason(exc, 160)
        raise CertquantError(
            f"image of shape {tuple(batch.shape[1:])} does not fit the model ({first}): "
            "pass images of the model's input shape (C, H, W)"
        ) from None
    if logits.dim() != 2 or logits.shape[1] < 2:
        raise CertquantError(f"model output has shape {tuple(logits.shape)}, expected (batch, classes >= 2) logits")
    return logits


# Largest forward pass on a CPU. The noise is still drawn in batches of ``batch_size`` (that is part of the seeding),
# but each batch is classified in passes of at most this many samples: on the 2-core CPU here passes of 200 samples
# were 1.4-2.2x faster per sample than passes of 1,000 (small CNN and ResNet-20, channels_last or not: activations
# stay in the cache). A GPU classifies whole batches.
CPU_FORWARD_CHUNK = 200


def classify_pieces(model: nn.Module, batch: torch.Tensor, first: bool = False) -> Iterator[tuple[torch.Tensor, int]]:
    """f's class (argmax of the logits) for the samples of ``batch``, yielded pass by pass: on a CPU passes of at most
    ``CPU_FORWARD_CHUNK`` samples, on an accelerator the whole batch; with the number of classes. ``first`` checks the
    model's output on the first pass. Sequential certification stops between passes; full certification
    (``classify``) concatenates them, so both classify every sample in the same pass, bit-identically."""
    chunk = CPU_FORWARD_CHUNK if batch.device.type == "cpu" else len(batch)
    for start in range(0, len(batch), chunk):
        piece = batch[start : start + chunk]
        logits = _first_forward(model, piece) if first and start == 0 else model(piece)
        yield logits.argmax(1), logits.shape[1]


def classify(model: nn.Module, batch: torch.Tensor, first: bool = False) -> tuple[torch.Tensor, int]:
    """f's class for every sample of ``batch`` and the number of classes (the passes of ``classify_pieces``)."""
    parts = list(classify_pieces(model, batch, first))
    return (torch.cat([c for c, _ in parts]) if len(parts) > 1 else parts[0][0]), parts[-1][1]


def classified_samples(
    model: nn.Module,
    x: torch.Tensor,
    sigma: float,
    total: int,
    batch_size: int,
    seed: int,
    stage: int,
    limit: int | None = None,
    only: torch.Tensor | None = None,
) -> Iterator[tuple[int, torch.Tensor, torch.Tensor | None, int]]:
    """f's classes of the first ``limit`` (default ``total``) noisy samples of ``stage``, forward pass by forward pass.

    Yields ``(start, classes, positions, num_classes)``: ``classes`` on the model's device; ``positions`` is None when
    the pass holds samples ``start, start + 1, ...`` of the stage, else (with ``only``) the CPU int64 sample indices of
    the marked samples it holds. ``only`` (a boolean mask over those samples, on the CPU) classifies just the samples
    it marks: every batch is still drawn whole, so the noise of each sample stays what it is without the mask (IRS
    skips samples this way). Full (``sample_counts``) and sequential certification both classify through here.
    """
    offset, first = 0, True
    for batch in noisy_batches(x, sigma, seed, stage, total, batch_size, limit):
        size, positions = len(batch), None
        if only is not None:
            marked = only[offset : offset + size].nonzero().squeeze(1)
            if len(marked) == 0:
                offset += size
                continue
            if len(marked) < size:
                batch = batch.index_select(0, marked.to(batch.device))
                positions = marked + offset
        done = 0
        for classes, num_classes in classify_pieces(model, batch, first):
            first = False
            count = len(classes)
            yield (offset + done, classes, None if positions is None else positions[done : done + count], num_classes)
            done += count
        offset += size


def sample_counts(
    model: nn.Module,
    x: torch.Tensor,
    sigma: float,
    total: int,
    batch_size: int,
    seed: int,
    stage: int,
    keep_predictions: bool = False,
    limit: int | None = None,
    only: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Class counts of f over the first ``limit`` (default ``total``) noisy samples of ``stage``, counted on the device.

    Hot loop: draw noise with the batch's generator, add x, forward, argmax, bincount; no per-sample Python work.
    ``only`` marks the samples to classify (see ``classified_samples``). Returns ``(counts (classes,) int64 on the
    model's device, predictions on CPU or None)``, predictions of the classified samples in order. Must run in eval
    mode under inference_mode (``certify`` and ``predict`` do that).
    """
    counts: torch.Tensor | None = None
    kept: list[torch.Tensor] = []
    for _, classes, _, num_classes in classified_samples(model, x, sigma, total, batch_size, seed, stage, limit, only):
        if counts is None:
            counts = torch.zeros(num_classes, dtype=torch.int64, device=classes.device)
        counts += torch.bincount(classes, minlength=num_classes)
        if keep_predictions:
            kept.append(classes.to(torch.uint8 if num_classes <= 256 else torch.int16))
    if counts is None:
        raise CertquantError(
            f"no noise samples classified (total {total}, limit {limit}): both must be >= 1, and "
            "a mask (only) must mark at least one sample"
        )
    return counts, (torch.cat(kept).cpu() if keep_predictions else None)


def certify(
    model: nn.Module,
    x: torch.Tensor,
    sigma: float,
    n0: int = 100,
    n: int = 100_000,
    alpha: float = 0.001,
    batch_size: int = 1000,
    seed: int = 0,
    keep_cache: bool = False,
    input_shape: Sequence[int] | None = None,
) -> Certificate:
    """CERTIFY(f, sigma, x, n0, n, alpha) of Cohen et al.: with probability >= 1 - alpha over the noise, a returned
    (c_A, R) means the smoothed classifier predicts c_A on the whole L2 ball of radius R around x.

    ``x`` is one image (C, H, W) in [0, 1]; ``input_shape`` (C, H, W), when given, is checked against it (otherwise a
    failing first forward pass reports the mismatch). ``keep_cache`` adds ``Certificate.cache`` for IRS.
    """
    validate_smoothing_args(sigma, alpha, batch_size, seed, n0=n0, n=n)
    _check_image(x, input_shape)
    started = time.perf_counter()
    x = _as_model_input(model, x)
    with _evaluating(model):
        # 1. selection: n0 noisy copies (c_A, their most frequent class, is chosen in _certificate)
        counts0, _ = sample_counts(model, x, sigma, n0, batch_size, seed, SELECTION)
        # 2. estimation: n fresh noisy copies, n_A = how many are c_A
        counts, predictions = sample_counts(
            model, x, sigma, n, batch_size, seed, ESTIMATION, keep_predictions=keep_cache
        )
    cert = _certificate(counts0, counts, n, alpha, sigma, seed, time.perf_counter() - started)
    if keep_cache:
        assert predictions is not None
        cert.cache = CertificationCache(
            c_a=cert.c_a,
            n_a=cert.n_a,
            pa_lower=cert.pa_lower,
            n=n,
            sigma=float(sigma),
            alpha=float(alpha),
            seed=seed,
            stage=ESTIMATION,
            batch_size=batch_size,
            batch_seeds=[batch_seed(seed, ESTIMATION, b) for b in range(len(batch_counts(n, batch_size)))],
            device=x.device.type,
            predictions=predictions,
        )
    return cert


def _certificate(
    counts0: torch.Tensor, counts: torch.Tensor, n: int, alpha: float, sigma: float, seed: int, seconds: float
) -> Certificate:
    """Steps 1, 3 and 4 of CERTIFY from the class counts of the n0 selection and n estimation samples."""
    # 1. selection: c_A = the most frequent class among the n0 noisy copies
    c_a = int(counts0.argmax().item())
    counts_list = counts.tolist()
    n_a = int(counts_list[c_a])
    # 3. pA_lower: one-sided Clopper-Pearson lower bound at level 1 - alpha
    pa_lower = clopper_pearson_lower(n_a, n, alpha)
    # 4. certify c_A with radius sigma * Phi^-1(pA_lower) if pA_lower > 1/2, else abstain
    label = c_a if pa_lower > 0.5 else ABSTAIN
    return Certificate(label, certified_radius(pa_lower, sigma), pa_lower, counts_list, seconds, c_a, n_a, seed)


def sample_counts_many(
    model: nn.Module,
    xs: Sequence[torch.Tensor],
    sigma: float,
    total: int,
    batch_size: int,
    seeds: Sequence[int],
    stage: int,
    max_forward: int,
) -> torch.Tensor:
    """Class counts (images, classes) of f over ``total`` noisy samples of ``stage`` for each image ``xs[k]``.

    Each image's noise is drawn exactly as ``sample_counts`` draws it (seed ``seeds[k]``, batches of ``batch_size``);
    consecutive batches of several images are packed into one forward pass of at most ``max_forward`` samples (one
    batch when it is larger). Many small forward passes leave an accelerator idle; packing them is the speed-up.
    Must run in eval mode under inference_mode.
    """
    counts: torch.Tensor | None = None
    packed = _packed_batches(xs, sigma, total, batch_size, seeds, stage, max_forward)
    for b, (batch, owner) in enumerate(packed):
        classes, num_classes = classify(model, batch, first=b == 0)
        if counts is None:
            counts = torch.zeros(len(xs), num_classes, dtype=torch.int64, device=classes.device)
        counts += torch.bincount(owner * num_classes + classes, minlength=counts.numel()).view_as(counts)
    assert counts is not None  # total >= 1 is validated by the caller
    return counts


def _packed_batches(
    xs: Sequence[torch.Tensor],
    sigma: float,
    total: int,
    batch_size: int,
    seeds: Sequence[int],
    stage: int,
    max_forward: int,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The images' noise batches, consecutive ones packed into passes of at most ``max_forward`` samples (one batch
    when it is larger), each with the index of the image every sample belongs to."""
    pending: list[torch.Tensor] = []
    owners: list[torch.Tensor] = []
    size = 0
    for k, x in enumerate(xs):
        for batch in noisy_batches(x, sigma, seeds[k], stage, total, batch_size):
            if pending and size + len(batch) > max_forward:
                yield torch.cat(pending), torch.cat(owners)
                pending, owners, size = [], [], 0
            pending.append(batch)
            owners.append(torch.full((len(batch),), k, device=batch.device))
            size += len(batch)
    if pending:
        yield torch.cat(pending), torch.cat(owners)


def certify_many(
    model: nn.Module,
    xs: Sequence[torch.Tensor],
    sigma: float,
    n0: int = 100,
    n: int = 100_000,
    alpha: float = 0.001,
    batch_size: int = 1000,
    seeds: Sequence[int] = (),
    max_forward: int | None = None,
    input_shape: Sequence[int] | None = None,
) -> list[Certificate]:
    """``[certify(model, xs[k], ..., seed=seeds[k]) for k]`` with the noise of several images in each forward pass
    (at most ``max_forward`` samples, default ``batch_size``): the same noise and so the same certificates, up to
    float differences of a differently batched forward pass. For many images with few samples each (a search set
    certified with n_p samples per candidate) this replaces hundreds of small forward passes by a few large ones.
    ``Certificate.seconds`` is the mean time per image."""
    if len(seeds) != len(xs):
        raise CertquantError(f"{len(xs)} images but {len(seeds)} seeds: pass one noise seed per image")
    validate_smoothing_args(sigma, alpha, batch_size, min(seeds, default=0), n0=n0, n=n)
    if not len(xs):
        return []
    for x in xs:
        _check_image(x, input_shape)
    started = time.perf_counter()
    inputs = [_as_model_input(model, x) for x in xs]
    forward = max(batch_size, max_forward or batch_size)
    with _evaluating(model):
        counts0 = sample_counts_many(model, inputs, sigma, n0, batch_size, seeds, SELECTION, forward).cpu()
        counts = sample_counts_many(model, inputs, sigma, n, batch_size, seeds, ESTIMATION, forward).cpu()
    seconds = (time.perf_counter() - started) / len(xs)
    return [_certificate(counts0[k], counts[k], n, alpha, sigma, seeds[k], seconds) for k in range(len(xs))]


def predict(
    model: nn.Module,
    x: torch.Tensor,
    sigma: float,
    n: int = 100_000,
    alpha: float = 0.001,
    batch_size: int = 1000,
    seed: int = 0,
    input_shape: Sequence[int] | None = None,
) -> int:
    """PREDICT(f, sigma, x, n, alpha) of Cohen et al.: the top class of n noisy copies, or -1 (abstain) unless a
    two-sided binomial test of the top count n1 against the runner-up n2 (p = 1/2) has p-value <= alpha.
    With probability >= 1 - alpha a non-abstaining answer equals the smoothed classifier's prediction g(x).
    """
    validate_smoothing_args(sigma, alpha, batch_size, seed, n=n)
    _check_image(x, input_shape)
    x = _as_model_input(model, x)
    with _evaluating(model):
        counts, _ = sample_counts(model, x, sigma, n, batch_size, seed, PREDICTION)
    top2 = counts.topk(2)
    (n1, n2), (c1, _) = top2.values.tolist(), top2.indices.tolist()
    if binomtest(n1, n1 + n2, p=0.5, alternative="two-sided").pvalue > alpha:
        return ABSTAIN
    return int(c1)
