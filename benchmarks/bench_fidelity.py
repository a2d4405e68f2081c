"""Reward fidelity against the truth pool (issue 18, item 2): how well each reward the search offers ranks candidates
the way their final certificate does, and what it costs per candidate.

Every reward (HAQ's noisy top-1 ``haq``; ARQ with each ACR estimator: ``scratch``, ``irs``, ``irs-one-sided``,
``paired``, ``paired-margin``), each without and with a few noisy fine-tuning steps per candidate
(``search.finetune_steps``), scores every policy of a truth pool (``benchmarks/bench_truth.py``) exactly as the search
would: the search's own evaluator (``certquant.search.job.SearchJob.evaluator``) on the search set of the config's seed. Then,
over the pool, with a bootstrap 95% interval (policies resampled with replacement):

- Kendall tau and Spearman rho of the reward with the truth's final ACR (the mean over its fine-tune replicates) and
  with its clean smoothed accuracy;
- top-1 regret: the truth ACR of the truth's best policy minus that of the policy the reward ranks first (ties in the
  reward: the mean over the tied ones);
- cost per candidate in forward-sample equivalents, the same on any machine and under any load (``candidate_cost``:
  scoring samples, 3 per fine-tuning sample, the one-time FP32 reference amortized over the search's episodes),
  which decides the cost-fidelity front; and the seconds as measured (quantization, fine-tuning steps, scoring),
  comparable only between rows scored under the same load.

The ceiling: the truth's first replicate used as a reward, against its second (another fine-tune seed of the same
policy): no reward computed before the final fine-tune can rank better than that on average.

    python benchmarks/bench_fidelity.py --truth benchmarks/results/truth-<model>-<budget>.json
        [--config configs/bench-search.yaml] [--rewards haq scratch irs irs-one-sided paired paired-margin]
        [--finetune-steps 0 50] [--bootstrap 2000] [--work runs/bench_fidelity/<name>] [--name fidelity-<...>]
        [--results DIR] [KEY=VALUE ...]

Resumable (one run folder per row, one JSONL line per scored policy). Writes ``<results>/<name>.json`` and ``.md``.
``--truth`` may also be the truth pool's work folder while it is still being certified: the rewards are scored (and
kept in the work folder) but nothing is written; the command with the finished result file then only measures.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import kendalltau, spearmanr

from certquant.models import load_checkpoint, resolve_checkpoint
from certquant.pipeline import load_config
from certquant.pipeline.config import RunConfig
from certquant.quant import Policy
from certquant.search import ESTIMATORS
from certquant.search.job import SearchJob, validation_indices
from certquant.train import resolve_device
from certquant.utils.errors import CertquantError
from certquant.utils.run_folder import RunFolder
from certquant.utils.tables import markdown_table
from common import RESULTS, ROOT, device_name, save_figure, write_results

REWARDS = ("haq", "scratch", "irs", "irs-one-sided", "paired", "paired-margin")
SCORES_FILE = "scores.jsonl"
ROW_SPEC = re.compile(r"([a-z][a-z-]*)(?:@(\d+))?(?:\+fp(\d+))?(?:\+ft(\d+))?(?:\+race([0-9.]+))?")


# -- statistics over the pool ---------------------------------------------------------------------------------------


def kendall_tau(x: np.ndarray, y: np.ndarray) -> float:
    """Kendall's tau-b (ties allowed); nan when either side is constant (no ranking)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # constant input: nan, reported as "-"
        value = kendalltau(x, y).statistic
    return float("nan") if value is None else float(value)


def spearman_rho(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rho; nan when either side is constant."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(spearmanr(x, y).statistic)


def regret(reward: np.ndarray, truth: np.ndarray) -> float:
    """max(truth) - truth of the reward's first choice (mean over the policies tied at the reward's maximum)."""
    top = np.flatnonzero(reward == reward.max())
    return float(truth.max() - truth[top].mean())


def bootstrap(stat: Callable[..., float], arrays: Sequence[np.ndarray], rounds: int, seed: int) -> list[float] | None:
    """Percentile 95% interval of ``stat(*arrays)`` over the pool resampled with replacement (the same resample of
    every array: paired; rounds whose statistic is undefined, e.g. a constant resample, are left out); None when
    none is defined."""
    rng = np.random.default_rng(seed)
    size = len(arrays[0])
    values = []
    for _ in range(rounds):
        idx = rng.integers(0, size, size)
        value = stat(*(a[idx] for a in arrays))
        if np.isfinite(value):
            values.append(value)
    if not values:
        return None
    return [float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))]


