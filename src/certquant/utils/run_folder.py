"""One run folder protocol for every command that writes results (certify, IRS, search, training, fine-tuning, the
pipeline): an identity file written when work starts, atomic writes, fsynced JSONL appends, and the resume check.

``claim(resume)`` is the only place a folder is taken: a folder holding a run is refused without ``resume``, and with
``resume`` unless its identity (every argument that changes results) is the same, named key by key. Nothing is
written before ``claim``, so a command refused while validating its input leaves ``--out`` untouched.
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Any

from certquant.utils.errors import CertquantError
from certquant.utils.io import append_jsonl, atomic_torch_save, atomic_write_json, atomic_write_text, read_jsonl
from certquant.utils.provenance import software_versions
from certquant.utils.threads import machine_info

IDENTITY_FILE = "run.json"


def _plain(value: Any) -> Any:
    """``value`` as JSON would read it back (tuples become lists, keys strings), so identities compare equal."""
    return json.loads(json.dumps(value))


def identity_diff(saved: dict[str, Any], now: dict[str, Any], prefix: str = "") -> list[str]:
    """``key: X there, Y now`` for every leaf that differs between two identities."""
    out = []
    for key in sorted(set(saved) | set(now), key=str):
        a, b = saved.get(key), now.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out.extend(identity_diff(a, b, f"{prefix}{key}."))
        elif a != b:
            shown = [repr(v) if len(repr(v)) < 60 else repr(v)[:57] + "..." for v in (a, b)]
            out.append(f"{prefix}{key}: {shown[0]} there, {shown[1]} now")
    return out


class RunFolder:
    """A run's folder: ``claim`` it, then write through it (``write_json``, ``append``, ``save_torch``)."""

    def __init__(self, path: str | Path, kind: str, identity: dict[str, Any]):
        self.path, self.kind, self.identity = Path(path), kind, _plain(identity)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    @property
    def claimed(self) -> bool:
        """Whether the folder holds a run (an identity file)."""
        return (self.path / IDENTITY_FILE).is_file()

    def saved_identity(self) -> dict[str, Any]:
        path = self.path / IDENTITY_FILE
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return dict(data["identity"])
        except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError):
            raise CertquantError(f"{path} is corrupt: delete the folder {self.path} or choose another --out") from None

    def claim(self, resume: bool) -> bool:
        """Take the folder for this run; returns True when it continues an earlier run of the same identity."""
        if self.claimed:
            saved = self.saved_identity()
            if not resume:
                raise CertquantError(
                    f"{self.path} already holds a {saved.get('kind', 'run')} run: pass --resume to "
                    "continue it or choose another --out"
                )
            diff = identity_diff(saved, {"kind": self.kind, **self.identity})
            if diff:
                raise CertquantError(
                    f"{self.path} holds a run made with other settings ({'; '.join(diff[:4])}"
                    f"{'; ...' if len(diff) > 4 else ''}): resume with the same settings or choose "
                    "another --out"
                )
            return True
        if self.path.is_dir() and any(p.name != IDENTITY_FILE for p in self.path.iterdir()) and not resume:
            raise CertquantError(f"{self.path} is not empty and holds no run: choose another --out")
        atomic_write_json(
            self.path / IDENTITY_FILE,
            {
                "identity": {"kind": self.kind, **self.identity},
                "software": software_versions(),
                "machine": machine_info(),
                "created": datetime.datetime.now().isoformat(timespec="seconds"),
            },
        )
        return False

    # -- writing and reading ---------------------------------------------------------------------------------------

    def write_json(self, name: str, obj: Any) -> Path:
        atomic_write_json(self.path / name, obj)
        return self.path / name

    def write_text(self, name: str, text: str) -> Path:
        atomic_write_text(self.path / name, text)
        return self.path / name

    def save_torch(self, name: str, obj: Any) -> Path:
        atomic_torch_save(obj, self.path / name)
        return self.path / name

    def read_json(self, name: str) -> Any:
        return json.loads((self.path / name).read_text(encoding="utf-8"))

    def append(self, name: str, record: dict[str, Any]) -> None:
        """Append one fsynced JSON line: a finished record survives a kill."""
        append_jsonl(self.path / name, record)

    def records(self, name: str, keep: int | None = None) -> list[dict[str, Any]]:
        """The complete records of a JSONL file; a torn last line (a kill mid-write) is cut from the file, and with
        ``keep`` only the first ``keep`` records stay (those a saved state knows about)."""
        path = self.path / name
        if not path.exists():
            return []
        data = path.read_bytes()
        records = list(read_jsonl(path))
        if keep is not None and len(records) > keep:
            records = records[:keep]
        elif data.endswith(b"\n") or not data:
            return records
        atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in records))
        return records
