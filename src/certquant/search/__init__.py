"""ARQ / HAQ bit-width search (SPEC §5): a DDPG agent over per-layer bit-widths under a BitOPs budget."""

from certquant.search.ddpg import DDPGAgent, DDPGConfig
from certquant.search.env import BitWidthEnv, EnvConfig, action_to_bits

__all__ = ["BitWidthEnv", "DDPGAgent", "DDPGConfig", "EnvConfig", "action_to_bits"]