def fidelity(
    reward: Sequence[float], truth_acr: Sequence[float], truth_clean: Sequence[float], rounds: int = 2000, seed: int = 0
) -> dict[str, Any]:
    """Kendall tau and Spearman rho with the truth's ACR and clean accuracy, top-1 regret (ACR), each with its
    bootstrap 95% interval over the pool (the same resamples for every statistic: one seed)."""
    r, acr, clean = (np.asarray(v, dtype=float) for v in (reward, truth_acr, truth_clean))
    out: dict[str, Any] = {}
    for name, stat, truth in (
        ("kendall_tau_acr", kendall_tau, acr),
        ("spearman_acr", spearman_rho, acr),
        ("kendall_tau_clean", kendall_tau, clean),
        ("spearman_clean", spearman_rho, clean),
        ("regret_acr", regret, acr),
    ):
        value = stat(r, truth)
        out[name] = value if np.isfinite(value) else None  # e.g. a constant reward: no ranking
        out[f"{name}_ci95"] = bootstrap(stat, (r, truth), rounds, seed)
    return out


def tau_gap(
    reward: Sequence[float], best: Sequence[float], truth: Sequence[float], rounds: int = 2000, seed: int = 0
) -> list[float] | None:
    """Paired bootstrap 95% interval of tau(reward, truth) - tau(best, truth) over the same resampled pools: a row
    whose interval includes 0 is tied with ``best`` (the pool cannot tell them apart)."""
    arrays = tuple(np.asarray(v, dtype=float) for v in (reward, best, truth))
    return bootstrap(lambda r, b, t: kendall_tau(r, t) - kendall_tau(b, t), arrays, rounds, seed)


BACKWARD_FACTOR = 3  # a training sample costs about a forward pass and a backward pass of twice its cost


def fp32_forward_samples(reward: str, settings: Any, n0: int, images: int) -> int:
    """Forward samples of a search's one-time FP32 reference on ``images`` search images: HAQ's noisy copies, a
    from-scratch certificate (n0 + n_p), or the IRS / paired certification cache (n0 + n_fp)."""
    if reward == "haq":
        return images * settings.noise_copies
    return images * (n0 + (settings.n_p if reward == "scratch" else settings.n_fp))


def candidate_cost(forward: float, finetune: float, fp32_once: float, episodes: int) -> float:
    """What a candidate costs in forward-sample equivalents, independent of the machine and its load: its scoring
    samples, ``BACKWARD_FACTOR`` per fine-tuning sample, and its share of the one-time FP32 reference over a search
    of ``episodes`` candidates."""
    return forward + BACKWARD_FACTOR * finetune + fp32_once / episodes


def cost_fidelity_front(rows: Sequence[dict]) -> set[str]:
    """Names of the rows no other row dominates: none is as cheap or cheaper (``cost_per_candidate``) with a Kendall
    tau with the truth's ACR as high or higher, one of the two strictly."""
    scored = [r for r in rows if r["kendall_tau_acr"] is not None]

    def dominated(r: dict) -> bool:
        return any(
            o["cost_per_candidate"] <= r["cost_per_candidate"]
            and o["kendall_tau_acr"] >= r["kendall_tau_acr"]
            and (o["cost_per_candidate"], o["kendall_tau_acr"]) != (r["cost_per_candidate"], r["kendall_tau_acr"])
            for o in scored
        )

    return {r["name"] for r in scored if not dominated(r)}


