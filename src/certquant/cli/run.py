"""``certquant run`` (the main job end to end), ``certquant search`` (its searches alone), ``certquant report``
(rebuild a run's report) and ``certquant config show`` (the resolved config): all read one ``RunConfig``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from certquant.cli.common import build, config_option, fields_epilog, new_app, overrides_argument
from certquant.pipeline.config import RunConfig
from certquant.pipeline.run import Pipeline, stage_folder
from certquant.quant import format_cost_table
from certquant.report.run_report import summary_table, write_report
from certquant.search.runner import BEST_FILE
from certquant.search.selection import FINAL_POLICY_FILE
from certquant.utils.config import to_yaml

DEFAULT_OUT = Path("runs/default")
EPILOG = fields_epilog(RunConfig)

config_app = new_app("Configs: show the resolved config of run and search.")


def run_cmd(
    overrides: Optional[list[str]] = overrides_argument(),
    config: Optional[Path] = config_option(),
    out: Path = typer.Option(DEFAULT_OUT, help="run folder"),
    resume: bool = typer.Option(False, help="continue the run in --out at the stage and image where it stopped"),
    progress: bool = typer.Option(True, help="show progress bars"),
) -> None:
    """Certify full precision, search each method under each budget, fine-tune, certify, and write the report.
    With engine.engine=ray (a KEY=VALUE override or the config's engine section) the stages run as Ray tasks in
    dependency order, engine.workers at a time."""
    cfg = build(RunConfig, config, overrides)
    results = Pipeline(cfg, out, resume=resume, progress=progress).run()
    typer.echo(summary_table(results))
    typer.echo(f"\nwrote {out / 'report.md'}, {out / 'report.html'}, {out / 'results.json'} and the PNG plots")


def search_cmd(
    overrides: Optional[list[str]] = overrides_argument(),
    config: Optional[Path] = config_option(),
    out: Path = typer.Option(Path("runs/search"), help="run folder (the layout of certquant run)"),
    resume: bool = typer.Option(False, help="continue the searches in --out exactly where they stopped"),
    progress: bool = typer.Option(True, help="show progress bars"),
) -> None:
    """Search per-layer bit-widths under each budget with each method (the searches of 'certquant run', alone)."""
    cfg = build(RunConfig, config, overrides)
    pipeline = Pipeline(cfg, out, resume=resume, progress=progress)
    for (budget, method), policy in pipeline.search_only().items():
        folder = out / stage_folder(budget, method) / "search"
        typer.echo(f"\n{method} at budget {budget:g}:")
        typer.echo(format_cost_table(pipeline.search_layers(), policy))
        if cfg.search.has_final_selection(method):
            policy.save(folder / FINAL_POLICY_FILE)
            fallback = " and uniform bits" if cfg.search.final_uniform_fallback else ""
            typer.echo(
                f"final selection (top {cfg.search.final_top_k}{fallback} on {cfg.search.final_images} fresh images): "
                f"{folder / FINAL_POLICY_FILE}"
            )
        typer.echo(f"best policy of the search: {folder / BEST_FILE} (use: certquant quantize --policy)")


def config_show_cmd(
    overrides: Optional[list[str]] = overrides_argument(),
    config: Optional[Path] = config_option(),
) -> None:
    """Print the fully resolved config (defaults, then --config, then KEY=VALUE overrides) as YAML."""
    typer.echo(to_yaml(build(RunConfig, config, overrides)), nl=False)


def report_cmd(run_dir: Path = typer.Argument(..., help="the --out folder of 'certquant run'")) -> None:
    """Rebuild results.json, report.md, report.html and the plots of a run folder from its files."""
    results = write_report(run_dir)
    typer.echo(summary_table(results))
