"""Small shared helpers: errors, atomic file I/O, hashing, provenance."""

from certquant.utils.errors import CertquantError
from certquant.utils.io import (
    append_jsonl,
    atomic_torch_save,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    file_sha256,
    read_jsonl,
)
from certquant.utils.provenance import software_versions

__all__ = [
    "CertquantError",
    "append_jsonl",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "atomic_torch_save",
    "file_sha256",
    "read_jsonl",
    "software_versions",
]
