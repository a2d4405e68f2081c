"""The certificate card an exported ONNX file carries in its metadata (key ``certquant.card``).

The card states what was certified for exactly this graph: the smoothing parameters (sigma, n0, n, alpha, seed), the
dataset and the test indices, clean accuracy, certified accuracy at each radius, ACR, abstain rate, the policy and
its BitOPs, and ``graph_sha256``: the sha256 of the model serialized without the card. ``check_card`` recomputes that
hash, so a graph edited after certification (weights, scales, ops, other metadata) no longer matches its card.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

from certquant.deploy.deps import require
from certquant.utils.errors import CertquantError
from certquant.utils.io import atomic_write_bytes
from certquant.utils.provenance import software_versions

CARD_KEY = "certquant.card"
CARD_FORMAT = "certquant-card"
CARD_VERSION = 1


def graph_sha256(proto: Any) -> str:
    """sha256 of the model's deterministic serialization with the card removed (graph, opsets, other metadata)."""
    bare = copy.deepcopy(proto)
    kept = [p for p in bare.metadata_props if p.key != CARD_KEY]
    del bare.metadata_props[:]
    bare.metadata_props.extend(kept)
    return hashlib.sha256(bare.SerializeToString(deterministic=True)).hexdigest()


def make_card(summary: dict[str, Any], info: dict[str, Any], digest: str) -> dict[str, Any]:
    """The card of a certify run ``summary`` (``certify_dataset``'s summary.json) of the graph with hash ``digest``;
    ``info`` is the file's ``certquant.info`` (dataset, policy, cost)."""
    args = summary.get("arguments") or {}
    missing = [k for k in ("sigma", "n0", "n", "alpha") if k not in args]
    if missing or "indices" not in summary:
        raise CertquantError(
            f"the certify summary lacks {', '.join(missing or ['indices'])}: give the summary.json of "
            "a 'certquant certify' run of this file"
        )
    certified = summary.get("checkpoint_sha256")
    if certified is not None and certified != digest:
        raise CertquantError(
            f"the certify run certified graph {certified[:12]}, this file's graph is {digest[:12]}: "
            "certify this file, then write its card"
        )
    return {
        "format": CARD_FORMAT,
        "version": CARD_VERSION,
        "graph_sha256": digest,
        "dataset": args.get("dataset") or info.get("dataset"),
        "test_indices": list(summary["indices"]),
        "sigma": float(args["sigma"]),
        "n0": int(args["n0"]),
        "n": int(args["n"]),
        "alpha": float(args["alpha"]),
        "seed": args.get("seed"),
        "batch": args.get("batch", args.get("batch_size")),
        "num_images": summary.get("num_images"),
        "clean_accuracy": summary.get("clean_accuracy"),
        "acr": summary.get("acr"),
        "certified_accuracy": summary.get("certified_accuracy"),
        "abstain_rate": summary.get("abstain_rate"),
        "policy": info.get("policy"),
        "bitops_fraction": (info.get("cost") or {}).get("bitops_fraction"),
        "export": {k: v for k, v in (info.get("export") or {}).items() if k != "layers"},
        "certified": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "software": software_versions(),
    }


def write_card(path: str | os.PathLike, summary: dict[str, Any] | str | os.PathLike) -> dict[str, Any]:
    """Write the card of a certify run (its summary dict or summary.json path) into the ONNX file, atomically."""
    from certquant.deploy.runtime import load_proto, read_info

    if isinstance(summary, dict):
        data = summary
    else:
        summary_path = Path(summary)
        if summary_path.is_dir():
            summary_path = summary_path / "summary.json"
        if not summary_path.is_file():
            raise CertquantError(f"'{summary_path}' not found: give a 'certquant certify' run folder of this file")
        data = json.loads(summary_path.read_text())
    onnx = require("onnx")
    proto = load_proto(path)
    card = make_card(data, read_info(proto), graph_sha256(proto))
    props = {p.key: p.value for p in proto.metadata_props}
    props[CARD_KEY] = json.dumps(card, sort_keys=True)
    onnx.helper.set_model_props(proto, props)
    atomic_write_bytes(path, proto.SerializeToString())
    return card


def check_card(path: str | os.PathLike) -> tuple[dict[str, Any] | None, str, bool]:
    """``(card or None, the graph's current sha256, whether it equals the card's)``."""
    from certquant.deploy.runtime import load_proto

    proto = load_proto(path)
    digest = graph_sha256(proto)
    card: dict[str, Any] | None = None
    for prop in proto.metadata_props:
        if prop.key == CARD_KEY:
            try:
                card = json.loads(prop.value)
            except json.JSONDecodeError:
                raise CertquantError(f"the certificate card of '{path}' is corrupt") from None
    return card, digest, card is not None and card.get("graph_sha256") == digest


def format_card(card: dict[str, Any] | None, digest: str, matches: bool) -> str:
    """The card as text, ending with the verdict on the graph hash."""
    if card is None:
        return f"no certificate card (graph sha256 {digest}): certify the file, then 'certquant card FILE --from RUN'"
    accs = ", ".join(f"r={r}: {a:.3f}" for r, a in (card.get("certified_accuracy") or {}).items())
    policy = card.get("policy") or {}
    lines = [
        f"certificate card ({card.get('certified', '?')})",
        f"  dataset {card.get('dataset')}, {card.get('num_images')} test images "
        f"(indices {_indices(card.get('test_indices') or [])})",
        f"  sigma {card.get('sigma')}, n0 {card.get('n0')}, n {card.get('n')}, alpha {card.get('alpha')}, "
        f"seed {card.get('seed')}",
        f"  clean accuracy {card.get('clean_accuracy'):.4f}, ACR {card.get('acr'):.4f}, "
        f"abstain {card.get('abstain_rate'):.3f}",
        f"  certified accuracy {accs}",
    ]
    if policy:
        fraction = card.get("bitops_fraction")
        bits = ", ".join(f"{layer['name']} W{layer['w_bits']}A{layer['a_bits']}" for layer in policy.get("layers", []))
        lines.append(f"  policy: {bits}" + (f" ({100 * fraction:.3f}% of FP32 BitOPs)" if fraction else ""))
    lines.append(f"  graph sha256 {digest}")
    lines.append(
        "  graph MATCHES the certified hash"
        if matches
        else f"  graph DOES NOT MATCH the certified hash {card.get('graph_sha256')}: the file changed after certification"
    )
    return "\n".join(lines)


def _indices(indices: list[int]) -> str:
    if len(indices) <= 6:
        return ", ".join(map(str, indices))
    step = indices[1] - indices[0]
    regular = all(b - a == step for a, b in zip(indices, indices[1:]))
    return f"{indices[0]}..{indices[-1]} every {step}" if regular else f"{indices[0]}, {indices[1]}, ..., {indices[-1]}"
