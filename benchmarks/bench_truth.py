"""The truth pool (issue 18, item 1): what a search reward is ranked against.

For one model and one BitOPs budget: a pool of distinct policies that all use 85-100% of the budget (the top policies
of earlier searches when ``--search-dirs`` are given, then random actions repaired to the budget by the search's own
environment), each quantized and fine-tuned exactly as the pipeline's final stage does
(``certquant.pipeline.run.final_model``) with ``--replicates`` fine-tune seeds (the second one is the replicate
ceiling of the fidelity benchmark), then certified with full CERTIFY (the config's n0, n, alpha: 100, 10,000, 0.001
in configs/bench-search*.yaml) on held-out validation images that are neither search images nor test images: the
seeded draw of ``certquant.search.job.validation_indices`` after the search set's and the final selection's images.
The reward is chosen on this pool, so the test subset never sees that choice.

    python benchmarks/bench_truth.py --config configs/bench-search.yaml --budget 0.0125 [--policies 16]
        [--replicates 2] [--images 200] [--search-dirs DIR ...] [--top-k 4] [--work runs/bench_truth]
        [--name truth-<model>-<budget>] [--results DIR] [KEY=VALUE ...]

Resumable: one run folder per policy (``WORK/policy-NN``: run.json, model-ftS.pt, certify-ftS/), the pool itself in
``WORK/pool.json``; the same command continues where it stopped. A replicate whose certification finished is read
back without its model, so the pool's state can be kept (and committed, as ``benchmarks/state/`` is, without the
models) and resumed on another machine. Writes ``<results>/<name>.json`` and ``.md``: per
policy and replicate the final ACR, clean smoothed accuracy and certified accuracy at r = 0.25 / 0.5.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.stats import kendalltau

from certquant.data import load_dataset
from certquant.models import load_checkpoint, resolve_checkpoint
from certquant.pipeline import load_config
from certquant.pipeline.config import RunConfig
from certquant.pipeline.run import final_model
from certquant.quant import LayerInfo, Policy, bitops_fraction, quantizable_layers
from certquant.quant.checkpoint import input_shape
from certquant.search import BitWidthEnv
from certquant.search.job import validation_indices
from certquant.search.selection import top_policies
from certquant.smoothing import certify_dataset
from certquant.smoothing.metrics import certified_accuracy, counted_radius
from certquant.train import resolve_device
from certquant.utils import read_jsonl
from certquant.utils.errors import CertquantError
from certquant.utils.run_folder import RunFolder
from certquant.utils.tables import markdown_table
from common import ROOT, device_name, write_results

BAND = (0.85, 1.0)  # share of the budget every pool policy uses
RADII = (0.25, 0.5)
POOL_FILE = "pool.json"


def in_band(layers: Sequence[LayerInfo], policy: Policy, budget: float) -> bool:
    """Whether ``policy`` uses 85-100% of ``budget`` (a fraction of FP32 BitOPs)."""
    return BAND[0] <= bitops_fraction(layers, policy) / budget <= BAND[1] + 1e-12


def searched_policies(
    search_dirs: Sequence[Path], layers: Sequence[LayerInfo], top_k: int, arch: str | None
) -> list[tuple[str, Policy]]:
    """The ``top_k`` best distinct policies of each earlier search folder (its history.jsonl)."""
    out = []
    for folder in search_dirs:
        history = list(read_jsonl(Path(folder) / "history.jsonl"))
        if not history:
            raise CertquantError(f"{folder} holds no search history (history.jsonl): give a search folder")
        for line in top_policies(history, top_k):
            out.append(
                (f"{folder}#{line['episode']}", Policy.from_lists(layers, line["w_bits"], line["a_bits"], arch=arch))
            )
    return out


def draw_pool(
    env: BitWidthEnv,
    budget: float,
    count: int,
    seed: int,
    searched: Sequence[tuple[str, Policy]] = (),
    tries: int = 20_000,
) -> list[tuple[str, Policy]]:
    """``count`` distinct policies in the 85-100% band: the searched ones first (those in the band), then random
    actions repaired to the budget by ``env`` (seeded)."""
    pool: list[tuple[str, Policy]] = []
    seen: set[tuple] = set()

    def add(source: str, policy: Policy) -> None:
        key = (tuple(policy.w_bits), tuple(policy.a_bits))
        if key not in seen and in_band(env.layers, policy, budget) and len(pool) < count:
            seen.add(key)
            pool.append((source, policy))

    for source, policy in searched:
        add(source, policy)
    rng = np.random.default_rng(seed)
    for _ in range(tries):
        if len(pool) >= count:
            break
        add("random", env.policy_from_actions(rng.random(env.episode_length).tolist()))
    if len(pool) < count:
        raise CertquantError(
            f"only {len(pool)} distinct policies in 85-100% of budget {budget:g} after {tries} "
            "random draws: lower --policies"
        )
    return pool


def policy_metrics(records: list[dict]) -> dict[str, float]:
    """ACR, clean smoothed accuracy and certified accuracy at r = 0.25 / 0.5 of one certification."""
    out = {
        "acr": sum(counted_radius(r) for r in records) / len(records),
        "clean_accuracy": certified_accuracy(records, 0.0),
    }
    out.update({f"cert_acc_{r:g}": certified_accuracy(records, r) for r in RADII})
    return out


class TruthPool:
    """The pool's work folder: policies drawn once (pool.json), each policy's replicates fine-tuned and certified."""

    def __init__(
        self,
        cfg: RunConfig,
        budget: float,
        work: Path,
        count: int,
        replicates: int,
        images: int,
        search_dirs: Sequence[Path] = (),
        top_k: int = 4,
        progress: bool = True,
    ):
        if count < 2 or replicates < 1 or images < 1:
            raise CertquantError("the truth pool needs --policies >= 2, --replicates >= 1 and --images >= 1")
        self.cfg, self.budget, self.work = cfg, float(budget), Path(work)
        self.count, self.replicates = count, replicates
        self.progress = progress
        self.device = resolve_device(cfg.device)
        self.checkpoint = resolve_checkpoint(cfg.checkpoint)
        self.model, self.info = load_checkpoint(self.checkpoint, expect_dataset=cfg.dataset)
        self.sigma = float(cfg.sigma if cfg.sigma is not None else self.info["sigma"])
        self.layers = quantizable_layers(self.model, input_shape(self.info))
        self.env = BitWidthEnv(self.layers, cfg.search.env(budget), arch=self.info["arch"])
        s = cfg.search
        # held out: after the search set's and the final selection's images of the same seeded draw
        self.indices = validation_indices(self.info, images, s.seed, offset=s.search_images + s.final_images)
        self.search_dirs = [Path(d) for d in search_dirs]
        self.top_k = top_k
        c = cfg.certify
        self.identity = {
            "format": "certquant-truth",
            "version": 1,
            "checkpoint_sha256": self.info["sha256"],
            "dataset": self.info["dataset"],
            "sigma": self.sigma,
            "budget": self.budget,
            "policies": count,
            "replicates": replicates,
            "validation_indices": self.indices,
            "env": dataclasses.asdict(s.env(budget)),
            "certify": {"n0": c.n0, "n": c.n, "alpha": c.alpha, "batch": c.batch, "seed": c.seed},
            "quantize": cfg.to_dict()["quantize"],
            "finetune": cfg.to_dict()["finetune"],
            "search_dirs": [str(d) for d in self.search_dirs],
            "top_k": top_k,
            "pool_seed": s.seed,
        }
        self.folder = RunFolder(self.work, "truth-pool", self.identity)

    def pool(self) -> list[tuple[str, Policy]]:
        """The pool, drawn once and read back from pool.json on resume."""
        if (self.work / POOL_FILE).exists():
            data = self.folder.read_json(POOL_FILE)
            return [(p["source"], Policy.from_dict(p["policy"])) for p in data]
        searched = searched_policies(self.search_dirs, self.layers, self.top_k, self.info["arch"])
        pool = draw_pool(self.env, self.budget, self.count, self.cfg.search.seed, searched)
        self.folder.write_json(POOL_FILE, [{"source": src, "policy": p.to_dict()} for src, p in pool])
        return pool

    def replicate(self, index: int, policy: Policy, seed: int) -> dict[str, Any]:
        """One fine-tune seed of one policy: the final stage's model, certified on the validation images."""
        folder = RunFolder(
            self.work / f"policy-{index:02d}",
            "truth-policy",
            {"w_bits": policy.w_bits, "a_bits": policy.a_bits, **self.identity},
        )
        folder.claim(resume=True)
        out = folder / f"certify-ft{seed}"
        if (out / "summary.json").exists():  # finished: its certificates suffice (the model may not be kept)
            records = list(read_jsonl(out / "certificates.jsonl"))
            return {"finetune_seed": seed, **policy_metrics(records), "seconds_this_session": 0.0}
        path = final_model(
            self.cfg,
            self.checkpoint,
            policy,
            folder / f"model-ft{seed}.pt",
            self.device,
            self.sigma,
            finetune_seed=seed,
            progress=self.progress,
        )
        qmodel = self.classifier(path)
        images, labels = load_dataset(self.info["dataset"], "train")
        c = self.cfg.certify
        started = time.time()
        certify_dataset(
            qmodel,
            images,
            labels,
            self.indices,
            out,
            self.sigma,
            c.n0,
            c.n,
            c.alpha,
            c.batch,
            c.seed,
            identity={"policy": index, "finetune_seed": seed, "split": "train-validation"},
            provenance={"runtime": self.cfg.certify.runtime},
            input_shape=input_shape(self.info),
            progress=self.progress,
            channels_last=self.device.type == "cpu",
            resume=True,
        )
        records = list(read_jsonl(out / "certificates.jsonl"))
        return {"finetune_seed": seed, **policy_metrics(records), "seconds_this_session": time.time() - started}

    def classifier(self, path: Path) -> torch.nn.Module:
        """The fine-tuned model to certify: the PyTorch checkpoint, or (``certify.runtime: onnx``) its bit-exact ONNX
        export run by ONNX Runtime (the same logits, so the same certificates; faster on a CPU for the small CNN's
        policies). The certificates do not depend on it, so a pool can be resumed with either."""
        if self.cfg.certify.runtime == "torch":
            return load_checkpoint(path, map_location=self.device)[0]
        from certquant.deploy import exported_classifier

        e = self.cfg.export
        return exported_classifier(path, path.with_suffix(".onnx"), e.opset, e.integer_kernels)

    def run(self, only: Sequence[int] | None = None) -> dict[str, Any]:
        """Every policy's replicates (``only``: just these pool indices, e.g. one process each on part of the pool;
        the rows of the others are left out)."""
        self.folder.claim(resume=True)
        rows = []
        for index, (source, policy) in enumerate(self.pool()):
            if only is not None and index not in only:
                continue
            reps = [self.replicate(index, policy, self.cfg.finetune.seed + r) for r in range(self.replicates)]
            mean = {
                k: float(np.mean([r[k] for r in reps]))
                for k in ("acr", "clean_accuracy", *(f"cert_acc_{r:g}" for r in RADII))
            }
            rows.append(
                {
                    "id": index,
                    "source": source,
                    "w_bits": policy.w_bits,
                    "a_bits": policy.a_bits,
                    "bitops_fraction": bitops_fraction(self.layers, policy),
                    "budget_use": bitops_fraction(self.layers, policy) / self.budget,
                    "replicates": reps,
                    "mean": mean,
                }
            )
        return {
            "provenance": {
                **self.identity,
                "checkpoint": self.checkpoint,
                "arch": self.info["arch"],
                "device": device_name(self.device),
                "date": time.strftime("%Y-%m-%d %H:%M"),
            },
            "policies": rows,
            "replicate_agreement": replicate_agreement(rows),
        }


