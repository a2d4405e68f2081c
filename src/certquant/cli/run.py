"""``certquant run`` (the main job end to end) and ``certquant report`` (rebuild a run's report from its files)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from certquant.pipeline.config import load_config
from certquant.pipeline.run import run_pipeline
from certquant.report.run_report import summary_table, write_report

DEFAULT_OUT = Path("runs/default")


def run_cmd(
    config: Optional[Path] = typer.Option(None, help="YAML config (default: configs/default.yaml's values, built in)"),
    out: Path = typer.Option(DEFAULT_OUT, help="run folder"),
    resume: bool = typer.Option(False, help="continue the run in --out at the stage and image where it stopped"),
    progress: bool = typer.Option(True, help="show progress bars"),
) -> None:
    """Certify full precision, search each method under each budget, fine-tune, certify, and write the report."""
    cfg = load_config(config)
    results = run_pipeline(cfg, out, resume=resume, progress=progress)
    typer.echo(summary_table(results))
    typer.echo(f"\nwrote {out / 'report.md'}, {out / 'report.html'}, {out / 'results.json'} and the PNG plots")


def report_cmd(run_dir: Path = typer.Argument(..., help="the --out folder of 'certquant run'")) -> None:
    """Rebuild results.json, report.md, report.html and the plots of a run folder from its files."""
    results = write_report(run_dir)
    typer.echo(summary_table(results))
