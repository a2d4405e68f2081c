"""ARQ / HAQ bit-width search (SPEC §5): a DDPG agent over per-layer bit-widths under a BitOPs budget."""

from certquant.search.ddpg import DDPGAgent, DDPGConfig

__all__ = ["DDPGAgent", "DDPGConfig"]