# -- scoring the pool -----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Row:
    """One reward configuration: ``reward`` (haq or an ACR estimator of ARQ's reward), fine-tuning steps per
    candidate, and optionally its own ``n_p`` (samples per search image) and racing confidence ``race_delta``."""

    reward: str
    finetune_steps: int = 0
    n_p: int | None = None
    race_delta: float = 0.0
    n_fp: int | None = None

    @property
    def name(self) -> str:
        """The row's spec, ``REWARD[@N_P][+fpN_FP][+ftSTEPS][+raceDELTA]`` (``parse`` reads it back; also
        the row's folder name)."""
        return (
            self.reward
            + (f"@{self.n_p}" if self.n_p else "")
            + (f"+fp{self.n_fp}" if self.n_fp else "")
            + (f"+ft{self.finetune_steps}" if self.finetune_steps else "")
            + (f"+race{self.race_delta:g}" if self.race_delta else "")
        )

    @classmethod
    def parse(cls, spec: str) -> Row:
        """A row from its spec, e.g. ``paired@64+fp1000+ft50+race0.05``."""
        match = ROW_SPEC.fullmatch(spec)
        if not match:
            raise CertquantError(
                f"row '{spec}' is not REWARD[@N_P][+fpN_FP][+ftSTEPS][+raceDELTA], e.g. paired@64+fp1000+race0.05"
            )
        reward, n_p, n_fp, steps, delta = match.groups()
        return cls(reward, int(steps or 0), int(n_p) if n_p else None, float(delta or 0.0), int(n_fp) if n_fp else None)

    def settings(self, cfg: RunConfig):
        """The search settings this row scores with: the config's, with its estimator, fine-tuning steps, n_p, n_fp
        (FP32 samples cached per image for IRS and paired) and racing confidence."""
        estimator = cfg.search.estimator if self.reward == "haq" else self.reward
        return dataclasses.replace(
            cfg.search,
            estimator=estimator,
            finetune_steps=self.finetune_steps,
            n_p=self.n_p or cfg.search.n_p,
            n_fp=self.n_fp or cfg.search.n_fp,
            race_delta=self.race_delta,
        )

    @property
    def method(self) -> str:
        return "haq" if self.reward == "haq" else "arq"


def load_truth(path: Path) -> dict:
    """A truth pool result file; or a truth pool's work folder (``bench_truth.py --work``, possibly unfinished): its
    policies (pool.json) and held-out images (run.json) without truth metrics, enough to score the rewards while
    the truth is still being certified."""
    if path.is_file():
        return json.loads(path.read_text())
    if not (path / "pool.json").is_file():
        raise CertquantError(f"{path} is neither a truth result file nor a truth pool folder: run bench_truth.py first")
    identity = json.loads((path / "run.json").read_text())["identity"]
    pool = json.loads((path / "pool.json").read_text())
    policies = [Policy.from_dict(p["policy"]) for p in pool]
    return {
        "provenance": identity,
        "policies": [{"id": i, "w_bits": p.w_bits, "a_bits": p.a_bits} for i, p in enumerate(policies)],
    }


