"""The IRS certification cache on disk, next to a certify run (no pickle anywhere).

Layout (``RUN/irs_cache/``)::

    key.json             what the cache is valid for: checkpoint sha256 (and a fingerprint of the weights), dataset,
                         sigma, n0, n, alpha, batch size, run seed, device type, torch version; a writer with another
                         key is refused, and so is a reader expecting another one
    entries.jsonl        one record per image, appended as soon as the image is certified: index, c_A, n_A, pA_lower,
                         the image's seed, the seed of every estimation batch, the sha256 of the image's pixels, and
                         the name of its predictions file
    predictions/I.npz    f's predicted class for each of the n estimation samples of image I, uint8 (<= 256 classes)
                         or int16, compressed (numpy .npz, read with allow_pickle=False)

The predictions file is written (atomically) before its record is appended, so a record always has its file; after
a kill the image is certified again and its (identical) record appended again: the last record of an index wins.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from certquant.smoothing.core import CertificationCache
from certquant.smoothing.noise import ESTIMATION, batch_counts, batch_seed
from certquant.utils.errors import CertquantError
from certquant.utils.io import append_jsonl, atomic_write_bytes, atomic_write_json, read_jsonl
from certquant.utils.paths import check_input_path

CACHE_DIR = "irs_cache"
KEY_FILE = "key.json"
ENTRIES_FILE = "entries.jsonl"
PREDICTIONS_DIR = "predictions"
CACHE_FORMAT = "certquant-irs-cache"
CACHE_VERSION = 1

# arguments a cache must match exactly to be reused (the checkpoint is compared separately, with a better message)
ARGUMENT_KEYS = ("dataset", "sigma", "n0", "n", "alpha", "batch_size", "seed", "device")


def tensor_sha256(x: torch.Tensor) -> str:
    """sha256 of a tensor's values as contiguous CPU float32 bytes (identifies an image)."""
    return hashlib.sha256(x.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()).hexdigest()


def model_fingerprint(model: nn.Module) -> str:
    """sha256 over the names, shapes and values of a model's state_dict (identifies weights without a file)."""
    digest = hashlib.sha256()
    for name, value in model.state_dict().items():
        digest.update(name.encode())
        if isinstance(value, torch.Tensor):
            tensor = value.detach().cpu().contiguous()
            digest.update(str((tuple(tensor.shape), str(tensor.dtype))).encode())
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def cache_key(
    sigma: float,
    n0: int,
    n: int,
    alpha: float,
    batch_size: int,
    seed: int,
    device: str,
    checkpoint_sha256: str | None = None,
    model_sha256: str | None = None,
    dataset: str | None = None,
) -> dict[str, Any]:
    """The key a cache is stored under and checked against."""
    return {
        "format": CACHE_FORMAT,
        "version": CACHE_VERSION,
        "checkpoint_sha256": checkpoint_sha256,
        "model_sha256": model_sha256,
        "dataset": dataset,
        "sigma": float(sigma),
        "n0": int(n0),
        "n": int(n),
        "alpha": float(alpha),
        "batch_size": int(batch_size),
        "seed": int(seed),
        "device": str(device),
        "stage": ESTIMATION,
        "torch": torch.__version__.split("+")[0],
    }


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        try:
            return math.isclose(float(a), float(b), rel_tol=1e-12, abs_tol=1e-15)
        except (TypeError, ValueError):
            return False
    return bool(a == b)


def _cache_folder(path: str | Path) -> Path:
    """A run folder (holding irs_cache/) or the cache folder itself."""
    path = Path(path)
    return path if (path / KEY_FILE).exists() or path.name == CACHE_DIR else path / CACHE_DIR


class CacheWriter:
    """Appends image entries to a cache folder; refuses a folder holding a cache with another key."""

    def __init__(self, folder: str | Path, key: dict[str, Any]):
        self.folder = Path(folder)
        self.key = key
        path = self.folder / KEY_FILE
        if path.exists():
            previous = _read_key(path)
            diff = [k for k in sorted(set(previous) | set(key)) if not _same(previous.get(k), key.get(k))]
            if diff:
                raise CertquantError(
                    f"{self.folder} holds an IRS cache made with other arguments ({', '.join(diff)} "
                    "differ): choose another --out"
                )
        else:
            atomic_write_json(path, key)

    def add(self, index: int, cache: CertificationCache, image: torch.Tensor | None = None) -> None:
        """Store image ``index``'s entry: its predictions file first, then its record."""
        predictions = cache.predictions.detach().cpu()
        if predictions.dtype not in (torch.uint8, torch.int16) or predictions.numel() != cache.n:
            raise CertquantError(
                f"cache of image {index} holds {predictions.numel()} {predictions.dtype} predictions, "
                f"expected {cache.n} uint8 or int16"
            )
        name = f"{PREDICTIONS_DIR}/{int(index):08d}.npz"
        buffer = io.BytesIO()
        np.savez_compressed(buffer, predictions=predictions.numpy())
        atomic_write_bytes(self.folder / name, buffer.getvalue())
        append_jsonl(
            self.folder / ENTRIES_FILE,
            {
                "index": int(index),
                "c_a": cache.c_a,
                "n_a": cache.n_a,
                "pa_lower": cache.pa_lower,
                "seed": cache.seed,
                "batch_seeds": list(cache.batch_seeds),
                "dtype": str(predictions.dtype).replace("torch.", ""),
                "image_sha256": tensor_sha256(image) if image is not None else None,
                "file": name,
            },
        )


