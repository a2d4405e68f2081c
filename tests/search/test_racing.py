"""Racing (search/racing.py): Serfling's bound, the stated confidence of the stopping rule in repeated trials, its
power on clearly worse candidates, the evaluator's raced scoring and the runner passing its incumbent."""

from __future__ import annotations

import math

import numpy as np
import pytest

from certquant.quant import Policy
from certquant.search import (
    EnvConfig,
    EvalConfig,
    PolicyEvaluator,
    SearchConfig,
    race,
    run_search,
    serfling_upper,
)
from certquant.search.racing import checks
from certquant.smoothing.bounds import clopper_pearson_lower
from certquant.smoothing.config import CertifyConfig
from certquant.utils.errors import CertquantError

SIGMA = 0.25


def test_serfling_bound_exact_values():
    # mean 0.5 after 10 of 100 values in a range of 2, level 0.05: 0.5 + 2 sqrt((1 - 9/100) log(20) / 20)
    assert serfling_upper(0.5, 10, 100, 2.0, 0.05) == pytest.approx(0.5 + 2 * math.sqrt(0.91 * math.log(20) / 20))
    assert serfling_upper(0.3, 100, 100, 2.0, 0.05) == 0.3  # the whole population: exact
    assert checks(100, 10) == 9 and checks(95, 10) == 9 and checks(5, 10) == 0
    with pytest.raises(CertquantError):
        serfling_upper(0.5, 0, 100, 1.0, 0.05)


def _trials(
    population: np.ndarray, target: float, value_range: float, delta: float, batch: int, trials: int, seed: int
) -> tuple[int, list[int]]:
    rng = np.random.default_rng(seed)
    stops, scored = 0, []
    for _ in range(trials):
        order = rng.permutation(len(population)).tolist()
        result = race(lambda items: population[items], order, batch, target, value_range, delta)
        stops += result.stopped
        scored.append(len(result.values))
    return stops, scored


@pytest.mark.parametrize("shape", ["two-point", "skewed"])
def test_a_candidate_that_would_beat_the_incumbent_is_stopped_at_most_delta_of_the_time(shape):
    """Populations whose mean equals the target (the candidate ties the incumbent, the hardest case that must not be
    stopped): over 3000 random orders the stop frequency is <= delta = 0.2, checked with a one-sided 99.9%
    Clopper-Pearson lower bound (a rule stopping 25% of the time fails with probability > 0.99)."""
    k, delta, value_range = 60, 0.2, 1.0
    rng = np.random.default_rng(1)
    if shape == "two-point":
        population = (rng.random(k) < 0.5).astype(float)
    else:  # many zeros, a few large values: the sample mean starts low
        population = np.where(rng.random(k) < 0.15, 1.0, 0.0) * rng.uniform(0.8, 1.0, k)
    stops, _ = _trials(population, population.mean(), value_range, delta, batch=5, trials=3000, seed=2)
    assert clopper_pearson_lower(stops, 3000, 0.001) <= delta


def test_clearly_worse_candidates_stop_early():
    """A candidate 0.45 below the target (range 1.8, as ARQ's reward with clean weight 1 at n_p = 400): stopped in
    every one of 500 orders, after scoring on average under 60% of 100 images."""
    rng = np.random.default_rng(3)
    population = np.clip(rng.normal(0.9, 0.4, 100), 0, 1.8)
    stops, scored = _trials(population, population.mean() + 0.45, 1.8, 0.05, batch=10, trials=500, seed=4)
    assert stops == 500 and np.mean(scored) < 60


def _evaluator(model, race_delta: float) -> PolicyEvaluator:
    from certquant.data import load_dataset

    images, labels = load_dataset("synthetic", "train")
    idx = list(range(1000, 1040))
    cfg = EvalConfig(
        estimator="paired-margin",
        n_p=100,
        n_fp=400,
        calib_images=64,
        clean_weight=0.0,
        race_delta=race_delta,
        race_batch=5,
    )
    return PolicyEvaluator(
        model,
        SIGMA,
        images[idx],
        labels[idx],
        idx,
        cfg,
        certify_config=CertifyConfig(n0=20, batch=100),
        arch="small-cnn",
    )


def test_evaluator_races_a_bad_candidate_out_and_its_full_reward_is_below_the_incumbent(trained_cnn):
    raced, full = _evaluator(trained_cnn, 0.05), _evaluator(trained_cnn, 0.0)
    assert raced.races and not full.races
    w8 = Policy.uniform(raced.layers, 8, arch="small-cnn")
    w2 = Policy.uniform(raced.layers, 2, 2, arch="small-cnn")
    incumbent = full(w8)["reward"]
    out = raced(w2, incumbent=incumbent)
    assert out["raced_out"] and out["images_scored"] < 40
    assert out["reward"] < incumbent
    assert out["forward_samples"] == out["images_scored"] * 100
    assert full(w2)["reward"] < incumbent  # what the race concluded, on all 40 images
    again = raced(w8, incumbent=incumbent)  # the incumbent itself is never stopped here: it ties
    assert not again["raced_out"] and again["images_scored"] == 40
    assert again["reward"] == pytest.approx(incumbent)
    assert raced(w2)["images_scored"] == 40  # no incumbent: no race


def test_runner_gives_a_racing_evaluator_the_best_reward_so_far(tmp_path):
    from certquant.models import build
    from certquant.quant import quantizable_layers

    layers = quantizable_layers(build("lenet5"), (1, 28, 28))
    seen: list = []

    class Racing:
        races = True

        def __call__(self, policy: Policy, incumbent: float | None = None) -> dict:
            seen.append(incumbent)
            return {"reward": float(sum(policy.w_bits))}

    run_search(
        layers,
        Racing(),
        SearchConfig(EnvConfig(budget=0.5), method="random", episodes=4),
        tmp_path / "s",
        progress=False,
    )
    assert seen[0] is None and all(s is not None for s in seen[1:])
    assert all(seen[i + 1] >= seen[i] for i in range(1, len(seen) - 1))  # the incumbent never falls
