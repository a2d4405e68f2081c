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
from certquant.search.paired import PairedEstimator, PairedMarginEstimator, PairedRadiusEstimator, paired_estimate
from certquant.search.racing import race, serfling_upper
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
    "PairedEstimator",
    "PairedMarginEstimator",
    "PairedRadiusEstimator",
    "PolicyEvaluator",
    "REWARDS",
    "ScratchEstimator",
    "Search",
    "SearchConfig",
    "SearchResult",
    "action_to_bits",
    "paired_estimate",
    "race",
    "register_estimator",
    "reselect",
    "run_search",
    "serfling_upper",
    "top_policies",
    "uniform_policy",
]
