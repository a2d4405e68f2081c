"""What every command shares: the error-handling command group."""

from __future__ import annotations

import typer
from typer.core import TyperGroup

from certquant.utils.errors import CertquantError


class CertquantGroup(TyperGroup):
    """Turns a ``CertquantError`` anywhere below into ``error: <message>`` on stderr and exit status 2."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except CertquantError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None


def new_app(help_text: str) -> typer.Typer:
    """A Typer app (or sub-app) that reports ``CertquantError`` as one line."""
    return typer.Typer(cls=CertquantGroup, help=help_text, no_args_is_help=True, add_completion=False,
                       pretty_exceptions_enable=False, context_settings={"help_option_names": ["-h", "--help"]})
