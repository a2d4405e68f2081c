"""Seeded Gaussian noise for randomized smoothing, regenerable batch by batch. The ONE place the seed scheme lives.

Seed scheme
-----------
1. A dataset run with seed ``seed`` gives image ``index`` its own seed::

       image_seed(seed, index) = SeedSequence([seed, index]) -> 63-bit integer

   so an image's certificate does not depend on which other images were certified before it (order and resume do
   not matter).
2. Certifying one image with seed ``s`` draws the samples of each *stage* in consecutive batches of ``batch_size``
   (the last batch may be shorter)::

       stage 0 = SELECTION   the n0 samples that pick c_A
       stage 1 = ESTIMATION  the n samples that count n_A (IRS regenerates these)
       stage 2 = PREDICTION  the n samples of PREDICT

   Batch ``b`` of stage ``t`` draws from its own generator::

       batch_seed(s, t, b) = SeedSequence([s, t, b]) -> 63-bit integer
       noise_b = sigma * torch.randn((count_b, C, H, W), generator=Generator(device).manual_seed(batch_seed(s, t, b)))

   with ``count_b = min(batch_size, total - b * batch_size)``.

Regenerating sample ``j`` of a stage therefore needs (s, t, batch_size, the stage's total, the device type): batch
``j // batch_size`` is regenerated at its original size and sliced, because ``torch.randn`` does not promise that a
shorter draw is a prefix of a longer one. One exception makes short prefixes cheap (IRS and the paired search
estimators read the first n_p of n samples): on the CPU, torch fills a float tensor of >= 16 elements with uniforms
in order and turns them into normals 16 at a time (Box-Muller, ``normal_fill`` in ATen), so when a sample holds a
multiple of 16 elements (28x28 = 49 x 16, 3x32x32 = 192 x 16) a draw of k samples IS the first k of the longer draw;
``noisy_batches`` then draws only the prefix, after checking that property once per sample shape
(``prefix_draw_is_exact``; a test checks it at full batch sizes). CPU and CUDA generators give different numbers
for the same seed, so regenerate on the same device type (and torch version) that certified. ``noisy_batches`` is
the single generator used both by certification and by any later regeneration, which is what makes them
bit-identical.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from certquant.utils.errors import CertquantError

SELECTION = 0  # stage 0: n0 samples choosing the top class c_A
ESTIMATION = 1  # stage 1: n samples counting n_A (cached for IRS)
PREDICTION = 2  # stage 2: n samples of PREDICT

_MASK_63 = (1 << 63) - 1


def _derive(*entropy: int) -> int:
    """A 63-bit seed from non-negative integers (numpy SeedSequence: well mixed, platform-independent)."""
    if any(int(e) < 0 for e in entropy):
        raise CertquantError(f"seeds and indices must be >= 0, got {list(entropy)}")
    words = np.random.SeedSequence([int(e) for e in entropy]).generate_state(2, dtype=np.uint32)
    return ((int(words[0]) << 32) | int(words[1])) & _MASK_63


def image_seed(seed: int, index: int) -> int:
    """The seed of dataset image ``index`` in a run with seed ``seed``."""
    return _derive(seed, index)


def batch_seed(seed: int, stage: int, batch_index: int) -> int:
    """The seed of batch ``batch_index`` of ``stage`` when certifying one image with seed ``seed``."""
    return _derive(seed, stage, batch_index)


def batch_counts(total: int, batch_size: int) -> list[int]:
    """Sizes of the consecutive batches that draw ``total`` samples: [batch_size, ..., remainder]."""
    if batch_size < 1:
        raise CertquantError(f"batch size must be >= 1, got {batch_size}")
    full, rest = divmod(total, batch_size)
    return [batch_size] * full + ([rest] if rest else [])


def noisy_batches(
    x: torch.Tensor,
    sigma: float,
    seed: int,
    stage: int,
    total: int,
    batch_size: int,
    limit: int | None = None,
) -> Iterator[torch.Tensor]:
    """Yield ``x + N(0, sigma^2 I)`` for the first ``limit`` (default: all ``total``) samples of ``stage``, batch by batch.

    Noise is drawn on ``x.device`` with one seeded generator per batch (see the module docstring); the batch holding
    sample ``limit - 1`` is drawn only up to it where that gives the same numbers (``prefix_draw_is_exact``), else at
    full size and sliced, so any prefix is bit-identical to the full draw.
    """
    limit = total if limit is None else min(limit, total)
    device = x.device
    generator = torch.Generator(device=device)
    start = 0
    for b, count in enumerate(batch_counts(total, batch_size)):
        if start >= limit:
            return
        generator.manual_seed(batch_seed(seed, stage, b))
        drawn = count
        if start + count > limit and prefix_draw_is_exact(x):
            drawn = limit - start  # the same numbers as the full draw's first rows, at a fraction of the cost
        batch = torch.randn((drawn, *x.shape), generator=generator, device=device, dtype=x.dtype)
        batch.mul_(sigma).add_(x)  # in place: one allocation per batch
        yield batch[: limit - start] if start + drawn > limit else batch
        start += count


_PREFIX_EXACT: dict[tuple[tuple[int, ...], torch.dtype, str], bool] = {}


def prefix_draw_is_exact(x: torch.Tensor) -> bool:
    """Whether a seeded ``torch.randn`` of k samples shaped like ``x`` equals the first k samples of a longer draw
    (module docstring): CPU, float32 / float64, a multiple of 16 elements per sample, and checked once per shape on
    this torch; anything else (CUDA's Philox offsets, odd shapes) draws whole batches."""
    key = (tuple(x.shape), x.dtype, x.device.type)
    if key not in _PREFIX_EXACT:
        exact = x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64) and x.numel() % 16 == 0
        if exact:
            generator = torch.Generator(device=x.device)
            generator.manual_seed(batch_seed(0, ESTIMATION, 0))
            longer = torch.randn((7, *x.shape), generator=generator, dtype=x.dtype)
            generator.manual_seed(batch_seed(0, ESTIMATION, 0))
            shorter = torch.randn((2, *x.shape), generator=generator, dtype=x.dtype)
            exact = torch.equal(longer[:2], shorter)
        _PREFIX_EXACT[key] = exact
    return _PREFIX_EXACT[key]