class Fidelity:
    """Scores a truth pool's policies with each row's evaluator, resumably, and measures fidelity."""

    def __init__(
        self, cfg: RunConfig, truth: dict, work: Path, rows: Sequence[Row], rounds: int = 2000, progress: bool = True
    ):
        self.cfg, self.truth, self.work, self.rows, self.rounds = cfg, truth, Path(work), list(rows), rounds
        self.progress = progress
        unknown = [r.reward for r in rows if r.reward != "haq" and r.reward not in ESTIMATORS]
        if unknown:
            raise CertquantError(f"unknown reward(s) {', '.join(unknown)}: use haq or one of {', '.join(ESTIMATORS)}")
        self.device = resolve_device(cfg.device)
        self.model, self.info = load_checkpoint(
            resolve_checkpoint(cfg.checkpoint), expect_dataset=cfg.dataset, map_location=self.device
        )
        prov = truth["provenance"]
        if self.info["sha256"] != prov["checkpoint_sha256"]:
            made_with = prov.get("checkpoint") or f"sha256 {prov['checkpoint_sha256'][:12]}"  # a pool folder: no path
            raise CertquantError(
                f"the truth pool was made with another checkpoint ({made_with}) than the "
                f"config's ({cfg.checkpoint}): use the config the truth was made with"
            )
        self.sigma = float(cfg.sigma if cfg.sigma is not None else self.info["sigma"])
        self.indices = validation_indices(self.info, cfg.search.search_images, cfg.search.seed)
        overlap = set(self.indices) & set(prov["validation_indices"])
        if overlap:
            raise CertquantError(
                f"{len(overlap)} search images are also truth images: make the truth with the same "
                "search.search_images and search.seed (it skips them)"
            )

    def score_row(self, row: Row) -> tuple[list[dict], dict]:
        """Every pool policy's reward terms under ``row`` (resumed from its scores.jsonl)."""
        settings = row.settings(self.cfg)
        job = SearchJob(self.model, self.info, self.sigma, settings, self.cfg.certify, self.device)
        evaluator = job.evaluator(row.method, self.indices, finetune_pool=True)
        identity = {
            "row": row.name,
            "evaluator": evaluator.describe(),
            "checkpoint_sha256": self.info["sha256"],
            "policies": [[p["w_bits"], p["a_bits"]] for p in self.truth["policies"]],
        }
        folder = RunFolder(self.work / row.name, "fidelity-row", identity)
        folder.claim(resume=True)
        done = {r["id"]: r for r in folder.records(SCORES_FILE)}
        reference = folder.read_json("reference.json") if (folder / "reference.json").exists() else None
        for p in self.truth["policies"]:
            if p["id"] in done:
                continue
            if reference is None:
                reference = dict(evaluator.reference())
                folder.write_json("reference.json", reference)
            policy = Policy.from_lists(evaluator.layers, p["w_bits"], p["a_bits"], arch=self.info["arch"])
            # racing (the row's race_delta): against the best reward so far, in pool order, as a search would
            incumbent = max((r["reward"] for r in done.values()), default=None)
            terms = evaluator(policy, incumbent=incumbent) if evaluator.races else evaluator(policy)
            record = {
                "id": p["id"],
                "reward": terms["reward"],
                **{
                    k: terms.get(k)
                    for k in (
                        "acr",
                        "clean_accuracy",
                        "noisy_accuracy",
                        "forward_samples",
                        "seconds_quantize",
                        "seconds_score",
                        "images_scored",
                        "raced_out",
                    )
                },
                "seconds": terms["seconds_quantize"] + terms["seconds_score"],
                "finetune_samples": settings.finetune_steps * settings.finetune_batch,
            }
            folder.append(SCORES_FILE, record)
            done[p["id"]] = record
            if self.progress:
                print(
                    f"[fidelity] {row.name}: policy {p['id']} reward {record['reward']:+.5f} "
                    f"({record['seconds']:.1f} s)",
                    flush=True,
                )
        return [done[p["id"]] for p in self.truth["policies"]], reference or {}

    def run(self) -> dict[str, Any]:
        pool = self.truth["policies"]
        acr = [p["mean"]["acr"] for p in pool]
        clean = [p["mean"]["clean_accuracy"] for p in pool]
        out_rows = []
        for row in self.rows:
            scores, reference = self.score_row(row)
            rewards = [s["reward"] for s in scores]
            settings = row.settings(self.cfg)
            forward = float(np.mean([s["forward_samples"] for s in scores]))
            finetune = scores[0]["finetune_samples"]
            fp32_once = fp32_forward_samples(row.reward, settings, self.cfg.certify.n0, settings.search_images)
            out_rows.append(
                {
                    "name": row.name,
                    "reward": row.reward,
                    "finetune_steps": row.finetune_steps,
                    "n_p": settings.n_p,
                    "n_fp": settings.n_fp,
                    "race_delta": row.race_delta,
                    "raced_out_share": float(np.mean([bool(s.get("raced_out")) for s in scores])),
                    **fidelity(rewards, acr, clean, self.rounds),
                    "seconds_per_candidate": float(np.median([s["seconds"] for s in scores])),
                    "forward_samples_per_candidate": forward,
                    "finetune_samples_per_candidate": finetune,
                    "fp32_forward_samples_once": fp32_once,
                    "cost_per_candidate": candidate_cost(forward, finetune, fp32_once, settings.episodes),
                    "seconds_fp32_once": reference.get("seconds"),
                    "rewards": rewards,
                }
            )
        front = cost_fidelity_front(out_rows)
        ranked = [r for r in out_rows if r["kendall_tau_acr"] is not None]
        best = max(ranked, key=lambda r: r["kendall_tau_acr"]) if ranked else None
        for r in out_rows:
            r["on_front"] = r["name"] in front
            r["tau_minus_best_ci95"] = (
                None if best is None else tau_gap(r["rewards"], best["rewards"], acr, self.rounds)
            )
        ceiling = None
        if all(len(p["replicates"]) >= 2 for p in pool):
            first = [p["replicates"][0]["acr"] for p in pool]
            second = [p["replicates"][1]["acr"] for p in pool]
            second_clean = [p["replicates"][1]["clean_accuracy"] for p in pool]
            ceiling = {"name": "ceiling: replicate 1 vs 2", **fidelity(first, second, second_clean, self.rounds)}
        s = self.cfg.search
        return {
            "provenance": {
                "truth": self.truth["provenance"],
                "search_indices": self.indices,
                "search": {
                    k: getattr(s, k)
                    for k in (
                        "search_images",
                        "episodes",
                        "seed",
                        "n_p",
                        "n_fp",
                        "noise_copies",
                        "clean_weight",
                        "lam",
                        "finetune_batch",
                        "finetune_lr",
                    )
                },
                "certify": {"n0": self.cfg.certify.n0, "alpha": self.cfg.certify.alpha},
                "bootstrap_rounds": self.rounds,
                "device": device_name(self.device),
                "date": time.strftime("%Y-%m-%d %H:%M"),
            },
            "rows": out_rows,
            "ceiling": ceiling,
        }


