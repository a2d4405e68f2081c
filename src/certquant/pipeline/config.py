"""The run's config: one typed schema composed of each package's own settings (minGPT style). Defaults live in
those dataclasses; a YAML file and dotted ``key=value`` overrides are merged into it (``certquant.utils.config``),
and every part validates itself once, when it is built."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from certquant.deploy.export import ExportConfig
from certquant.engine import EngineConfig
from certquant.quant.config import FinetuneConfig, QuantizeConfig
from certquant.search.config import SearchSettings
from certquant.smoothing.config import CertifyConfig, check_sigma
from certquant.utils import config as typed
from certquant.utils.config import check


@dataclass(frozen=True)
class TestSubsetCertifyConfig(CertifyConfig):
    """CERTIFY of every model in the report, on the test subset (every skip-th test image, at most max_images)."""

    skip: int = 100
    """Certify every skip-th test image (Cohen et al.: every 20th CIFAR-10 test image)."""
    max_images: int = 100
    """At most this many test images (the literature: 500)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check(
            self.skip >= 1 and self.max_images >= 1,
            f"certify.skip and certify.max_images must be >= 1, got {self.skip}, {self.max_images}",
        )


@dataclass(frozen=True)
class RunConfig:
    """One `certquant run` (and `certquant search`): a noise-trained checkpoint, a noise level, budgets and methods."""

    dataset: Optional[str] = "fashion-mnist"
    """Dataset of the test subset and the search set (null: the checkpoint's; another one is refused)."""
    checkpoint: str = "small-cnn-fmnist-s0.25"
    """Noise-trained checkpoint: a file path or a zoo name (see certquant zoo)."""
    sigma: Optional[float] = None
    """Noise std in [0, 1] pixel units for search, calibration, fine-tuning and certification (null: the
    checkpoint's training sigma)."""
    device: str = "auto"
    """auto, cpu or cuda (part of the noise seeding)."""
    certify: TestSubsetCertifyConfig = field(default_factory=TestSubsetCertifyConfig)
    search: SearchSettings = field(default_factory=SearchSettings)
    quantize: QuantizeConfig = field(default_factory=QuantizeConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    """Where the stages run (engine.engine=ray: as Ray tasks); not part of the run's identity, so either engine
    resumes a run."""

    def __post_init__(self) -> None:
        check_sigma(self.sigma)
        check(
            self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:"),
            f"device must be auto, cpu or cuda, got '{self.device}'",
        )

    def to_dict(self) -> dict[str, Any]:
        return typed.to_dict(self)


def _shorthand(values: dict[str, Any]) -> dict[str, Any]:
    """``export: onnx`` is short for ``export: {format: onnx}``."""
    if isinstance(values.get("export"), str):
        return {**values, "export": {"format": values["export"]}}
    return values


def _shorthand_overrides(overrides: list[str] | None) -> list[str] | None:
    """``export=onnx`` is short for ``export.format=onnx``."""
    return [f"export.format={o.split('=', 1)[1]}" if o.startswith("export=") else o for o in overrides or []] or None


def config_from_dict(values: dict[str, Any], overrides: list[str] | None = None) -> RunConfig:
    """A RunConfig from a mapping (e.g. a parsed YAML file) and dotted overrides."""
    return typed.build_config(RunConfig, [_shorthand(values or {})], _shorthand_overrides(overrides))


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """A RunConfig from the built-in defaults, a YAML file (None: none) and dotted overrides."""
    return config_from_dict(typed.read_yaml(path) if path is not None else {}, overrides)