def replicate_agreement(rows: list[dict]) -> dict[str, Any] | None:
    """How much the fine-tune seed moves a policy's ACR: Kendall tau between the first two replicates' ACRs, and the
    mean and largest absolute difference (the ceiling of any reward's fidelity)."""
    if not rows or len(rows[0]["replicates"]) < 2:
        return None
    a = np.array([r["replicates"][0]["acr"] for r in rows])
    b = np.array([r["replicates"][1]["acr"] for r in rows])
    tau = kendalltau(a, b).statistic
    return {
        "kendall_tau_acr": None if np.isnan(tau) else float(tau),
        "mean_abs_acr_difference": float(np.abs(a - b).mean()),
        "max_abs_acr_difference": float(np.abs(a - b).max()),
    }


def markdown(data: dict) -> str:
    p = data["provenance"]
    c = p["certify"]
    head = (
        f"Truth pool: {p['arch']} ({p['checkpoint']}) on {p['dataset']}, sigma = {p['sigma']}, budget "
        f"{p['budget']:g} of FP32 BitOPs; {len(data['policies'])} policies in 85-100% of it; each calibrated and "
        f"fine-tuned as the pipeline's final stage ({p['finetune']['epochs']} epoch(s) on "
        f"{p['finetune']['images']} noisy images) with {p['replicates']} fine-tune seed(s), then CERTIFY n0 = "
        f"{c['n0']}, n = {c['n']}, alpha = {c['alpha']} on {len(p['validation_indices'])} held-out validation "
        f"images (neither search nor test images). Device: {p['device']}."
    )
    reps = max(len(r["replicates"]) for r in data["policies"])
    rows = [
        [
            r["id"],
            r["source"] if len(r["source"]) < 40 else "..." + r["source"][-37:],
            f"{100 * r['bitops_fraction']:.3f}",
            f"{100 * r['budget_use']:.1f}",
            *[f"{rep['acr']:.4f}" for rep in r["replicates"]],
            f"{r['mean']['acr']:.4f}",
            f"{r['mean']['clean_accuracy']:.3f}",
            f"{r['mean']['cert_acc_0.25']:.3f}",
            f"{r['mean']['cert_acc_0.5']:.3f}",
        ]
        for r in data["policies"]
    ]
    table = markdown_table(
        [
            "policy",
            "source",
            "BitOPs %",
            "budget use %",
            *[f"ACR ft{k}" for k in range(reps)],
            "ACR mean",
            "clean",
            "cert r=0.25",
            "cert r=0.5",
        ],
        rows,
    )
    agree = data.get("replicate_agreement")
    note = (
        ""
        if not agree
        else (
            f"\n\nReplicates (first two fine-tune seeds): Kendall tau of ACR "
            f"{'-' if agree['kendall_tau_acr'] is None else format(agree['kendall_tau_acr'], '.2f')}, mean |dACR| "
            f"{agree['mean_abs_acr_difference']:.4f}, max {agree['max_abs_acr_difference']:.4f}."
        )
    )
    return f"# Truth pool\n\n{head}\n\n{table}{note}\n"


