"""ARQ / HAQ bit-width search (SPEC §5): a DDPG agent over per-layer bit-widths under a BitOPs budget, candidates
scored by an injected evaluator (ARQ: certified radius of the quantized smoothed classifier; HAQ: noisy accuracy)."""

from certquant.search.ddpg import DDPGAgent, DDPGConfig
from certquant.search.env import BitWidthEnv, EnvConfig, action_to_bits
from certquant.search.evaluators import (
    ESTIMATORS,
    REWARDS,
    ACREstimator,
    EvalConfig,
    PolicyEvaluator,
    ScratchEstimator,
    register_estimator,
)
from certquant.search.runner import METHODS, Search, SearchConfig, SearchResult, run_search, uniform_policy
from certquant.search.selection import reselect, top_policies

__all__ = [
    "ACREstimator",
    "BitWidthEnv",
    "DDPGAgent",
    "DDPGConfig",
    "ESTIMATORS",
    "EnvConfig",
    "EvalConfig",
    "METHODS",
    "PolicyEvaluator",
    "REWARDS",
    "ScratchEstimator",
    "Search",
    "SearchConfig",
    "SearchResult",
    "action_to_bits",
    "register_estimator",
    "reselect",
    "run_search",
    "top_policies",
    "uniform_policy",
]
