"""What every command shares: the error-handling command group, plain help that reads well at 80 columns, and the
options of config-driven commands (``--config`` plus dotted ``KEY=VALUE`` overrides of a typed schema)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, TypeVar

import typer
from typer.core import TyperGroup

from certquant.quant.checkpoint import input_shape
from certquant.utils import config as typed
from certquant.utils.errors import CertquantError

T = TypeVar("T")

CONFIG_HELP = "YAML config: overrides of the built-in defaults (see configs/)"
OVERRIDES_HELP = "dotted overrides of config fields, e.g. search.n_p=64 certify.n=10000 (applied after --config)"


class CertquantGroup(TyperGroup):
    """Turns a ``CertquantError`` anywhere below into ``error: <message>`` on stderr and exit status 2."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except CertquantError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None


def new_app(help_text: str) -> typer.Typer:
    """A Typer app (or sub-app) that reports ``CertquantError`` as one line; plain click help (wrapped at word
    boundaries at any terminal width, where rich's option tables cut text mid-word at 80 columns)."""
    return typer.Typer(
        cls=CertquantGroup,
        help=help_text,
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
        rich_markup_mode=None,
        context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    )


def fields_epilog(schema: type) -> str:
    """The help text's list of every field of ``schema`` with its default (click leaves ``\\b`` blocks unwrapped)."""
    return "\b\nConfig fields (KEY=DEFAULT), settable in --config or as KEY=VALUE:\n" + typed.schema_help(schema, 76)


def build(schema: type[T], config: Optional[Path], overrides: list[str] | None) -> T:
    """``schema`` from its defaults, ``--config`` and the ``KEY=VALUE`` arguments; one line for a malformed one."""
    bad = [o for o in overrides or [] if "=" not in o or o.startswith("=")]
    if bad:
        raise CertquantError(f"'{bad[0]}' is not a KEY=VALUE override (e.g. search.n_p=64); see --help for the keys")
    return typed.load_config(schema, config, list(overrides or []))


def config_option() -> Any:
    return typer.Option(None, "--config", help=CONFIG_HELP)


def overrides_argument() -> Any:
    return typer.Argument(None, metavar="[KEY=VALUE]...", help=OVERRIDES_HELP, show_default=False)


def run_options(
    ctx: typer.Context, info: dict[str, Any], identity: dict[str, Any], provenance: dict[str, Any], **resolved: Any
) -> dict[str, Any]:
    """What a smoothing command passes on to its dataset run (``certquant.smoothing.runner``): the checkpoint's
    identity and provenance with the command's ``identity`` and ``provenance``, the command's options as the recorded
    arguments (named by their flags, e.g. max for --max; paths as text; ``resolved`` values, e.g. the sigma a
    checkpoint supplied, in place of the given ones), the checkpoint's input shape, and the progress, channels_last
    and resume flags."""
    p = ctx.params
    flags = {param.name: param.opts[0].lstrip("-").replace("-", "_") for param in ctx.command.params if param.opts}
    return {
        "identity": {"dataset": info["dataset"], "checkpoint_sha256": info["sha256"], **identity},
        "arguments": {flags.get(k, k): str(v) if isinstance(v, Path) else v for k, v in {**p, **resolved}.items()},
        "provenance": {"checkpoint_sha256": info["sha256"], "checkpoint_path": info["path"], **provenance},
        "input_shape": input_shape(info),
        "progress": p["progress"],
        "channels_last": p["channels_last"],
        "resume": p["resume"],
    }
