"""A mixed-precision policy (SPEC §4): (w_bits, a_bits) for every quantizable layer, keyed by the layer's qualified
module name, in forward order; 32 means "not quantized".

Policies are data: a JSON file holding the architecture name and the layer names, so that a policy made for one
architecture is refused by another instead of being applied to whatever layers happen to share names.
"""

from __future__ import annotations

import json
import numbers
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from certquant.quant.layers import LayerInfo
from certquant.utils.errors import CertquantError
from certquant.utils.io import atomic_write_json
from certquant.utils.paths import read_input_text

POLICY_FORMAT = "certquant-policy"
POLICY_VERSION = 1
MIN_BITS, MAX_BITS = 1, 32
FULL_PRECISION = 32  # a layer at 32 bits is left unquantized


def _check_bits(name: str, w_bits: Any, a_bits: Any) -> tuple[int, int]:
    for label, value in (("weight", w_bits), ("activation", a_bits)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not MIN_BITS <= int(value) <= MAX_BITS:
            raise CertquantError(
                f"layer '{name}': {label} bits must be an integer in [{MIN_BITS}, {MAX_BITS}], got {value!r}"
            )
    return int(w_bits), int(a_bits)


class Policy:
    """Per-layer (w_bits, a_bits), ordered as the layers run. ``arch`` names the architecture it was made for (None:
    any architecture with these layer names)."""

    def __init__(
        self, bits: Mapping[str, Sequence[int]], arch: str | None = None, meta: Mapping[str, Any] | None = None
    ):
        if not bits:
            raise CertquantError("a policy needs at least one layer")
        self._bits: dict[str, tuple[int, int]] = {}
        for name, pair in bits.items():
            if not isinstance(pair, (list, tuple)) or len(pair) != 2:
                raise CertquantError(f"layer '{name}': bits must be a pair (w_bits, a_bits), got {pair!r}")
            self._bits[str(name)] = _check_bits(str(name), pair[0], pair[1])
        self.arch = arch
        self.meta: dict[str, Any] = dict(meta or {})  # free-form provenance (search reward, budget, ...)

    # construction ----------------------------------------------------------------------------------------------
    @classmethod
    def uniform(
        cls,
        layers: Sequence[LayerInfo],
        w_bits: int,
        a_bits: int | None = None,
        arch: str | None = None,
        first_last_bits: int | None = None,
    ) -> Policy:
        """Every layer at (w_bits, a_bits) (a_bits defaults to w_bits). ``first_last_bits`` pins the first and the last
        layer at that width for weights and activations (HAQ's convention: 8)."""
        a_bits = w_bits if a_bits is None else a_bits
        bits = {layer.name: (w_bits, a_bits) for layer in layers}
        if first_last_bits is not None and layers:
            for layer in (layers[0], layers[-1]):
                bits[layer.name] = (first_last_bits, first_last_bits)
        return cls(bits, arch=arch, meta={"uniform": [w_bits, a_bits], "first_last_bits": first_last_bits})

    @classmethod
    def from_lists(
        cls,
        layers: Sequence[LayerInfo] | Sequence[str],
        w_bits: Sequence[int],
        a_bits: Sequence[int],
        arch: str | None = None,
    ) -> Policy:
        """A policy from per-layer lists in forward order (the search's actions)."""
        names = [layer if isinstance(layer, str) else layer.name for layer in layers]
        if not len(names) == len(w_bits) == len(a_bits):
            raise CertquantError(
                f"{len(names)} layers but {len(w_bits)} weight and {len(a_bits)} activation bit-widths"
            )
        return cls({n: (w, a) for n, w, a in zip(names, w_bits, a_bits)}, arch=arch)

    # access ----------------------------------------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        return list(self._bits)

    @property
    def w_bits(self) -> list[int]:
        return [w for w, _ in self._bits.values()]

    @property
    def a_bits(self) -> list[int]:
        return [a for _, a in self._bits.values()]

    def bits(self, name: str) -> tuple[int, int]:
        """(w_bits, a_bits) of layer ``name``."""
        if name not in self._bits:
            raise CertquantError(f"the policy has no layer '{name}'")
        return self._bits[name]

    def items(self) -> Iterable[tuple[str, tuple[int, int]]]:
        return self._bits.items()

    def unquantized(self) -> list[str]:
        """Layers whose weights or activations stay at 32 bits (SPEC §8: never leave one silently)."""
        return [n for n, (w, a) in self._bits.items() if w == FULL_PRECISION or a == FULL_PRECISION]

    def __len__(self) -> int:
        return len(self._bits)

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Policy)
            and list(self._bits.items()) == list(other._bits.items())
            and self.arch == other.arch
        )

    def __repr__(self) -> str:
        return f"Policy(arch={self.arch!r}, layers={len(self)}, bits={list(self._bits.values())})"

    # checks ----------------------------------------------------------------------------------------------------
    def validate(self, layers: Sequence[LayerInfo], arch: str | None = None) -> None:
        """Refuse a policy that does not fit ``layers`` (of architecture ``arch``): another architecture, bits outside
        [1, 32], layer names the model does not have, or layers it leaves out. Raises a one-line CertquantError."""
        if arch is not None and self.arch is not None and arch != self.arch:
            raise CertquantError(
                f"the policy was made for architecture '{self.arch}', not '{arch}': use a policy for {arch}"
            )
        for name, (w, a) in self._bits.items():
            _check_bits(name, w, a)
        model_names = [layer.name for layer in layers]
        unknown = [n for n in self._bits if n not in set(model_names)]
        missing = [n for n in model_names if n not in self._bits]
        where = f"'{arch}'" if arch else "the model"
        if unknown:
            raise CertquantError(
                f"the policy names {len(unknown)} layer(s) that {where} does not have "
                f"({', '.join(unknown[:3])}{', ...' if len(unknown) > 3 else ''}): it was made for another model"
            )
        if missing:
            raise CertquantError(
                f"the policy gives no bits for {len(missing)} layer(s) of {where} "
                f"({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}): give every layer (32 = unquantized)"
            )

    # JSON ------------------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": POLICY_FORMAT,
            "version": POLICY_VERSION,
            "arch": self.arch,
            "layers": [{"name": n, "w_bits": w, "a_bits": a} for n, (w, a) in self._bits.items()],
            "meta": self.meta,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Policy:
        if not isinstance(data, Mapping) or data.get("format") != POLICY_FORMAT:
            raise CertquantError(f"not a certquant policy (no '{POLICY_FORMAT}' header)")
        if int(data.get("version", 0)) > POLICY_VERSION:
            raise CertquantError(f"policy format version {data['version']} is newer than this certquant: upgrade it")
        layers = data.get("layers")
        if not isinstance(layers, list):
            raise CertquantError("policy has no 'layers' list")
        bits: dict[str, tuple[int, int]] = {}
        for entry in layers:
            if not isinstance(entry, Mapping) or not {"name", "w_bits", "a_bits"} <= set(entry):
                raise CertquantError(f"policy layer entry {entry!r} needs name, w_bits and a_bits")
            if entry["name"] in bits:
                raise CertquantError(f"policy names layer '{entry['name']}' twice")
            bits[entry["name"]] = (entry["w_bits"], entry["a_bits"])
        return cls(bits, arch=data.get("arch"), meta=data.get("meta") or {})

    @classmethod
    def from_json(cls, text: str | Mapping[str, Any]) -> Policy:
        """Inverse of ``to_json`` (also takes the already-parsed dict)."""
        if isinstance(text, Mapping):
            return cls.from_dict(text)
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise CertquantError(f"policy is not valid JSON ({exc.msg} at line {exc.lineno})") from None
        return cls.from_dict(data)

    def save(self, path: str | os.PathLike[str]) -> Path:
        atomic_write_json(path, self.to_dict())
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Policy:
        text = read_input_text(path, "policy file", "give a policy JSON (e.g. a search's best_policy.json)")
        try:
            return cls.from_json(text)
        except CertquantError as exc:
            raise CertquantError(f"policy file '{path}': {exc}") from None

    # display ---------------------------------------------------------------------------------------------------
    def table(self, layers: Sequence[LayerInfo]) -> str:
        """The per-layer table (name, MACs, w/a bits, BitOPs, share) with totals; see ``cost.format_cost_table``."""
        from certquant.quant.cost import format_cost_table

        return format_cost_table(layers, self)