def _with_ci(value: float | None, ci: list[float] | None) -> str:
    if value is None or not np.isfinite(value):
        return "-"
    return f"{value:+.2f} [{ci[0]:+.2f}, {ci[1]:+.2f}]" if ci else f"{value:+.2f}"


def _interval(ci: list[float] | None) -> str:
    return "-" if not ci else f"[{ci[0]:+.2f}, {ci[1]:+.2f}]"


def _regret(value: float | None, ci: list[float] | None) -> str:
    if value is None:
        return "-"
    return f"{value:.4f}" + (f" [{ci[0]:.4f}, {ci[1]:.4f}]" if ci else "")


def markdown(data: dict) -> str:
    p = data["provenance"]
    t, s = p["truth"], p["search"]
    count = len(data["rows"][0]["rewards"])
    head = (
        f"Reward fidelity on the truth pool of {t['arch']} at budget {t['budget']:g} ({count} policies, truth = final ACR after the pipeline's fine-tune, mean of {t['replicates']} seed(s), on "
        f"{len(t['validation_indices'])} held-out validation images); rewards on the {s['search_images']} search "
        f"images of seed {s['seed']}, n_p = {s['n_p']}, n_fp = {s['n_fp']}, HAQ noise copies {s['noise_copies']}, "
        f"n0 = {p['certify']['n0']}. Intervals: bootstrap 95% over the pool ({p['bootstrap_rounds']} rounds). "
        f"Device: {p['device']}. Rows: REWARD[@N_P][+fpN_FP][+ftS][+raceD] = the reward with n_p = N_P samples per "
        f"image and n_fp = N_FP cached FP32 samples (defaults above), S noisy fine-tuning steps per candidate, "
        f"racing against the best reward so far (pool order) at confidence 1 - D. tau - best: paired bootstrap 95% interval of the row's tau minus the "
        f"highest tau's (0 inside: tied with it); cost: forward-sample equivalents per candidate (scoring samples + "
        f"{BACKWARD_FACTOR} x fine-tuning samples + the one-time FP32 reference's samples / {s['episodes']} episodes), "
        "the same on any machine; front: no row is as cheap with a tau as high. Seconds: median per candidate as "
        "measured, rows scored at different times and loads (compare costs, not seconds)."
    )
    headers = [
        "reward",
        "tau ACR",
        "tau - best",
        "front",
        "rho ACR",
        "tau clean",
        "regret ACR",
        "cost / cand.",
        "s / candidate",
        "fwd samples / cand.",
        "FT samples / cand.",
        "FP32 once samples",
        "raced out %",
    ]
    rows = [
        [
            r["name"],
            _with_ci(r["kendall_tau_acr"], r["kendall_tau_acr_ci95"]),
            _interval(r.get("tau_minus_best_ci95")),
            "yes" if r.get("on_front") else "",
            _with_ci(r["spearman_acr"], r["spearman_acr_ci95"]),
            _with_ci(r["kendall_tau_clean"], r["kendall_tau_clean_ci95"]),
            _regret(r["regret_acr"], r["regret_acr_ci95"]),
            f"{r['cost_per_candidate']:.0f}",
            f"{r['seconds_per_candidate']:.2f}",
            f"{r['forward_samples_per_candidate']:.0f}",
            r["finetune_samples_per_candidate"],
            r["fp32_forward_samples_once"],
            f"{100 * r['raced_out_share']:.0f}" if r.get("race_delta") else "-",
        ]
        for r in data["rows"]
    ]
    c = data.get("ceiling")
    if c:
        rows.append(
            [
                c["name"],
                _with_ci(c["kendall_tau_acr"], c["kendall_tau_acr_ci95"]),
                "-",
                "-",
                _with_ci(c["spearman_acr"], c["spearman_acr_ci95"]),
                _with_ci(c["kendall_tau_clean"], c["kendall_tau_clean_ci95"]),
                f"{c['regret_acr']:.4f}",
                "-",
                "-",
                "-",
                "-",
                "-",
                "-",
            ]
        )
    return f"# Reward fidelity\n\n{head}\n\n{markdown_table(headers, rows)}\n"


