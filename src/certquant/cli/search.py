"""``certquant search``: the ARQ / HAQ bit-width search of a checkpoint under a BitOPs budget (resumable)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer

from certquant.data import every_kth, load_dataset
from certquant.models import load_checkpoint
from certquant.quant import format_cost_table
from certquant.search import EnvConfig, EvalConfig
from certquant.search.job import build_search, final_selection
from certquant.search.runner import BEST_FILE, METHODS
from certquant.search.selection import FINAL_POLICY_FILE, SELECTION_FILE
from certquant.train import resolve_device
from certquant.utils.errors import CertquantError


def search_cmd(
    checkpoint: str = typer.Option(..., help="noise-trained checkpoint file or zoo name (see 'certquant zoo')"),
    dataset: Optional[str] = typer.Option(None, help="dataset (default: the checkpoint's; another one is refused)"),
    sigma: Optional[float] = typer.Option(None, help="noise std (default: the checkpoint's training sigma)"),
    budget: float = typer.Option(..., help="BitOPs budget as a fraction of FP32 in (0, 1]; 0.015625 = uniform W4A4"),
    method: str = typer.Option("arq", help=f"{', '.join(METHODS)}: DDPG with ARQ's certified-radius or HAQ's accuracy "
                                           "reward, random policies repaired to the budget, largest uniform W=A"),
    episodes: int = typer.Option(600, help="candidates to evaluate (HAQ: 600; uniform evaluates one)"),
    search_images: int = typer.Option(100, help="size K of the search set (disjoint from the test subset)"),
    search_split: str = typer.Option("train", help="train (held-out validation images) or test (a disjoint part)"),
    search_start: int = typer.Option(0, help="with --search-split test: first test index of the search set"),
    search_skip: int = typer.Option(1, help="with --search-split test: take every SKIP-th test image"),
    test_skip: int = typer.Option(1, help="the test subset final certification uses: every SKIP-th test image"),
    test_max: Optional[int] = typer.Option(None, help="the test subset final certification uses: at most M images"),
    reward: Optional[str] = typer.Option(None, help="reward of random / uniform candidates: arq (default) or haq"),
    estimator: str = typer.Option("scratch", help="ACR estimator of the arq reward: scratch, irs, irs-one-sided"),
    n0: int = typer.Option(100, "--n0", help="selection samples per certificate"),
    n_p: int = typer.Option(1000, "--n-p", help="estimation samples per search image and candidate"),
    n_fp: int = typer.Option(10_000, "--n-fp", help="IRS: samples of the one-time FP32 certification"),
    alpha: float = typer.Option(0.001, help="failure probability of each certificate"),
    batch: int = typer.Option(1000, "--batch", help="noisy samples per forward pass (part of the noise seeding)"),
    lam: float = typer.Option(0.1, "--lambda", help="reward scale lambda"),
    clean_weight: float = typer.Option(1.0, help="arq: weight of the clean smoothed accuracy difference beside the "
                                       "ACR's (0: ACR alone)"),
    noise_copies: int = typer.Option(16, help="haq: noisy copies per search image"),
    calib_images: int = typer.Option(256, help="noisy calibration inputs (search images + certification noise)"),
    finetune_steps: int = typer.Option(0, help="noisy fine-tuning steps per candidate (0: none)"),
    finetune_batch: int = typer.Option(64, help="fine-tuning minibatch"),
    finetune_lr: float = typer.Option(0.01, help="fine-tuning learning rate"),
    min_bits: int = typer.Option(2, help="lowest bit-width"),
    max_bits: int = typer.Option(8, help="highest bit-width"),
    pin_first_last: bool = typer.Option(True, help="keep the first and last layer at --pin-bits (HAQ)"),
    pin_bits: int = typer.Option(8, help="bits of pinned layers"),
    tie: bool = typer.Option(False, help="one action per layer: weight bits = activation bits"),
    warmup: int = typer.Option(20, help="DDPG warm-up episodes of random actions"),
    seed: int = typer.Option(0, help="seed of the agent, the search set draw, the noise and the calibration"),
    device: str = typer.Option("auto", help="auto, cpu or cuda (part of the noise seeding)"),
    out: Path = typer.Option(..., help="run folder: history.jsonl, best_policy.json, state.pt, summary.json"),
    resume: bool = typer.Option(False, help="continue the search in --out exactly where it stopped"),
    progress: bool = typer.Option(True, help="show a progress bar"),
    final_top_k: int = typer.Option(1, help="re-score the K best distinct policies on fresh validation images and "
                                            "write the best there to final_policy.json (1: no final selection)"),
    final_images: int = typer.Option(200, help="fresh held-out validation images of the final selection"),
) -> None:
    """Search per-layer weight/activation bit-widths under a BitOPs budget (ARQ; HAQ, random, uniform baselines)."""
    if method not in METHODS:
        raise CertquantError(f"unknown search method '{method}': use one of {', '.join(METHODS)}")
    if reward is not None and method in ("arq", "haq") and reward != method:
        raise CertquantError(f"--method {method} uses the {method} reward: drop --reward (it is for random and uniform)")
    if search_split not in ("train", "test"):
        raise CertquantError(f"--search-split must be train or test, got '{search_split}'")
    if final_top_k < 1 or final_images < 1:
        raise CertquantError(f"--final-top-k and --final-images must be >= 1, got {final_top_k} and {final_images}")
    if final_top_k > 1 and search_split != "train":
        raise CertquantError("--final-top-k draws fresh held-out validation images: use it with --search-split train")
    if sigma is not None and sigma <= 0:
        raise CertquantError(f"--sigma must be > 0 (noise std in [0,1] pixel units), got {sigma}")
    env = EnvConfig(budget, min_bits, max_bits, pin_first_last, pin_bits, tie)
    env.validate()
    dev = resolve_device(device)
    model, info = load_checkpoint(checkpoint, expect_dataset=dataset, map_location=dev)
    sigma = float(info["sigma"]) if sigma is None else sigma

    test_images, _ = load_dataset(info["dataset"], "test")
    test_subset = every_kth(len(test_images), test_skip, test_max)
    eval_config = EvalConfig(reward=reward or ("haq" if method == "haq" else "arq"), lam=lam, clean_weight=clean_weight,
                             estimator=estimator, n0=n0, n_p=n_p, n_fp=n_fp, alpha=alpha, batch_size=batch,
                             noise_copies=noise_copies, calib_images=calib_images, finetune_steps=finetune_steps,
                             finetune_batch=finetune_batch, finetune_lr=finetune_lr, seed=seed)
    search, evaluator = build_search(model, info, sigma, env, eval_config, method, episodes, out, search_split,
                                     search_images, search_start, search_skip, test_subset, warmup, seed, dev)
    indices = evaluator.indices
    search.open(resume)  # refuse a used --out or changed arguments before the FP32 reference work

    started = time.time()
    reference = evaluator.reference()
    shown = {k: round(v, 4) for k, v in reference.items() if k != "seconds"}
    typer.echo(f"FP32 on {len(indices)} {search_split} images at sigma {sigma}: {shown} ({reference['seconds']:.1f}s)")
    result = search.run(progress=progress, reference=reference)
    typer.echo(format_cost_table(evaluator.layers, result.best_policy))
    evaluations = len({(tuple(r["w_bits"]), tuple(r["a_bits"])) for r in result.history})
    typer.echo(f"best reward {result.best_reward:.4f} at episode {result.best_episode} of {len(result.history)} "
               f"({evaluations} distinct policies); {time.time() - started:.1f}s this run; "
               f"wrote {Path(out) / BEST_FILE} (use: certquant quantize --policy)")
    if final_top_k > 1 and method != "uniform":
        policy = final_selection(out, model, info, sigma, eval_config, search_images, final_top_k, final_images, seed,
                                 dev)
        policy.save(Path(out) / FINAL_POLICY_FILE)
        typer.echo(f"final selection: the best of the top {final_top_k} on {final_images} fresh images; wrote "
                   f"{Path(out) / SELECTION_FILE} and {Path(out) / FINAL_POLICY_FILE} (use: certquant quantize --policy)")
