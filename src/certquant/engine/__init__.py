"""Engines that run certquant's tasks: ``local`` (this process, the default) or ``ray`` (the optional extra
``certquant[ray]``: workers on every core and GPU of one machine, or of a cluster).

Both run the same library functions (per-image CERTIFY / IRS, the pipeline's stages), so results do not depend on
the engine; the driver alone writes run folders during sharded certification, so either engine resumes the other's.
"""

from certquant.engine.base import Engine, LocalEngine, Task, check_graph, torch_threads
from certquant.engine.config import ENGINES, EngineConfig
from certquant.utils.errors import CertquantError


def ray_available() -> bool:
    """Whether the optional ray package imports."""
    try:
        import ray  # noqa: F401
    except ImportError:
        return False
    return True


def make_engine(config: EngineConfig | None = None) -> Engine:
    """The engine ``config`` asks for (default: local). The Ray engine connects lazily, when work starts."""
    config = config or EngineConfig()
    if config.engine == "local":
        return LocalEngine(config)
    if not ray_available():
        raise CertquantError("the Ray engine needs ray: pip install 'certquant[ray]' (or drop --engine ray)")
    from certquant.engine.ray_engine import RayEngine

    return RayEngine(config)


__all__ = [
    "ENGINES",
    "Engine",
    "EngineConfig",
    "LocalEngine",
    "Task",
    "check_graph",
    "make_engine",
    "ray_available",
    "torch_threads",
]