def _read_key(path: Path) -> dict[str, Any]:
    try:
        key = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        raise CertquantError(f"{path} is missing or corrupt: certify the base model again with --keep-cache") from None
    if not isinstance(key, dict) or key.get("format") != CACHE_FORMAT:
        raise CertquantError(f"{path} is not a certquant IRS cache key")
    if key.get("version") != CACHE_VERSION:
        raise CertquantError(
            f"{path} is an IRS cache of version {key.get('version')}, this certquant reads version "
            f"{CACHE_VERSION}: certify the base model again with --keep-cache"
        )
    return key


class CacheStore:
    """A cache folder opened for reading: ``key``, ``indices``, ``entry(index)`` -> ``CertificationCache``."""

    def __init__(self, folder: Path, key: dict[str, Any], records: dict[int, dict[str, Any]]):
        self.folder, self.key, self.records = folder, key, records

    @classmethod
    def open(cls, path: str | Path) -> CacheStore:
        """Open ``RUN/irs_cache`` (or the cache folder itself); one line if there is none."""
        check_input_path(path, "base run", "folder", "give the --out folder of 'certquant certify --keep-cache'")
        folder = _cache_folder(path)
        if not (folder / KEY_FILE).exists():
            raise CertquantError(
                f"{Path(path)} holds no IRS cache: certify the base model with --keep-cache "
                "(certquant certify ... --keep-cache --out RUN)"
            )
        key = _read_key(folder / KEY_FILE)
        records = {int(r["index"]): r for r in read_jsonl(folder / ENTRIES_FILE)}
        return cls(folder, key, records)

    @property
    def indices(self) -> list[int]:
        return sorted(self.records)

    def check(self, **expected: Any) -> None:
        """Refuse (one line) a cache whose key differs from ``expected`` (keys of ``cache_key``; None = don't care)."""
        if expected.get("checkpoint_sha256") and self.key.get("checkpoint_sha256") not in (
            None,
            expected["checkpoint_sha256"],
        ):
            raise CertquantError(
                f"the IRS cache in {self.folder} was made with checkpoint "
                f"{str(self.key['checkpoint_sha256'])[:12]}, not {expected['checkpoint_sha256'][:12]}: "
                "certify that model with --keep-cache"
            )
        if expected.get("model_sha256") and self.key.get("model_sha256") not in (None, expected["model_sha256"]):
            raise CertquantError(
                f"the IRS cache in {self.folder} was made with other model weights: certify that model "
                "with --keep-cache"
            )
        diff = [
            f"{k} {self.key.get(k)!r} there, {v!r} here"
            for k, v in expected.items()
            if k not in ("checkpoint_sha256", "model_sha256") and v is not None and not _same(self.key.get(k), v)
        ]
        if diff:
            raise CertquantError(
                f"the IRS cache in {self.folder} does not match ({'; '.join(diff)}): use the cache's "
                "arguments or certify the base model again with --keep-cache"
            )

    def require(self, indices: Iterable[int]) -> None:
        """Refuse (one line) images the cache does not hold."""
        missing = [i for i in indices if i not in self.records]
        if missing:
            shown = ", ".join(str(i) for i in missing[:5]) + (", ..." if len(missing) > 5 else "")
            raise CertquantError(
                f"the IRS cache in {self.folder} holds {len(self.records)} images but not image(s) "
                f"{shown}: pick images of the base run (its --skip/--max) or certify them with --keep-cache"
            )

    def image_sha256(self, index: int) -> str | None:
        self.require([index])
        return self.records[index].get("image_sha256")

    def entry(self, index: int) -> CertificationCache:
        """Image ``index``'s cache (predictions read from its .npz; its batch seeds checked against the seed scheme)."""
        self.require([index])
        record, key = self.records[index], self.key
        path = self.folder / record["file"]
        try:
            with np.load(path, allow_pickle=False) as data:
                predictions = torch.from_numpy(np.array(data["predictions"]))
        except (OSError, KeyError, ValueError):
            raise CertquantError(
                f"{path} is missing or corrupt: certify image {index} again with --keep-cache"
            ) from None
        n, batch_size, seed = int(key["n"]), int(key["batch_size"]), int(record["seed"])
        seeds = [batch_seed(seed, int(key["stage"]), b) for b in range(len(batch_counts(n, batch_size)))]
        if predictions.numel() != n or [int(s) for s in record["batch_seeds"]] != seeds:
            raise CertquantError(
                f"the IRS cache entry of image {index} in {self.folder} does not fit its key "
                "(sample count or noise seeds differ): certify the base model again with --keep-cache"
            )
        return CertificationCache(
            c_a=int(record["c_a"]),
            n_a=int(record["n_a"]),
            pa_lower=float(record["pa_lower"]),
            n=n,
            sigma=float(key["sigma"]),
            alpha=float(key["alpha"]),
            seed=seed,
            stage=int(key["stage"]),
            batch_size=batch_size,
            batch_seeds=seeds,
            device=str(key["device"]),
            predictions=predictions,
        )
