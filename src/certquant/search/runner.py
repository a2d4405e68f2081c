"""The search loop (SPEC §5): episodes of the bit-width environment, each candidate scored by an injected evaluator,
written to a run folder after every episode so that ``resume=True`` continues exactly.

Methods:

- ``arq`` / ``haq``: the DDPG agent (the reward kind is the evaluator's business: ARQ's ACR or HAQ's accuracy);
- ``random``: uniform random actions through the same environment, so every policy is repaired to the budget;
- ``uniform``: one candidate, the largest uniform W=A bit-width in [b_min, b_max] that fits (pinned layers stay pinned).

Run folder::

    run.json            the search's identity (method, budget, env, agent, evaluator, extra); resume must match it
    history.jsonl       one line per episode: policy bits, BitOPs fraction, every reward term, seconds, best so far
    best_policy.json    the best policy so far (certquant.quant Policy JSON, loadable by ``certquant quantize --policy``)
    state.pt            agent (networks, optimizers, replay buffer, RNG states), random-search RNG, best, evaluation
                        cache; written atomically after every episode
    summary.json        at the end: best reward and policy, FP32 reference, timing

Evaluations are cached by policy: the evaluator is deterministic (fixed seeds), so a policy the agent proposes again is
not re-quantized and re-certified; its history line says ``cached: true``. An evaluator with ``races = True``
(``PolicyEvaluator`` with ``EvalConfig.race_delta`` > 0) is called with ``incumbent=`` the best reward so far and may
stop scoring a candidate that cannot beat it (``certquant.search.racing``; ``terms.raced_out``, ``images_scored``);
the incumbent only grows, so a cached raced-out result stays below it.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from tqdm import tqdm

from certquant.quant import LayerInfo, Policy, bitops_fraction
from certquant.search.ddpg import DDPGAgent, DDPGConfig
from certquant.search.env import BitWidthEnv, EnvConfig
from certquant.utils.errors import CertquantError
from certquant.utils.provenance import software_versions
from certquant.utils.run_folder import IDENTITY_FILE, RunFolder

METHODS = ("arq", "haq", "random", "uniform")
CONFIG_FILE, HISTORY_FILE, BEST_FILE, STATE_FILE, SUMMARY_FILE = (
    IDENTITY_FILE,
    "history.jsonl",
    "best_policy.json",
    "state.pt",
    "summary.json",
)

Evaluator = Callable[[Policy], dict[str, Any]]


@dataclass(frozen=True)
class SearchConfig:
    """One search: the method, how many episodes, the search space and budget, the agent."""

    env: EnvConfig
    """Budget, bit range, pinning, weight/activation tying."""
    method: str = "arq"
    """arq or haq (DDPG agent), random (random policies repaired to the budget), uniform (largest fitting W=A)."""
    episodes: int = 600
    """Candidates to evaluate (HAQ: 600); ``uniform`` always evaluates one."""
    ddpg: DDPGConfig = field(default_factory=DDPGConfig)
    """The agent's hyper-parameters (arq / haq)."""
    seed: int = 0
    """Seed of the agent (overrides ``ddpg.seed``) and of random search."""

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise CertquantError(f"unknown search method '{self.method}': use one of {', '.join(METHODS)}")
        if self.episodes < 1:
            raise CertquantError(f"episodes must be >= 1, got {self.episodes}")

    def identity(self) -> dict[str, Any]:
        data = asdict(self)
        data["ddpg"]["seed"] = self.seed
        return data


@dataclass
class SearchResult:
    best_policy: Policy
    best_reward: float
    best_episode: int
    history: list[dict[str, Any]]
    out: Path


def _policy_key(policy: Policy) -> str:
    return json.dumps([[n, w, a] for n, (w, a) in policy.items()])


def uniform_policy(env: BitWidthEnv) -> Policy:
    """The largest uniform W=A bit-width in [b_min, b_max] that fits the budget (pinned layers at ``pin_bits``)."""
    cfg = env.config
    for bits in range(cfg.max_bits, cfg.min_bits - 1, -1):
        w = [cfg.pin_bits if i in env.pinned else bits for i in range(len(env.layers))]
        if env.fits(w, w):
            return Policy.from_lists(env.layers, w, w, arch=env.arch)
    raise CertquantError("no uniform bit-width fits the budget")  # unreachable: the env checked b_min fits


