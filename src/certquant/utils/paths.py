"""The one check every input path a user gives goes through before anything reads it.

A user who passes ``/etc/passwd`` as a checkpoint, a folder as a policy or a truncated download as a config must get
one line that names what is wrong with that path (missing, a folder, a file where a folder was expected, unreadable,
empty, binary where text was expected), never a traceback from the reader behind it. Format checks of a given kind
(e.g. ``certquant.models.checkpoint.check_checkpoint_file``) call ``check_input_path`` first and add their own.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from certquant.utils.errors import CertquantError

PathKind = Literal["file", "folder"]


def _with_hint(message: str, hint: str) -> str:
    return f"{message}: {hint}" if hint else message


def check_input_path(path: str | os.PathLike, what: str, kind: PathKind = "file", hint: str = "") -> Path:
    """``path`` as a ``Path`` if it is an existing, readable ``kind`` (a non-empty file, or a folder); else a one-line
    ``CertquantError`` "<what> '<path>' <what is wrong>: <hint>"."""
    path = Path(path)
    shown = f"{what} '{path}'"
    if not path.exists():
        raise CertquantError(_with_hint(f"{shown} not found", hint))
    if kind == "file":
        if path.is_dir():
            raise CertquantError(_with_hint(f"{shown} is a folder, not a file", hint))
        if not path.is_file():
            raise CertquantError(_with_hint(f"{shown} is not a regular file", hint))
        if not os.access(path, os.R_OK):
            raise CertquantError(_with_hint(f"{shown} cannot be read (permission denied)", hint))
        if path.stat().st_size == 0:
            raise CertquantError(_with_hint(f"{shown} is empty", hint))
    else:
        if not path.is_dir():
            raise CertquantError(_with_hint(f"{shown} is a file, not a folder", hint))
        if not os.access(path, os.R_OK | os.X_OK):
            raise CertquantError(_with_hint(f"{shown} cannot be read (permission denied)", hint))
    return path


def read_input_text(path: str | os.PathLike, what: str, hint: str = "") -> str:
    """The UTF-8 text of an input file (a config, a policy) after ``check_input_path``; a binary file is named as one."""
    path = check_input_path(path, what, "file", hint)
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise CertquantError(_with_hint(f"{what} '{path}' is a binary file, not text", hint)) from None
    if "\x00" in text:
        raise CertquantError(_with_hint(f"{what} '{path}' is a binary file, not text", hint))
    return text


def looks_like_text(head: bytes) -> bool:
    """Whether the first bytes of a file read as text (UTF-8 without NUL bytes), e.g. ``/etc/passwd``."""
    if b"\x00" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        return exc.start >= len(head) - 3  # a multi-byte character cut by the end of the sample
    return True
