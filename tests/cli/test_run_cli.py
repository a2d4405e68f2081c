"""`certquant run` refuses bad configs with one line, before any work."""

from cli_helpers import assert_one_line_error
from typer.testing import CliRunner

from certquant.cli.main import app

runner = CliRunner()


def test_unknown_key_missing_checkpoint_missing_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("certify:\n  n: 100\n  sample_count: 5\n")
    assert_one_line_error(
        runner.invoke(app, ["run", "--config", str(bad)]), "unknown config key 'certify.sample_count'"
    )
    missing = tmp_path / "missing.yaml"
    missing.write_text("checkpoint: /nowhere/model.pt\n")
    assert_one_line_error(
        runner.invoke(app, ["run", "--config", str(missing), "--out", str(tmp_path / "o")]),
        "checkpoint '/nowhere/model.pt' not found",
    )
    assert_one_line_error(runner.invoke(app, ["run", "--config", str(tmp_path / "absent.yaml")]), "not found")


def test_budget_no_policy_can_meet_is_refused_before_certifying(tmp_path):
    tight = tmp_path / "tight.yaml"
    tight.write_text("checkpoint: small-cnn-fmnist-s0.25\nsearch:\n  budgets: [0.001]\n")
    assert_one_line_error(runner.invoke(app, ["run", "--config", str(tight), "--out", str(tmp_path / "t")]), "budget")
    assert not (tmp_path / "t" / "fp32").exists()
    assert not (tmp_path / "t" / "run.json").exists()  # nothing written: the corrected command can use --out
    negative = tmp_path / "negative.yaml"
    negative.write_text("search:\n  budgets: [-0.5]\n")
    assert_one_line_error(runner.invoke(app, ["run", "--config", str(negative)]), "budget -0.5")
