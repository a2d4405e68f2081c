"""The main job end to end: certify full precision, search each method, fine-tune, certify, report.

Sits above search and report; only the CLI imports it.
"""

from certquant.pipeline.config import RunConfig, load_config

__all__ = ["RunConfig", "load_config"]
