"""EngineConfig validation, the local engine's task graph and threads, and the Ray extra's absence (no ray needed)."""

from __future__ import annotations

import operator

import pytest
import torch

import certquant.engine as engine_module
from certquant.engine import EngineConfig, LocalEngine, Task, make_engine, torch_threads
from certquant.pipeline.config import config_from_dict
from certquant.utils.errors import CertquantError


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"engine": "spark"}, "unknown engine 'spark'"),
        ({"engine": "ray", "workers": 0}, "workers must be an integer >= 1"),
        ({"engine": "ray", "gpus_per_worker": -1}, "gpus_per_worker must be >= 0"),
        ({"engine": "ray", "cpus_per_worker": 0}, "cpus_per_worker must be > 0"),
        ({"engine": "ray", "threads_per_worker": 0}, "threads_per_worker"),
        ({"engine": "local", "workers": 2}, "need the Ray engine"),
        ({"engine": "local", "gpus_per_worker": 0.5}, "need the Ray engine"),
    ],
)
def test_bad_settings_are_refused_in_one_line(kwargs, fragment):
    with pytest.raises(CertquantError, match=fragment) as info:
        EngineConfig(**kwargs)
    assert "\n" not in str(info.value)


def test_threads_default_to_one_per_ray_worker_and_torchs_locally():
    assert EngineConfig(engine="ray").threads == 1
    assert EngineConfig().threads is None
    assert EngineConfig(engine="ray", threads_per_worker=3).threads == 3


def test_run_config_takes_engine_settings_from_yaml_or_overrides():
    cfg = config_from_dict({"engine": {"engine": "ray", "workers": 2, "gpus_per_worker": 0.5}})
    assert cfg.engine == EngineConfig(engine="ray", workers=2, gpus_per_worker=0.5)
    overridden = config_from_dict({}, ["engine.engine=ray", "engine.workers=3"])
    assert overridden.engine == EngineConfig(engine="ray", workers=3)
    with pytest.raises(CertquantError, match="unknown config key 'engine.gpus'"):
        config_from_dict({"engine": {"gpus": 1}})
    with pytest.raises(CertquantError, match="need the Ray engine"):
        config_from_dict({}, ["engine.workers=2"])


def test_ray_engine_without_ray_is_one_line(monkeypatch):
    monkeypatch.setattr(engine_module, "ray_available", lambda: False)
    with pytest.raises(CertquantError, match=r"pip install 'certquant\[ray\]'"):
        make_engine(EngineConfig(engine="ray"))


def test_local_graph_runs_in_order_with_dependency_results():
    tasks = [
        Task("a", operator.add, (1, 2)),
        Task("b", operator.mul, (10,), ("a",)),
        Task("c", operator.sub, (), ("b", "a")),
    ]
    assert LocalEngine(EngineConfig()).run_graph(tasks) == {"a": 3, "b": 30, "c": 27}
    with pytest.raises(CertquantError, match="not listed before"):
        LocalEngine(EngineConfig()).run_graph([Task("b", operator.neg, (), ("a",)), Task("a", operator.neg, (1,))])
    with pytest.raises(CertquantError, match="twice"):
        LocalEngine(EngineConfig()).run_graph([Task("a", operator.neg, (1,)), Task("a", operator.neg, (2,))])


def test_local_engine_sets_and_restores_torch_threads():
    torch.set_num_threads(2)
    engine = LocalEngine(EngineConfig(threads_per_worker=1))
    seen = list(engine.map_unordered(lambda _: torch.get_num_threads(), [0, 1]))
    assert seen == [(0, 1), (1, 1)] and torch.get_num_threads() == 2
    with torch_threads(None):
        assert torch.get_num_threads() == 2


def test_keep_freed_memory_applies_on_glibc_once():
    import platform

    from certquant.utils.allocator import keep_freed_memory

    expected = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
    assert keep_freed_memory() is expected and keep_freed_memory() is expected


def test_cli_refuses_bad_engine_options_in_one_line(tmp_path):
    from typer.testing import CliRunner

    from certquant.cli.main import app

    runner = CliRunner()
    certify = ["certify", "--checkpoint", "small-cnn-fmnist-s0.25"]
    for args, fragment in (
        ([*certify, "--workers", "2"], "need the Ray engine"),
        ([*certify, "--engine", "spark"], "unknown engine"),
        (["run", "engine.gpus_per_worker=1"], "need the Ray engine"),
    ):
        result = runner.invoke(app, [*args, "--out", str(tmp_path / "out")])
        assert result.exit_code == 2, result.output
        lines = [line for line in result.output.strip().splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], result.output
    assert not (tmp_path / "out").exists()
