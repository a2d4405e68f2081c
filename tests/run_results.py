"""Comparing two runs of the same work: their result files without the fields that differ between runs."""

from __future__ import annotations

from typing import Any


def without(value: Any, timing_keys: tuple[str, ...], path_keys: set[str]) -> Any:
    """``value`` (parsed JSON) without keys in ``path_keys`` or containing one of ``timing_keys``, at every depth."""
    if isinstance(value, dict):
        return {
            k: without(v, timing_keys, path_keys)
            for k, v in value.items()
            if k not in path_keys and not any(t in k for t in timing_keys)
        }
    if isinstance(value, list):
        return [without(v, timing_keys, path_keys) for v in value]
    return value
