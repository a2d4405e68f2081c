"""DDPG (Lillicrap et al. 2016) as HAQ uses it for bit-width search (SPEC §5).

One episode = one pass over the quantizable layers; every action is a scalar in [0, 1]. The episode's final reward
is given to every transition of the episode, and a moving average of past episode rewards is subtracted as a
baseline when the critic is trained. Exploration: ``warmup_episodes`` of uniform random actions, then a normal
distribution truncated to [0, 1] around the actor's output, sigma = init_sigma * sigma_decay^(episode - warmup).

Everything random comes from the agent's own generators (a ``numpy.random.Generator`` for actions and minibatches,
a ``torch.Generator`` for weight initialization), never from global RNG state, and ``state_dict()`` holds them
together with the networks, optimizers and the replay buffer, so a search resumed from it continues exactly.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from scipy.stats import truncnorm
from torch import nn

from certquant.utils.errors import CertquantError
from certquant.utils.threads import torch_threads

AGENT_THREADS = 1  # torch threads of the agent's updates (tiny networks: one thread is fastest)


@dataclass(frozen=True)
class DDPGConfig:
    """Hyper-parameters of the agent; the defaults are HAQ's (SPEC §5)."""

    hidden: int = 300
    """Width of both hidden layers of the actor (state -> h -> h -> 1, sigmoid) and the critic ((s, a) -> h -> h -> 1)."""
    actor_lr: float = 1e-4
    """Adam learning rate of the actor."""
    critic_lr: float = 1e-3
    """Adam learning rate of the critic."""
    tau: float = 0.01
    """Soft target update: target <- (1 - tau) * target + tau * online, after every update."""
    discount: float = 1.0
    """Discount gamma of the critic's bootstrapped target r + gamma * Q'(s', mu'(s')) (episodes are short and finite)."""
    batch_size: int = 64
    """Transitions per minibatch."""
    replay_episodes: int = 128
    """Replay buffer capacity in episodes (times the episode length gives the capacity in transitions)."""
    warmup_episodes: int = 20
    """Episodes of uniform random actions before the actor is used; no updates happen before they are done."""
    init_sigma: float = 0.5
    """Exploration std of the truncated normal at the first episode after warm-up."""
    sigma_decay: float = 0.99
    """Per-episode multiplicative decay of the exploration std."""
    baseline_momentum: float = 0.1
    """Moving-average reward baseline: b <- b + momentum * (R - b) after each episode (the first R sets b)."""
    seed: int = 0
    """Seed of the agent's generators (network initialization, exploration, minibatch sampling); a search sets it
    to the search's seed."""

    def __post_init__(self) -> None:
        if self.hidden < 1 or self.batch_size < 1 or self.replay_episodes < 1:
            raise CertquantError("DDPG hidden width, batch size and replay_episodes must be >= 1")
        if self.warmup_episodes < 0:
            raise CertquantError(f"warmup_episodes must be >= 0, got {self.warmup_episodes}")
        if not 0 < self.tau <= 1:
            raise CertquantError(f"tau must be in (0, 1], got {self.tau}")
        if not 0 <= self.discount <= 1:
            raise CertquantError(f"discount must be in [0, 1], got {self.discount}")
        if self.init_sigma < 0 or not 0 < self.sigma_decay <= 1:
            raise CertquantError("init_sigma must be >= 0 and sigma_decay in (0, 1]")
        if not 0 < self.baseline_momentum <= 1:
            raise CertquantError(f"baseline_momentum must be in (0, 1], got {self.baseline_momentum}")


def _mlp(inputs: int, hidden: int, generator: torch.Generator, sigmoid: bool) -> nn.Sequential:
    """inputs -> hidden -> hidden -> 1, ReLU; fan-in uniform init from ``generator``, small last layer (DDPG paper)."""
    layers = [nn.Linear(inputs, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1)]
    if sigmoid:
        layers.append(nn.Sigmoid())
    net = nn.Sequential(*layers)
    linears = [m for m in net if isinstance(m, nn.Linear)]
    with torch.no_grad():
        for i, layer in enumerate(linears):
            bound = 3e-3 if i == len(linears) - 1 else 1.0 / math.sqrt(layer.in_features)
            layer.weight.uniform_(-bound, bound, generator=generator)
            layer.bias.uniform_(-bound, bound, generator=generator)
    return net


class Critic(nn.Module):
    """Q(s, a): the state and the action concatenated, then an MLP."""

    def __init__(self, state_dim: int, hidden: int, generator: torch.Generator):
        super().__init__()
        self.net = _mlp(state_dim + 1, hidden, generator, sigmoid=False)

    def forward(self, state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([state, action], dim=1))


