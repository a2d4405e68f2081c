"""The DDPG agent: learns a toy bit allocation better than random search, and resumes exactly from its state."""

from __future__ import annotations

import io
import itertools

import numpy as np
import pytest
import torch

from certquant.search.ddpg import DDPGAgent, DDPGConfig
from certquant.utils.errors import CertquantError

# A toy bit-allocation problem with a known optimum: 6 layers, bits in [2, 8], reward = sum of concave per-layer
# utilities, cost = sum MACs * b^2 under a budget, over-budget policies repaired by lowering bits from the last layer.
MACS = np.array([1.0, 4.0, 2.0, 8.0, 1.0, 0.5])
WEIGHT = np.array([3.0, 1.0, 2.0, 0.5, 2.5, 1.0])
BUDGET = 0.3 * (MACS * 64).sum()
L, B_MIN, B_MAX = len(MACS), 2, 8
FEATURES = np.stack([np.arange(L), MACS, WEIGHT], 1)
FEATURES = (FEATURES - FEATURES.min(0)) / (FEATURES.max(0) - FEATURES.min(0))


def utility(bits: np.ndarray) -> np.ndarray:
    return (WEIGHT * (1 - np.exp(-(bits - 1) / 2.0))).sum(-1)


def cost(bits: np.ndarray) -> np.ndarray:
    return (MACS * bits**2).sum(-1)


def reward(actions: np.ndarray) -> float:
    bits = np.clip(np.round(B_MIN - 0.5 + actions * (B_MAX - B_MIN + 1)), B_MIN, B_MAX)
    while cost(bits) > BUDGET:
        k = max(i for i in range(L) if bits[i] > B_MIN)
        bits[k] -= 1
    return float(utility(bits))


def optimum() -> float:
    grid = np.array(list(itertools.product(range(B_MIN, B_MAX + 1), repeat=L)), dtype=float)
    return float(utility(grid[cost(grid) <= BUDGET]).max())


def run_episode(agent: DDPGAgent, episode: int) -> tuple[float, list[float]]:
    states, actions, previous = [], [], 0.0
    for k in range(L):
        state = np.array([*FEATURES[k], previous], dtype=np.float32)
        action = agent.act(state, episode)
        states.append(state)
        actions.append(action)
        previous = action
    r = reward(np.array(actions))
    agent.observe(np.array(states), np.array(actions), r)
    for _ in range(L):
        agent.update()
    return r, actions


def test_ddpg_beats_random_search_on_toy_allocation():
    torch.set_num_threads(1)  # 300-wide MLPs on minibatches of 64: threads only add contention (conftest resets it)
    episodes, best = 150, optimum()
    ddpg_gaps, random_gaps = [], []
    for seed in (0, 1):
        agent = DDPGAgent(state_dim=4, episode_length=L, config=DDPGConfig(seed=seed))
        ddpg_gaps.append(best - max(run_episode(agent, e)[0] for e in range(episodes)))
        rng = np.random.default_rng(1000 + seed)
        random_gaps.append(best - max(reward(rng.random(L)) for _ in range(episodes)))
    assert min(ddpg_gaps) >= -1e-9 and min(random_gaps) >= -1e-9  # nothing beats the optimum
    assert np.mean(ddpg_gaps) < 0.5 * np.mean(random_gaps), (ddpg_gaps, random_gaps)
    assert max(ddpg_gaps) < 0.15, ddpg_gaps  # within ~1.5% of the optimum (9.06)


def test_exploration_schedule_and_action_range():
    agent = DDPGAgent(4, L, DDPGConfig(warmup_episodes=3, seed=5))
    assert agent.sigma(0) == agent.sigma(3) == 0.5
    assert agent.sigma(13) == pytest.approx(0.5 * 0.99**10)
    state = np.zeros(4, dtype=np.float32)
    for episode in (0, 3, 50, 500):
        assert all(0.0 <= agent.act(state, episode) <= 1.0 for _ in range(20))
    assert agent.update() is None  # nothing before warm-up and a full minibatch


def test_resume_is_exact():
    torch.set_num_threads(1)
    cfg = DDPGConfig(warmup_episodes=4, batch_size=8, replay_episodes=3, seed=7, hidden=32)
    straight = DDPGAgent(4, L, cfg)
    rewards_straight = [run_episode(straight, e) for e in range(12)]

    first = DDPGAgent(4, L, cfg)
    rewards_resumed = [run_episode(first, e) for e in range(6)]
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    second = DDPGAgent(4, L, cfg)
    second.load_state_dict(torch.load(buffer, weights_only=True))
    rewards_resumed += [run_episode(second, e) for e in range(6, 12)]

    assert rewards_resumed == rewards_straight
    for a, b in zip(straight.actor.parameters(), second.actor.parameters()):
        assert torch.equal(a, b)
    assert straight.baseline == second.baseline and straight.buffer.size == second.buffer.size == 3 * L


def test_bad_config_and_mismatched_state():
    with pytest.raises(CertquantError):
        DDPGAgent(4, L, DDPGConfig(tau=0.0))
    state = DDPGAgent(4, L, DDPGConfig(hidden=16)).state_dict()
    with pytest.raises(CertquantError):
        DDPGAgent(5, L, DDPGConfig(hidden=16)).load_state_dict(state)
