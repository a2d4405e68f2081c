"""Assembling a search from a checkpoint: the search set (disjoint from the test subset), the candidate evaluator
and the resumable ``Search``. Shared by ``certquant search`` and the end-to-end pipeline."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from certquant.data import every_kth, load_dataset, train_val_split
from certquant.quant import Policy
from certquant.search.ddpg import DDPGConfig
from certquant.search.env import EnvConfig
from certquant.search.evaluators import EvalConfig, PolicyEvaluator
from certquant.search.runner import Search, SearchConfig
from certquant.search.selection import reselect
from certquant.utils.errors import CertquantError


def search_indices(info: dict, split: str, count: int, seed: int, start: int, skip: int,
                   test_subset: list[int], offset: int = 0) -> list[int]:
    """Indices of the search set in ``split``: from train, a seeded draw from the checkpoint's held-out validation
    images (all training images when it has none), skipping the first ``offset`` of the draw (the final selection's
    fresh images follow the search set's); from test, every ``skip``-th image from ``start``, refused when it
    meets the test subset that final certification uses."""
    if count < 1:
        raise CertquantError(f"--search-images must be >= 1, got {count}")
    images, _ = load_dataset(info["dataset"], split)
    if split == "test":
        indices = every_kth(len(images), skip, count, start)
        overlap = sorted(set(indices) & set(test_subset))
        if overlap:
            raise CertquantError(f"the search set shares {len(overlap)} test image(s) with the test subset (first: "
                                 f"{overlap[0]}): choose --search-start/--search-skip, --test-skip/--test-max that are "
                                 "disjoint, or search on --search-split train")
    else:
        args = info.get("train_args") or {}
        if args.get("val_size"):
            _, pool = train_val_split(len(images), int(args["val_size"]), int(args.get("seed", 0)))
        else:
            pool = torch.arange(len(images))
        pool = pool[torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed))]
        indices = sorted(int(i) for i in pool[offset : offset + count])
    if len(indices) < count:
        raise CertquantError(f"only {len(indices)} {split} images are available for the search set, "
                             f"--search-images asks for {count}")
    return indices


def build_search(
    model: nn.Module,
    info: dict[str, Any],
    sigma: float,
    env: EnvConfig,
    eval_config: EvalConfig,
    method: str,
    episodes: int,
    out: str | Path,
    search_split: str = "train",
    search_images: int = 100,
    search_start: int = 0,
    search_skip: int = 1,
    test_subset: list[int] | None = None,
    warmup: int = 20,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> tuple[Search, PolicyEvaluator]:
    """The evaluator over the search set and the ``Search`` writing to ``out`` (not yet opened or run)."""
    if search_split not in ("train", "test"):
        raise CertquantError(f"--search-split must be train or test, got '{search_split}'")
    env.validate()
    device = torch.device(device)
    indices = search_indices(info, search_split, search_images, seed, search_start, search_skip, test_subset or [])
    images, labels = load_dataset(info["dataset"], search_split)
    ft_images = ft_labels = None
    if eval_config.finetune_steps > 0:  # fine-tune on training images outside the search set
        ft_images, ft_labels = load_dataset(info["dataset"], "train")
        if search_split == "train":
            keep = torch.ones(len(ft_images), dtype=torch.bool)
            keep[indices] = False
            ft_images, ft_labels = ft_images[keep], ft_labels[keep]
    evaluator = PolicyEvaluator(model, sigma, images[indices], labels[indices], indices, eval_config, arch=info["arch"],
                                finetune_images=ft_images, finetune_labels=ft_labels, device=device)
    config = SearchConfig(env, method, episodes, DDPGConfig(warmup_episodes=warmup), seed)
    extra = {"checkpoint_sha256": info["sha256"], "dataset": info["dataset"], "search_split": search_split,
             "evaluator": evaluator.describe(), "device": device.type}
    return Search(evaluator.layers, evaluator, config, out, arch=info["arch"], extra=extra), evaluator


def final_selection(search_dir: str | Path, model: nn.Module, info: dict[str, Any], sigma: float,
                    eval_config: EvalConfig, search_images: int, final_top_k: int, final_images: int, seed: int = 0,
                    device: torch.device | str = "cpu") -> Policy:
    """``selection.reselect`` of the finished search in ``search_dir``: its top ``final_top_k`` policies re-scored
    with the search's scoring on ``final_images`` fresh held-out validation images, the ones the seeded draw gives
    right after the search set's (so never the same)."""
    indices = search_indices(info, "train", final_images, seed, 0, 1, [], offset=search_images)
    images, labels = load_dataset(info["dataset"], "train")
    evaluator = PolicyEvaluator(model, sigma, images[indices], labels[indices], indices, eval_config,
                                arch=info["arch"], device=device)
    return reselect(search_dir, evaluator.layers, evaluator, final_top_k, arch=info["arch"])
