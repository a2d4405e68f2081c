"""The statistics behind the IRS benchmark's speed-ups (interpolation, bootstrap interval, branch re-weighting)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
bench_irs = pytest.importorskip("bench_irs")


def _curve(acrs: list[float], seconds: list[float]) -> list[dict]:
    return [{"samples": i, "acr": a, "seconds_per_image": s} for i, (a, s) in enumerate(zip(acrs, seconds))]


def test_time_to_reach_interpolates_and_flags_bounds():
    curve = _curve([0.2, 0.4, 0.6], [1.0, 2.0, 4.0])
    assert bench_irs.time_to_reach(0.5, curve) == (pytest.approx(3.0), "interpolated")
    assert bench_irs.time_to_reach(0.1, curve) == (1.0, "below")
    assert bench_irs.time_to_reach(0.7, curve) == (4.0, "above")


def _setting():
    """Four images: two 'direct' ones where IRS ties from scratch, two 'zeta' ones where it is behind."""
    irs = np.array([1.0, 1.0, 0.2, 0.4])
    curve = [(np.array([0.5, 0.5, 0.1, 0.1]), 1.0), (np.array([1.0, 1.0, 0.5, 0.5]), 3.0)]
    direct = np.array([True, True, False, False])
    return irs, curve, direct


def test_reweighting_to_the_actual_share_changes_nothing():
    irs, curve, direct = _setting()
    plain = bench_irs.weighted_speedups(np.full((1, 4), 0.25), irs, curve, 2.0)[0]
    assert bench_irs.speedup_at_direct_share(direct, 0.5, irs, curve, 2.0) == pytest.approx(plain)
    # more weight on the images where IRS is behind lowers the speed-up, less raises it
    assert bench_irs.speedup_at_direct_share(direct, 0.2, irs, curve, 2.0) < plain
    assert bench_irs.speedup_at_direct_share(direct, 0.8, irs, curve, 2.0) > plain


def test_bootstrap_interval_brackets_the_estimate_and_collapses_without_spread():
    irs, curve, _ = _setting()
    point = bench_irs.weighted_speedups(np.full((1, 4), 0.25), irs, curve, 2.0)[0]
    low, high = bench_irs.speedup_interval(irs, curve, 2.0, rounds=500)
    assert low < point < high
    same = np.full(4, 0.6)
    flat = [(np.full(4, 0.5), 1.0), (np.full(4, 0.7), 3.0)]
    assert bench_irs.speedup_interval(same, flat, 2.0, rounds=200) == pytest.approx((1.0, 1.0))