def plot(data: dict, path: Path) -> Path:
    """The cost-fidelity plane: each row's Kendall tau with the truth's ACR (bootstrap 95% interval) against its
    cost per candidate (forward-sample equivalents); front rows red, the replicate ceiling as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for r in data["rows"]:
        if r["kendall_tau_acr"] is None:
            continue
        low, high = r["kendall_tau_acr_ci95"] or (r["kendall_tau_acr"], r["kendall_tau_acr"])
        x, y = r["cost_per_candidate"], r["kendall_tau_acr"]
        color = "tab:gray" if r["reward"] == "haq" else "tab:red" if r["on_front"] else "tab:blue"
        ax.errorbar(x, y, yerr=[[y - low], [high - y]], fmt="o", color=color, alpha=0.7, ms=5, lw=0.8)
        ax.annotate(r["name"], (x, y), fontsize=6, xytext=(3, 2), textcoords="offset points")
    if data.get("ceiling") and data["ceiling"]["kendall_tau_acr"] is not None:
        ax.axhline(data["ceiling"]["kendall_tau_acr"], color="black", ls="--", lw=0.8, label="replicate ceiling")
        ax.legend(fontsize=8)
    ax.axhline(0, color="black", lw=0.4)
    ax.set_xscale("log")
    ax.set_xlabel("cost per candidate: forward-sample equivalents (log)")
    ax.set_ylabel("Kendall tau with the truth's final ACR")
    ax.set_title("reward fidelity against cost (red: front, gray: HAQ's reward)", fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path)


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--truth", required=True, help="a truth pool result file (benchmarks/bench_truth.py)")
    parser.add_argument("--config", default=str(ROOT / "configs" / "bench-search.yaml"))
    parser.add_argument("--rewards", nargs="*", default=list(REWARDS))
    parser.add_argument("--finetune-steps", type=int, nargs="*", default=[0, 50])
    parser.add_argument(
        "--rows",
        nargs="*",
        default=[],
        help="more rows REWARD[@N_P][+fpN_FP][+ftSTEPS][+raceDELTA], e.g. paired@16+fp1000 scratch@64+race0.05",
    )
    parser.add_argument("--bootstrap", type=int, default=2000, help="bootstrap rounds over the pool")
    parser.add_argument("--work", default=None, help="default: runs/bench_fidelity/<name>")
    parser.add_argument("--name", default=None, help="results stem (default: the truth's, truth- -> fidelity-)")
    parser.add_argument("--results", default=None, help="results folder (default benchmarks/results)")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("overrides", nargs="*", help="run-config overrides KEY=VALUE (certquant run --help)")
    args = parser.parse_args(argv)
    try:
        truth_path = Path(args.truth)
        truth = load_truth(truth_path)
        cfg = load_config(args.config, args.overrides)
        name = args.name or truth_path.stem.replace("truth-", "fidelity-", 1)
        work = Path(args.work) if args.work else ROOT / "runs" / "bench_fidelity" / name
        rows = [Row(r, steps) for steps in args.finetune_steps for r in args.rewards]
        rows += [Row.parse(spec) for spec in args.rows]
        fid = Fidelity(cfg, truth, work, rows, args.bootstrap, progress=not args.no_progress)
        if truth_path.is_dir():  # the pool's policies only: score them now, measure fidelity once the truth is done
            for row in rows:
                fid.score_row(row)
            return {"scored": [row.name for row in rows]}
        data = fid.run()
    except CertquantError as exc:
        raise SystemExit(f"error: {exc}") from None
    results = Path(args.results) if args.results else RESULTS
    text = markdown(data) + f"\n![cost-fidelity]({plot(data, results / f'{name}.png').name})\n"
    write_results(name, data, text, results)
    print(text)
    return data


if __name__ == "__main__":
    main()