def default_name(cfg: RunConfig, budget: float) -> str:
    ref = Path(cfg.checkpoint).stem if Path(cfg.checkpoint).suffix == ".pt" else cfg.checkpoint  # a zoo name: as is
    return f"truth-{ref}-{budget:g}"


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "bench-search.yaml"))
    parser.add_argument("--budget", type=float, required=True, help="BitOPs budget (fraction of FP32)")
    parser.add_argument("--policies", type=int, default=16)
    parser.add_argument("--replicates", type=int, default=2, help="fine-tune seeds per policy (2: the ceiling)")
    parser.add_argument("--images", type=int, default=200, help="held-out validation images to certify")
    parser.add_argument("--search-dirs", nargs="*", default=[], help="earlier search folders: their top policies")
    parser.add_argument("--top-k", type=int, default=4, help="policies taken from each search folder")
    parser.add_argument("--work", default=None, help="default: runs/bench_truth/<name>")
    parser.add_argument("--name", default=None, help="results stem (default truth-<model>-<budget>)")
    parser.add_argument("--results", default=None, help="results folder (default benchmarks/results)")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument(
        "--only",
        type=int,
        nargs="+",
        default=None,
        help="work on these pool indices only and write no result file "
        "(split a pool over processes; the command without --only then gathers every policy)",
    )
    parser.add_argument("overrides", nargs="*", help="run-config overrides KEY=VALUE (certquant run --help)")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
        name = args.name or default_name(cfg, args.budget)
        work = Path(args.work) if args.work else ROOT / "runs" / "bench_truth" / name
        data = TruthPool(
            cfg,
            args.budget,
            work,
            args.policies,
            args.replicates,
            args.images,
            args.search_dirs,
            args.top_k,
            progress=not args.no_progress,
        ).run(args.only)
    except CertquantError as exc:
        raise SystemExit(f"error: {exc}") from None
    if args.only is not None:
        print(f"done: policies {args.only} (no result file; run without --only to gather the pool)")
        return data
    text = markdown(data)
    write_results(name, data, text, Path(args.results) if args.results else None)
    print(text)
    return data


if __name__ == "__main__":
    main()