class ReplayBuffer:
    """A ring buffer of transitions (s, a, r, s', done) in numpy arrays."""

    _ARRAYS = ("states", "actions", "rewards", "next_states", "dones")

    def __init__(self, capacity: int, state_dim: int):
        self.capacity = capacity
        self.states = np.zeros((capacity, state_dim), dtype=np.float32)
        self.actions = np.zeros((capacity, 1), dtype=np.float32)
        self.rewards = np.zeros((capacity, 1), dtype=np.float32)
        self.next_states = np.zeros((capacity, state_dim), dtype=np.float32)
        self.dones = np.zeros((capacity, 1), dtype=np.float32)
        self.position = 0
        self.size = 0

    def add(self, state: np.ndarray, action: float, reward: float, next_state: np.ndarray, done: bool) -> None:
        i = self.position
        self.states[i], self.actions[i, 0], self.rewards[i, 0] = state, action, reward
        self.next_states[i], self.dones[i, 0] = next_state, float(done)
        self.position = (i + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def sample(self, count: int, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
        idx = rng.integers(0, self.size, size=count)
        return self.states[idx], self.actions[idx], self.rewards[idx], self.next_states[idx], self.dones[idx]

    def state_dict(self) -> dict[str, Any]:
        """Tensors rather than arrays, so the state loads with ``torch.load(weights_only=True)``."""
        n = self.size
        arrays = {name: torch.from_numpy(getattr(self, name)[:n].copy()) for name in self._ARRAYS}
        return {"capacity": self.capacity, "position": self.position, "size": n, **arrays}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["capacity"] != self.capacity or tuple(state["states"].shape[1:]) != self.states.shape[1:]:
            raise CertquantError(
                "replay buffer in the saved state has another shape: the search was made with other settings"
            )
        n = state["size"]
        for name in self._ARRAYS:
            getattr(self, name)[:n] = np.asarray(state[name])
        self.position, self.size = state["position"], n


class DDPGAgent:
    """The HAQ agent: ``act`` per layer, ``observe`` a finished episode with its reward, ``update`` one gradient step."""

    def __init__(self, state_dim: int, episode_length: int, config: DDPGConfig | None = None):
        self.config = config or DDPGConfig()
        if state_dim < 1 or episode_length < 1:
            raise CertquantError("DDPG needs state_dim >= 1 and episode_length >= 1")
        cfg = self.config
        self.state_dim, self.episode_length = state_dim, episode_length
        self.torch_generator = torch.Generator().manual_seed(cfg.seed)
        self.rng = np.random.default_rng(cfg.seed)
        self.actor = _mlp(state_dim, cfg.hidden, self.torch_generator, sigmoid=True)
        self.critic = Critic(state_dim, cfg.hidden, self.torch_generator)
        self.actor_target = copy.deepcopy(self.actor)
        self.critic_target = copy.deepcopy(self.critic)
        self.actor_optimizer = torch.optim.Adam(self.actor.parameters(), lr=cfg.actor_lr)
        self.critic_optimizer = torch.optim.Adam(self.critic.parameters(), lr=cfg.critic_lr)
        self.buffer = ReplayBuffer(cfg.replay_episodes * episode_length, state_dim)
        self.baseline: float | None = None  # moving average of episode rewards
        self.episodes_observed = 0
        self.updates = 0

    # -- acting ---------------------------------------------------------------------------------------------------

    def sigma(self, episode: int) -> float:
        """Exploration std at ``episode`` (0-based): init_sigma * sigma_decay^(episode - warmup)."""
        cfg = self.config
        return cfg.init_sigma * cfg.sigma_decay ** max(0, episode - cfg.warmup_episodes)

    @torch.no_grad()
    def greedy(self, state: np.ndarray) -> float:
        """The actor's output mu(s) in [0, 1], no exploration."""
        x = torch.as_tensor(np.asarray(state, dtype=np.float32)).reshape(1, -1)
        return float(self.actor(x).item())

    def act(self, state: np.ndarray, episode: int, explore: bool = True) -> float:
        """An action in [0, 1] for ``state`` at ``episode`` (0-based): uniform during warm-up, else truncated normal."""
        if not explore:
            return self.greedy(state)
        if episode < self.config.warmup_episodes:
            return float(self.rng.random())
        mu, sigma = self.greedy(state), self.sigma(episode)
        if sigma <= 0:
            return mu
        low, high = (0.0 - mu) / sigma, (1.0 - mu) / sigma
        sample = truncnorm.rvs(low, high, loc=mu, scale=sigma, random_state=self.rng)
        return float(np.clip(sample, 0.0, 1.0))

    # -- learning -------------------------------------------------------------------------------------------------

    def observe(self, states: np.ndarray, actions: np.ndarray, reward: float) -> None:
        """Store one finished episode: states (T, state_dim) and actions (T,), every transition rewarded ``reward``.

        The next state of step t is states[t + 1]; the last step is terminal. The baseline moves towards ``reward``.
        """
        states = np.asarray(states, dtype=np.float32)
        actions = np.asarray(actions, dtype=np.float32).reshape(-1)
        if states.ndim != 2 or states.shape[1] != self.state_dim or len(actions) != len(states) or len(states) == 0:
            raise CertquantError(
                f"observe expects states (T, {self.state_dim}) and T actions, got {states.shape} and {actions.shape}"
            )
        if not math.isfinite(reward):
            raise CertquantError(f"episode reward must be finite, got {reward}")
        last = len(states) - 1
        for t in range(len(states)):
            next_state = states[t + 1] if t < last else states[t]
            self.buffer.add(states[t], actions[t], reward, next_state, t == last)
        if self.baseline is None:
            self.baseline = float(reward)
        else:
            self.baseline += self.config.baseline_momentum * (float(reward) - self.baseline)
        self.episodes_observed += 1

    def ready(self) -> bool:
        """True once warm-up is over and the buffer holds a minibatch."""
        return self.episodes_observed >= self.config.warmup_episodes and self.buffer.size >= self.config.batch_size

    def update(self) -> dict[str, float] | None:
        """One critic and one actor gradient step on a minibatch, then the soft target update; None before ``ready()``.

        Runs on ``AGENT_THREADS`` CPU thread(s): the networks are small, and on a loaded 2-core CPU two threads made 160
        updates 20x slower (126 s against 6 s, same weights bitwise; utils.threads)."""
        with torch_threads(AGENT_THREADS):
            return self._update()

    def _update(self) -> dict[str, float] | None:
        if not self.ready():
            return None
        cfg = self.config
        s, a, r, s2, d = (torch.from_numpy(v) for v in self.buffer.sample(cfg.batch_size, self.rng))
        r = r - float(self.baseline or 0.0)  # reward minus the moving-average baseline
        with torch.no_grad():
            target = r + cfg.discount * (1.0 - d) * self.critic_target(s2, self.actor_target(s2))
        critic_loss = nn.functional.mse_loss(self.critic(s, a), target)
        self.critic_optimizer.zero_grad(set_to_none=True)
        critic_loss.backward()
        self.critic_optimizer.step()

        actor_loss = -self.critic(s, self.actor(s)).mean()
        self.actor_optimizer.zero_grad(set_to_none=True)
        actor_loss.backward()
        self.actor_optimizer.step()

        with torch.no_grad():  # Polyak averaging of the target networks
            for online, target_net in ((self.actor, self.actor_target), (self.critic, self.critic_target)):
                for p, p_t in zip(online.parameters(), target_net.parameters()):
                    p_t.mul_(1.0 - cfg.tau).add_(p, alpha=cfg.tau)
        self.updates += 1
        return {"critic_loss": float(critic_loss.item()), "actor_loss": float(actor_loss.item())}

    # -- checkpointing --------------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly: networks, optimizers, replay buffer, baseline, counters, RNG states."""
        return {
            "config": asdict(self.config),
            "state_dim": self.state_dim,
            "episode_length": self.episode_length,
            "actor": self.actor.state_dict(),
            "critic": self.critic.state_dict(),
            "actor_target": self.actor_target.state_dict(),
            "critic_target": self.critic_target.state_dict(),
            "actor_optimizer": self.actor_optimizer.state_dict(),
            "critic_optimizer": self.critic_optimizer.state_dict(),
            "buffer": self.buffer.state_dict(),
            "baseline": self.baseline,
            "episodes_observed": self.episodes_observed,
            "updates": self.updates,
            "numpy_rng": self.rng.bit_generator.state,
            "torch_rng": self.torch_generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if (
            state["config"] != asdict(self.config)
            or state["state_dim"] != self.state_dim
            or state["episode_length"] != self.episode_length
        ):
            raise CertquantError("the saved agent was made with other settings: start a new search instead of resuming")
        for name in (
            "actor",
            "critic",
            "actor_target",
            "critic_target",
            "actor_optimizer",
            "critic_optimizer",
            "buffer",
        ):
            getattr(self, name).load_state_dict(state[name])
        self.baseline = state["baseline"]
        self.episodes_observed = state["episodes_observed"]
        self.updates = state["updates"]
        self.rng.bit_generator.state = state["numpy_rng"]
        self.torch_generator.set_state(state["torch_rng"])
