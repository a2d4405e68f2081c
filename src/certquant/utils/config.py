"""Typed configs: frozen dataclasses are the schema, YAML files and dotted ``key=value`` overrides are merged into them
with OmegaConf's structured configs (type-checked, unknown keys refused), and ``__post_init__`` validates each one.

Every field documents itself with an attribute docstring (a string literal right below it, as in cleanrl's
``Args``); ``field_docs`` reads them, so ``--help`` and ``certquant config show`` print each field with its default
and its meaning from the one place it is written.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any, TypeVar

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from certquant.utils.errors import CertquantError, short_reason
from certquant.utils.paths import read_input_text

T = TypeVar("T")


# -- reading a schema --------------------------------------------------------------------------------------------


@cache
def field_docs(cls: type) -> dict[str, str]:
    """The attribute docstrings of a dataclass (and of its bases): ``{field name: first paragraph}``."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass) or klass is object:
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for stmt, nxt in zip(body, body[1:]):
            if (
                isinstance(stmt, ast.AnnAssign)
                and isinstance(stmt.target, ast.Name)
                and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)
            ):
                docs[stmt.target.id] = " ".join(nxt.value.value.split())
    return docs


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def iter_fields(cls: type, prefix: str = "") -> Iterator[tuple[str, Any, str]]:
    """Every leaf field of a (nested) dataclass schema: (dotted key, default, doc)."""
    docs = field_docs(cls)
    for f in dataclasses.fields(cls):
        default = _default(f)
        if dataclasses.is_dataclass(default):
            yield from iter_fields(type(default), f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", default, docs.get(f.name, "")


def schema_help(cls: type, width: int = 78) -> str:
    """Every field of ``cls`` with its default and meaning, wrapped at ``width`` columns (for ``--help``)."""
    lines = []
    for key, default, doc in iter_fields(cls):
        shown = (
            "(required)"
            if default is dataclasses.MISSING
            else yaml.safe_dump(default, default_flow_style=True, width=1000).strip()
        )
        shown = shown.removesuffix("\n...").removesuffix(" ...").strip()
        lines.append(f"{key}={shown}")
        lines.extend(textwrap.wrap(doc, width=width, initial_indent="    ", subsequent_indent="    "))
    return "\n".join(lines)


# -- building a config -------------------------------------------------------------------------------------------


def _one_line(exc: OmegaConfBaseException) -> str:
    """OmegaConf's message, first line, with its key; without its 'full_key/object_type' trailer."""
    text = str(exc).splitlines()[0].strip()
    key = getattr(exc, "full_key", None)
    return f"{text} (key '{key}')" if key and key not in text else text


def build_config(schema: type[T], sources: list[dict[str, Any]] | None = None, overrides: list[str] | None = None) -> T:
    """``schema``'s defaults, then each mapping of ``sources`` (e.g. a YAML file's), then dotted ``key=value``
    ``overrides``, merged type-checked; returns a validated instance of ``schema``. One-line errors."""
    try:
        merged: Any = OmegaConf.structured(schema)
        for source in sources or []:
            merged = OmegaConf.merge(merged, source)
        if overrides:
            merged = OmegaConf.merge(merged, OmegaConf.from_dotlist(list(overrides)))
        result = OmegaConf.to_object(merged)
    except ConfigKeyError as exc:
        key = str(getattr(exc, "full_key", "") or "")
        parent = key.rpartition(".")[0]
        known = [k for k, _, _ in iter_fields(schema) if k.rpartition(".")[0] == parent]
        raise CertquantError(f"unknown config key '{key}'; known keys here: {', '.join(known)}") from None
    except OmegaConfBaseException as exc:
        raise CertquantError(f"config: {_one_line(exc)}") from None
    assert isinstance(result, schema)
    return result


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML config file as a mapping, with one-line errors for a missing, unreadable or non-mapping file."""
    text = read_input_text(path, "config", "pass --config with an existing YAML file (see configs/)")
    try:
        values = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise CertquantError(f"config '{path}' is not valid YAML: {short_reason(exc, 160)}") from None
    if not isinstance(values, dict):
        raise CertquantError(f"config '{path}' must be a mapping of keys to values, got {type(values).__name__}")
    return values


def load_config(schema: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """``schema`` from its defaults, the YAML file ``path`` (optional) and dotted ``overrides``."""
    return build_config(schema, [read_yaml(path)] if path is not None else [], overrides)


def to_dict(cfg: Any) -> dict[str, Any]:
    """A config as plain data (JSON / YAML serializable)."""
    return dataclasses.asdict(cfg)


def to_yaml(cfg: Any) -> str:
    """A config as YAML, keys in schema order."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, default_flow_style=None)


def check(condition: bool, message: str) -> None:
    """``__post_init__``'s one validation step: raise ``CertquantError(message)`` unless ``condition``."""
    if not condition:
        raise CertquantError(message)


def check_sigma(sigma: float | None) -> None:
    """The one rule for a noise level, used by every layer: sigma > 0 in [0, 1] pixel units (None: a checkpoint's
    own sigma)."""
    check(sigma is None or sigma > 0, f"sigma must be > 0 (noise std in [0,1] pixel units), got {sigma}")
