"""The search section of a run: which searches (budgets x methods), their size, the search space, the agent and the
candidate scoring (``EvalConfig``, inherited). ``certquant search`` and ``certquant run`` read this one schema, so
the same settings give the same search."""

from __future__ import annotations

from dataclasses import dataclass, field

from certquant.search.ddpg import DDPGConfig
from certquant.search.env import EnvConfig
from certquant.search.evaluators import REWARDS, EvalConfig
from certquant.search.runner import METHODS
from certquant.utils.config import check


def _default_agent() -> DDPGConfig:
    return DDPGConfig(warmup_episodes=15)


@dataclass(frozen=True)
class SearchSettings(EvalConfig):
    """Every (budget, method) search of a run; candidate scoring as in ``EvalConfig``."""

    budgets: list[float] = field(default_factory=lambda: [0.015625])
    """BitOPs budgets as fractions of FP32 in (0, 1] (0.015625 = uniform W4A4 = 16/1024)."""
    methods: list[str] = field(default_factory=lambda: ["arq", "haq", "uniform"])
    """Searches per budget: arq (DDPG, certified-radius reward), haq (DDPG, noisy top-1 reward), random (random
    policies repaired to the budget), uniform (the largest uniform W=A bit-width that fits)."""
    baseline_reward: str = "arq"
    """Reward that random and uniform candidates are scored with (arq or haq)."""
    episodes: int = 40
    """Candidates per search (HAQ: 600); random gets the same number, uniform evaluates one."""
    search_images: int = 20
    """Size of the search set: a seeded draw from the checkpoint's held-out validation images (never test images)."""
    min_bits: int = 2
    """b_min: the lowest bit-width of weights and activations."""
    max_bits: int = 8
    """b_max: the highest bit-width of weights and activations."""
    pin_first_last: bool = False
    """HAQ's convention: the first and the last layer fixed at pin_bits (no search step)."""
    pin_bits: int = 8
    """Bits of pinned layers."""
    tie: bool = False
    """One action per layer: weight bits = activation bits."""
    final_top_k: int = 1
    """Re-score the k best distinct policies of each search on final_images fresh validation images and keep the
    best there (the winner's curse of a noisy reward); 1: the search's best."""
    final_uniform_fallback: bool = True
    """The final selection also scores uniform bits under the budget (the uniform method's policy) and keeps them when
    they score strictly higher than every searched policy (then even with final_top_k 1): a search never deploys a
    policy its own reward ranks below uniform bits on fresh images. On since ResNet-20's search matrix (README)."""
    final_images: int = 200
    """Fresh held-out validation images of the final selection (the seeded draw right after the search set's)."""
    final_finetune_steps: int | None = None
    """Noisy fine-tuning steps of each top-k policy before the final selection scores it (the deployed model is
    fine-tuned); None: the search's finetune_steps. Measured: 50 steps per candidate lowered the rank correlation with
    the fine-tuned certificates in six of seven reward rows (README, reward fidelity), so no shipped config sets it."""
    seed: int = 0
    """Seed of the agent, the search-set draw, the scoring noise, the calibration and the random policies."""
    agent: DDPGConfig = field(default_factory=_default_agent)
    """The DDPG agent (HAQ's hyper-parameters; 15 warm-up episodes of the default 40)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check(bool(self.budgets), "search.budgets is empty: give at least one BitOPs fraction, e.g. [0.015625]")
        for budget in self.budgets:
            check(
                0 < float(budget) <= 1,
                f"budget {budget} must be a fraction of FP32 BitOPs in (0, 1] (e.g. 0.015625 = uniform W4A4)",
            )
        unknown = sorted(set(self.methods) - set(METHODS))
        check(
            not unknown and bool(self.methods),
            f"unknown or no method(s) {', '.join(unknown)}: use {', '.join(METHODS)}",
        )
        check(self.baseline_reward in REWARDS, f"baseline_reward must be one of {', '.join(REWARDS)}")
        check(self.episodes >= 1 and self.search_images >= 1, "episodes and search_images must be >= 1")
        check(
            self.final_top_k >= 1 and self.final_images >= 1,
            "final_top_k and final_images must be >= 1 (final_top_k 1: no re-selection)",
        )
        check(
            self.final_finetune_steps is None or self.final_finetune_steps >= 0,
            f"final_finetune_steps must be >= 0 (or null: the search's finetune_steps), got {self.final_finetune_steps}",
        )
        self.env(float(self.budgets[0]))  # bit range and pin bits checked once, here

    def env(self, budget: float) -> EnvConfig:
        """The bit-width environment of one budget."""
        return EnvConfig(
            budget=float(budget),
            min_bits=self.min_bits,
            max_bits=self.max_bits,
            pin_first_last=self.pin_first_last,
            pin_bits=self.pin_bits,
            tie_weight_activation=self.tie,
        )

    def has_final_selection(self, method: str) -> bool:
        """Whether ``method``'s chosen policy goes through the final selection (uniform has a single candidate)."""
        return method != "uniform" and (self.final_top_k > 1 or self.final_uniform_fallback)

    def selection_finetune_steps(self) -> int:
        """Fine-tuning steps of each policy the final selection re-scores."""
        return self.finetune_steps if self.final_finetune_steps is None else self.final_finetune_steps

    def reward_of(self, method: str) -> str:
        """The reward a method's candidates are scored with: its own for arq / haq, baseline_reward otherwise."""
        return method if method in REWARDS else self.baseline_reward
