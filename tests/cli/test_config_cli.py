"""One source of truth: every default lives in a config dataclass; the command line and YAML files only override it.

`certquant run/search --help` list every field with its default (generated from the dataclasses), `certquant config
show` prints the resolved config, dotted overrides work and unknown keys are refused, options of the other commands
take their defaults from the same dataclasses, and help reads well at 80 columns."""

from __future__ import annotations

import dataclasses

import pytest
import typer
import yaml
from cli_helpers import assert_one_line_error
from typer.testing import CliRunner

from certquant.cli.main import app
from certquant.pipeline.config import RunConfig, load_config
from certquant.quant.config import FinetuneConfig, QuantizeConfig
from certquant.smoothing.config import CertifyConfig, IRSConfig
from certquant.utils.config import field_docs, iter_fields

runner = CliRunner()

# options of the non-config commands that set a config field: (command, option parameter) -> (dataclass, field)
BOUND = {
    ("certify", "n0"): (CertifyConfig, "n0"),
    ("certify", "n"): (CertifyConfig, "n"),
    ("certify", "alpha"): (CertifyConfig, "alpha"),
    ("certify", "batch"): (CertifyConfig, "batch"),
    ("certify", "seed"): (CertifyConfig, "seed"),
    ("certify", "gamma"): (IRSConfig, "gamma"),
    ("certify", "alpha_zeta"): (IRSConfig, "alpha_zeta"),
    ("certify", "disparity"): (IRSConfig, "disparity"),
    ("predict", "n"): (CertifyConfig, "n"),
    ("predict", "alpha"): (CertifyConfig, "alpha"),
    ("predict", "batch"): (CertifyConfig, "batch"),
    ("predict", "seed"): (CertifyConfig, "seed"),
    ("quantize", "calib_images"): (QuantizeConfig, "calibration_images"),
    ("quantize", "calib_seed"): (QuantizeConfig, "seed"),
    ("quantize", "act_clip"): (QuantizeConfig, "act_clip"),
    ("quantize", "finetune_images"): (FinetuneConfig, "images"),
    ("quantize", "lr"): (FinetuneConfig, "lr"),
    ("quantize", "batch_size"): (FinetuneConfig, "batch"),
    ("quantize", "seed"): (FinetuneConfig, "seed"),
}


def _command(name: str):
    group = typer.main.get_command(app)
    return group.commands[name]


def test_options_take_their_defaults_from_the_dataclasses():
    for (command, param), (schema, field) in BOUND.items():
        option = next(p for p in _command(command).params if p.name == param)
        expected = {f.name: f.default for f in dataclasses.fields(schema)}[field]
        assert option.default == expected, f"certquant {command} --{param}: {option.default!r} != {expected!r}"
        if command != "predict":  # PREDICT's n and alpha mean something else (no pA bound): its own help
            assert field_docs(schema)[field] in (option.help or ""), f"certquant {command} --{param} has its own help"


@pytest.mark.parametrize("command", ["run", "search"])
def test_config_commands_have_no_options_of_their_own_for_config_fields(command):
    names = {p.name for p in _command(command).params}
    assert names == {"overrides", "config", "out", "resume", "progress"}


@pytest.mark.parametrize("command", [["run"], ["search"], ["config", "show"]])
def test_help_lists_every_field_with_its_default(command):
    result = runner.invoke(app, [*command, "--help"], terminal_width=80)
    assert result.exit_code == 0
    for key, default, doc in iter_fields(RunConfig):
        shown = yaml.safe_dump(default, default_flow_style=True).strip().removesuffix("...").strip()
        assert f"{key}={shown}" in result.output, key
        assert doc.split()[0] in result.output


@pytest.mark.parametrize("command", ["run", "search", "certify", "quantize", "train", "config"])
def test_help_is_readable_at_80_columns(command):
    """Every line fits 80 columns and wraps between words (rich's option tables cut text mid-word there)."""
    result = runner.invoke(app, [command, "--help"], terminal_width=80, env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert not any(ch in result.output for ch in "│╭╰")  # plain help, no boxes


def test_config_show_resolves_defaults_file_and_overrides(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("certify:\n  n: 1000\nsearch:\n  episodes: 7\n")
    result = runner.invoke(app, ["config", "show", "--config", str(config), "search.n_p=77", "search.methods=[arq]"])
    assert result.exit_code == 0, result.output
    shown = yaml.safe_load(result.output)
    assert shown["certify"]["n"] == 1000 and shown["search"]["episodes"] == 7 and shown["search"]["n_p"] == 77
    assert shown["search"]["methods"] == ["arq"] and shown["certify"]["n0"] == CertifyConfig().n0
    assert load_config(None, ["search.n_p=77"]).search.n_p == 77
    # what config show prints is a config file that gives the same config back
    again = tmp_path / "again.yaml"
    again.write_text(result.output)
    assert load_config(again) == load_config(config, ["search.n_p=77", "search.methods=[arq]"])


@pytest.mark.parametrize(
    "override,fragment",
    [
        ("search.n_q=3", "unknown config key 'search.n_q'; known keys here: search.estimator"),
        ("certify.n=lots", "could not be converted to Integer"),
        ("certify.alpha=2", "alpha must be in (0, 1)"),
        ("search.estimator=magic", "unknown ACR estimator 'magic'"),
        ("search.agent.tau=0", "tau must be in (0, 1]"),
        ("quantize.act_clip=best", "act_clip must be one of"),
        ("finetune.lr=-1", "finetune lr must be > 0"),
    ],
)
def test_bad_overrides_one_line(override, fragment):
    assert_one_line_error(runner.invoke(app, ["config", "show", override]), fragment)


def test_configs_are_frozen():
    cfg = load_config(None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.search.n_p = 5  # type: ignore[misc]