class Search:
    """A resumable search over ``layers`` with ``evaluate(policy) -> terms`` (terms must hold ``reward``)."""

    def __init__(
        self,
        layers: Sequence[LayerInfo],
        evaluate: Evaluator,
        config: SearchConfig,
        out: str | Path,
        arch: str | None = None,
        extra: dict[str, Any] | None = None,
    ):
        self.config, self.evaluate, self.arch = config, evaluate, arch
        self.layers = list(layers)
        self.out = Path(out)
        self.env = BitWidthEnv(self.layers, config.env, arch=arch)
        self.identity = {
            "format": "certquant-search",
            "version": 1,
            "search": config.identity(),
            "arch": arch,
            "layers": [layer.name for layer in self.layers],
            **(extra or {}),
        }
        self.folder = RunFolder(self.out, "search", self.identity)
        self.agent: DDPGAgent | None = None
        if config.method in ("arq", "haq"):
            ddpg = DDPGConfig(**{**asdict(config.ddpg), "seed": config.seed})
            self.agent = DDPGAgent(self.env.state_dim, self.env.episode_length, ddpg)
        self.rng = np.random.default_rng(config.seed)  # random search
        self.episode = 0
        self.best: dict[str, Any] | None = None  # {"reward", "episode", "policy" (dict)}
        self.cache: dict[str, dict[str, Any]] = {}
        self.seconds = 0.0
        self.opened = False

    @property
    def total_episodes(self) -> int:
        return 1 if self.config.method == "uniform" else self.config.episodes

    # -- persistence --------------------------------------------------------------------------------------------

    def _state(self) -> dict[str, Any]:
        return {
            "episode": self.episode,
            "best": self.best,
            "cache": self.cache,
            "seconds": self.seconds,
            "rng": self.rng.bit_generator.state,
            "agent": self.agent.state_dict() if self.agent else None,
        }

    def _save(self) -> None:
        # best policy first, then the state: a kill in between leaves best_policy.json ahead of state.pt, which the
        # resumed run rewrites with the same content
        if self.best is not None:
            self.folder.write_json(BEST_FILE, self.best["policy"])
        self.folder.save_torch(STATE_FILE, self._state())

    def open(self, resume: bool) -> None:
        """Claim the run folder (``RunFolder``), or (``resume``) load its state; a finished episode is never re-run.
        Call it before expensive set-up (``run`` calls it when nobody did) so that a wrong --out fails at once."""
        self.opened = True
        resuming = self.folder.claim(resume)
        state_path = self.out / STATE_FILE
        if resuming and state_path.exists():
            state = torch.load(state_path, weights_only=True)
            self.episode, self.best, self.cache, self.seconds = (
                state["episode"],
                state["best"],
                state["cache"],
                state["seconds"],
            )
            self.rng.bit_generator.state = state["rng"]
            if self.agent is not None:
                self.agent.load_state_dict(state["agent"])
        # keep exactly the episodes the state knows (a kill after the history line and before the state write)
        self.folder.records(HISTORY_FILE, keep=self.episode)

    # -- one episode ----------------------------------------------------------------------------------------------

    def _propose(self, episode: int) -> tuple[Policy, list[np.ndarray], list[float]]:
        """The episode's policy, with the states and actions the agent saw (empty for random / uniform)."""
        method = self.config.method
        if method == "uniform":
            return uniform_policy(self.env), [], []
        if method == "random":
            return self.env.policy_from_actions(self.rng.random(self.env.episode_length).tolist()), [], []
        assert self.agent is not None
        states: list[np.ndarray] = []
        actions: list[float] = []
        state: np.ndarray | None = self.env.reset()
        while state is not None:  # the env returns no next state after the last step
            action = self.agent.act(state, episode)
            states.append(state)
            actions.append(action)
            state, _ = self.env.step(action)
        return self.env.policy(), states, actions

    def step(self) -> dict[str, Any]:
        """Propose, evaluate, learn, record one episode; returns its history record."""
        started = time.perf_counter()
        episode = self.episode
        policy, states, actions = self._propose(episode)
        chosen = self.env.chosen_bits() if actions else None
        key = _policy_key(policy)
        cached = key in self.cache
        if not cached:
            # a racing evaluator (EvalConfig.race_delta) may stop a candidate that cannot beat the best so far
            best = self.best
            if getattr(self.evaluate, "races", False) and best is not None:
                terms = dict(cast(Any, self.evaluate)(policy, incumbent=best["reward"]))
            else:
                terms = dict(self.evaluate(policy))
            if "reward" not in terms or not math.isfinite(float(terms["reward"])):
                raise CertquantError(f"the evaluator returned no finite 'reward' (got {terms.get('reward')!r})")
            self.cache[key] = terms
        terms = self.cache[key]
        reward = float(terms["reward"])
        if self.agent is not None:
            self.agent.observe(np.array(states), np.array(actions), reward)
            for _ in range(self.env.episode_length):  # HAQ: one update per transition after warm-up
                self.agent.update()
        improved = self.best is None or reward > self.best["reward"]
        if improved:
            best_policy = Policy(
                dict(policy.items()),
                arch=self.arch,
                meta={
                    "search": str(self.out),
                    "method": self.config.method,
                    "episode": episode,
                    "reward": reward,
                    "budget": self.config.env.budget,
                    "bitops_fraction": bitops_fraction(self.layers, policy),
                    "terms": terms,
                },
            )
            self.best = {"reward": reward, "episode": episode, "policy": best_policy.to_dict()}
        best = self.best
        assert best is not None
        seconds = time.perf_counter() - started
        self.seconds += seconds
        record = {
            "episode": episode,
            "w_bits": policy.w_bits,
            "a_bits": policy.a_bits,
            "bitops_fraction": bitops_fraction(self.layers, policy),
            "reward": reward,
            "terms": terms,
            "cached": cached,
            "best_reward": best["reward"],
            "best_episode": best["episode"],
            "seconds": seconds,
        }
        if actions and chosen is not None and self.agent is not None:
            record.update(
                actions=actions,
                chosen_w_bits=chosen[0],
                chosen_a_bits=chosen[1],
                sigma=self.agent.sigma(episode) if episode >= self.agent.config.warmup_episodes else None,
            )
        self.folder.append(HISTORY_FILE, record)
        self.episode += 1
        self._save()
        return record

    # -- the whole search ---------------------------------------------------------------------------------------

    def run(self, resume: bool = False, progress: bool = True, reference: dict[str, Any] | None = None) -> SearchResult:
        """Run (or continue) every remaining episode and write ``summary.json``."""
        if not self.opened:
            self.open(resume)
        total = self.total_episodes
        bar = tqdm(
            total=total,
            initial=min(self.episode, total),
            desc=f"search {self.config.method}",
            unit="episode",
            disable=not progress,
        )
        if self.best is not None:
            bar.set_postfix(best=f"{self.best['reward']:.4f}")
        while self.episode < total:
            record = self.step()
            bar.update(1)
            bar.set_postfix(
                reward=f"{record['reward']:.4f}",
                best=f"{record['best_reward']:.4f}",
                bitops=f"{record['bitops_fraction']:.4f}",
            )
        bar.close()
        assert self.best is not None
        history = self.folder.records(HISTORY_FILE)
        best_policy = Policy.from_dict(self.best["policy"])
        self.folder.write_json(
            SUMMARY_FILE,
            {
                "method": self.config.method,
                "budget": self.config.env.budget,
                "episodes": len(history),
                "best_reward": self.best["reward"],
                "best_episode": self.best["episode"],
                "best_bitops_fraction": bitops_fraction(self.layers, best_policy),
                "best_w_bits": best_policy.w_bits,
                "best_a_bits": best_policy.a_bits,
                "best_terms": best_policy.meta.get("terms"),
                "reference": reference,
                "evaluations": len(self.cache),
                "seconds": self.seconds,
                "seconds_per_evaluation": self.seconds / max(1, len(self.cache)),
                "software": software_versions(),
            },
        )
        return SearchResult(best_policy, self.best["reward"], self.best["episode"], history, self.out)


def run_search(
    layers: Sequence[LayerInfo],
    evaluate: Evaluator,
    config: SearchConfig,
    out: str | Path,
    resume: bool = False,
    arch: str | None = None,
    extra: dict[str, Any] | None = None,
    progress: bool = True,
    reference: dict[str, Any] | None = None,
) -> SearchResult:
    """Run a search (see ``Search``); ``extra`` joins the identity that ``resume`` checks (e.g. checkpoint hash)."""
    return Search(layers, evaluate, config, out, arch=arch, extra=extra).run(resume, progress, reference)
