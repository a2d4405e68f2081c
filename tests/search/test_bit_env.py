"""The bit-width environment: state, action mapping, pinning, and every emitted policy fitting the budget."""

from __future__ import annotations

import numpy as np
import pytest

from certquant.models import build
from certquant.quant import Policy, bitops_fraction, quantizable_layers
from certquant.search.env import STATE_FEATURES, BitWidthEnv, EnvConfig, action_to_bits
from certquant.utils.errors import CertquantError


@pytest.fixture(scope="module")
def resnet_layers():
    return quantizable_layers(build("resnet20", 10, 3, 32), (3, 32, 32))


@pytest.fixture(scope="module")
def cnn_layers():
    return quantizable_layers(build("small-cnn"), (1, 28, 28))


def test_action_to_bits_uses_equal_bins():
    assert action_to_bits(0.0, 2, 8) == 2 and action_to_bits(1.0, 2, 8) == 8
    edges = [action_to_bits(a, 2, 8) for a in np.linspace(0, 1, 7001)]
    counts = np.bincount(edges)[2:]
    assert len(counts) == 7 and counts.min() > 950  # each of the 7 widths gets ~1/7 of [0, 1]


def test_states_are_normalized_and_steps_skip_pinned(resnet_layers):
    env = BitWidthEnv(resnet_layers, EnvConfig(budget=0.05))
    assert env.state_dim == len(STATE_FEATURES) == 10
    assert env.episode_length == 2 * (len(resnet_layers) - 2)
    states, state, done, rng = [], env.reset(), False, np.random.default_rng(0)
    while not done:
        states.append(state)
        action = rng.random()
        state, done = env.step(action)
        if not done:
            assert state[-1] == pytest.approx(action)  # the previous action
    states = np.array(states)
    assert states.min() >= 0 and states.max() <= 1
    assert np.allclose(states[:, :9].min(0), 0)  # min-max normalized (flags included)
    assert set(states[:, 8]) == {0.0, 1.0}  # weight step, then activation step
    policy = env.policy()
    assert policy.bits(resnet_layers[0].name) == (8, 8) and policy.bits(resnet_layers[-1].name) == (8, 8)


@pytest.mark.parametrize("tie", [False, True])
@pytest.mark.parametrize("pin", [False, True])
def test_every_policy_fits_the_budget(resnet_layers, cnn_layers, tie, pin):
    rng = np.random.default_rng(int(tie) * 2 + int(pin))
    for layers in (resnet_layers, cnn_layers):
        for budget in (0.01, 0.015625, 0.03, 0.06, 0.2, 1.0):
            try:
                env = BitWidthEnv(layers, EnvConfig(budget=budget, pin_first_last=pin, tie_weight_activation=tie))
            except CertquantError:
                assert pin and budget <= 0.015625  # 8-bit first/last layers can exceed tiny budgets
                continue
            for _ in range(25):
                actions = rng.random(env.episode_length) ** rng.uniform(0.2, 3)  # skewed towards low or high bits
                policy = env.policy_from_actions(actions)
                assert bitops_fraction(layers, policy) <= budget * (1 + 1e-12)
                assert all(2 <= b <= 8 for b in policy.w_bits + policy.a_bits)
                if tie:
                    assert policy.w_bits == policy.a_bits
                if pin:
                    assert policy.bits(layers[0].name) == policy.bits(layers[-1].name) == (8, 8)


def test_repair_keeps_fitting_policies_and_lowers_from_the_last_layer(cnn_layers):
    env = BitWidthEnv(cnn_layers, EnvConfig(budget=0.015625, pin_first_last=False))
    assert env.repair([4] * 4, [4] * 4) == ([4] * 4, [4] * 4)  # uniform W4A4 meets 0.015625 exactly
    # the last layer's activation first, then its weight
    assert env.repair([4, 4, 4, 5], [4, 4, 4, 5]) == ([4, 4, 4, 4], [4, 4, 4, 4])
    # one sweep from the last layer: a3, w3, a2, w2 lowered, then it fits and layers 0 and 1 are left alone
    w, a = env.repair([5, 4, 4, 4], [5, 4, 4, 4])
    assert (w, a) == ([5, 4, 3, 3], [5, 4, 3, 3])
    assert bitops_fraction(cnn_layers, Policy.from_lists(cnn_layers, w, a)) <= 0.015625


@pytest.mark.parametrize("budget", [0.0, -0.1, 1.5])
def test_bad_budgets(cnn_layers, budget):
    with pytest.raises(CertquantError, match="budget"):
        BitWidthEnv(cnn_layers, EnvConfig(budget=budget))


def test_unreachable_budget_is_explained(cnn_layers):
    with pytest.raises(CertquantError, match="unreachable"):
        BitWidthEnv(cnn_layers, EnvConfig(budget=0.001))  # 2-bit layers plus 8-bit first/last cost more
