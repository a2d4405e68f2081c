"""The seed scheme: same seeds -> bit-identical noise, other seeds or stages -> other noise, prefixes regenerate."""

from __future__ import annotations

import pytest
import torch

from certquant.smoothing.noise import (
    ESTIMATION,
    SELECTION,
    batch_counts,
    batch_seed,
    image_seed,
    noisy_batches,
    prefix_draw_is_exact,
)
from certquant.utils.errors import CertquantError


def _all(x, seed, stage=ESTIMATION, total=250, batch=100, limit=None):
    return torch.cat(list(noisy_batches(x, 0.5, seed, stage, total, batch, limit)))


def test_same_seed_identical_other_seed_or_stage_different():
    x = torch.rand(1, 5, 5)
    a, b = _all(x, 3), _all(x, 3)
    assert a.shape == (250, 1, 5, 5) and torch.equal(a, b)
    assert not torch.equal(a, _all(x, 4))
    assert not torch.equal(a, _all(x, 3, stage=SELECTION))


def test_noise_statistics_and_x_added():
    x = torch.rand(2, 6, 6)
    noise = _all(x, 0, total=4000, batch=1000) - x
    assert abs(noise.mean().item()) < 0.01 and abs(noise.std().item() - 0.5) < 0.01


@pytest.mark.parametrize("limit", [1, 99, 100, 101, 249, 250, 1000])
def test_prefix_is_bit_identical(limit):
    x = torch.rand(1, 5, 5)
    full = _all(x, 9)
    part = _all(x, 9, limit=limit)
    assert torch.equal(part, full[: min(limit, 250)])


@pytest.mark.parametrize(
    ("shape", "batch", "limit"), [((1, 28, 28), 5000, 16), ((1, 28, 28), 5000, 5001), ((3, 32, 32), 1000, 3)]
)
def test_short_prefixes_are_drawn_short_and_equal_the_full_draw(shape, batch, limit):
    """On the CPU, a sample of a multiple of 16 elements lets a prefix be drawn at its own size (the module
    docstring): the same numbers as the whole batch drawn and sliced, at the search's real batch sizes."""
    x = torch.rand(shape)
    assert prefix_draw_is_exact(x)
    part = _all(x, 5, total=10_000, batch=batch, limit=limit)
    generator = torch.Generator().manual_seed(batch_seed(5, ESTIMATION, (limit - 1) // batch))
    whole = torch.randn((batch, *shape), generator=generator).mul_(0.5).add_(x)
    assert torch.equal(part[-(limit - (limit - 1) // batch * batch) :], whole[: limit - (limit - 1) // batch * batch])


def test_other_shapes_draw_whole_batches_and_slice():
    x = torch.rand(1, 3, 5)  # 15 elements: torch's 16-wide normal blocks would straddle samples
    assert not prefix_draw_is_exact(x) and not prefix_draw_is_exact(torch.rand(4, 4).to(torch.float16))
    full = _all(x, 2, total=300, batch=200)
    assert torch.equal(_all(x, 2, total=300, batch=200, limit=17), full[:17])


def test_batches_are_independent_streams():
    # batch b has its own seed: batches differ from each other, and batch 1 does not depend on batch 0's size
    assert len({batch_seed(0, ESTIMATION, b) for b in range(100)}) == 100
    assert batch_counts(250, 100) == [100, 100, 50] and batch_counts(200, 100) == [100, 100]


def test_seed_derivation_is_stable():
    # fixed values: changing the scheme would silently break regeneration of stored caches
    assert image_seed(0, 0) == image_seed(0, 0) < 2**63
    assert image_seed(0, 1) != image_seed(1, 0)
    assert batch_seed(0, 1, 0) == 7805851153417077868
    with pytest.raises(CertquantError):
        image_seed(-1, 0)
