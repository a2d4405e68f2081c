"""Assembling a search from a checkpoint: the search set (held-out validation images, never test images), the
candidate evaluator and the resumable ``Search``; then the optional final selection. Shared by ``certquant search``
and the end-to-end pipeline, so the same settings give the same search."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from certquant.data import load_dataset, train_val_split
from certquant.quant import Policy
from certquant.search.config import SearchSettings
from certquant.search.env import BitWidthEnv
from certquant.search.evaluators import PolicyEvaluator
from certquant.search.runner import Search, SearchConfig, uniform_policy
from certquant.search.selection import reselect, score_history
from certquant.smoothing.config import CertifyConfig
from certquant.utils.errors import CertquantError


def validation_indices(info: dict[str, Any], count: int, seed: int, offset: int = 0) -> list[int]:
    """``count`` indices of a seeded draw from the checkpoint's held-out validation images (all training images when
    it has none), after skipping the first ``offset`` of the draw (the final selection's fresh images follow the
    search set's)."""
    images, _ = load_dataset(info["dataset"], "train")
    args = info.get("train_args") or {}
    if args.get("val_size"):
        _, pool = train_val_split(len(images), int(args["val_size"]), int(args.get("seed", 0)))
    else:
        pool = torch.arange(len(images))
    pool = pool[torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed))]
    indices = sorted(int(i) for i in pool[offset : offset + count])
    if len(indices) < count:
        raise CertquantError(
            f"the checkpoint has {len(pool)} held-out validation images, fewer than the {offset + count} the search "
            "needs (search.search_images, then search.final_images fresh ones for the final selection): lower "
            "search.search_images or search.final_images"
        )
    return indices


@dataclass
class SearchJob:
    """What the searches of a run share: the full-precision model and its checkpoint info, the run's sigma, the search
    and certification settings, the device."""

    model: nn.Module
    info: dict[str, Any]
    sigma: float
    settings: SearchSettings
    certify_config: CertifyConfig
    device: torch.device

    def check_validation_images(self, methods: list[str]) -> None:
        """Refuse up front a checkpoint with fewer held-out validation images than the search set and, when one of
        ``methods`` has a final selection, its fresh images need (else it would fail only after the search)."""
        s = self.settings
        final = s.final_images if any(s.has_final_selection(method) for method in methods) else 0
        validation_indices(self.info, s.search_images + final, s.seed)

    def evaluator(
        self, method: str, indices: list[int], finetune_pool: bool = False, finetune_steps: int | None = None
    ) -> PolicyEvaluator:
        """The candidate evaluator of ``method`` on the validation images ``indices`` (with ``finetune_pool``:
        candidate fine-tuning draws from the other training images; ``finetune_steps`` replaces the settings')."""
        s = self.settings if finetune_steps is None else replace(self.settings, finetune_steps=finetune_steps)
        images, labels = load_dataset(self.info["dataset"], "train")
        ft_images = ft_labels = None
        if finetune_pool and s.finetune_steps > 0:
            keep = torch.ones(len(images), dtype=torch.bool)
            keep[indices] = False
            ft_images, ft_labels = images[keep], labels[keep]
        return PolicyEvaluator(
            self.model,
            self.sigma,
            images[indices],
            labels[indices],
            indices,
            s,
            reward=s.reward_of(method),
            certify_config=self.certify_config,
            seed=s.seed,
            arch=self.info["arch"],
            finetune_images=ft_images,
            finetune_labels=ft_labels,
            device=self.device,
        )

    def build(self, method: str, budget: float, out: str | Path) -> tuple[Search, PolicyEvaluator]:
        """The evaluator over the search set and the ``Search`` writing to ``out`` (not yet opened or run)."""
        s, info = self.settings, self.info
        evaluator = self.evaluator(method, validation_indices(info, s.search_images, s.seed), finetune_pool=True)
        config = SearchConfig(s.env(budget), method, s.episodes, replace(s.agent, seed=s.seed), s.seed)
        extra = {
            "checkpoint_sha256": info["sha256"],
            "dataset": info["dataset"],
            "evaluator": evaluator.describe(),
            "device": self.device.type,
        }
        return Search(evaluator.layers, evaluator, config, out, arch=info["arch"], extra=extra), evaluator

    def final_selection(self, search_dir: str | Path, method: str, budget: float) -> Policy:
        """``selection.reselect`` of the finished search in ``search_dir``: its top ``final_top_k`` policies (and,
        with ``final_uniform_fallback``, uniform bits under ``budget``) re-scored with the search's scoring on
        ``final_images`` fresh held-out validation images, the ones the seeded draw gives right after the search
        set's (so never the same), each after ``selection_finetune_steps()`` noisy fine-tuning steps on other
        training images."""
        s = self.settings
        indices = validation_indices(self.info, s.final_images, s.seed, offset=s.search_images)
        steps = s.selection_finetune_steps()
        evaluator = self.evaluator(method, indices, finetune_pool=True, finetune_steps=steps)
        arch = self.info["arch"]
        fallback = (
            uniform_policy(BitWidthEnv(evaluator.layers, s.env(budget), arch=arch))
            if s.final_uniform_fallback
            else None
        )
        return reselect(
            search_dir, evaluator.layers, evaluator, s.final_top_k, arch=arch, finetune_steps=steps, fallback=fallback
        )

    def score_policies(self, search_dir: str | Path, progress: bool = False) -> list[dict]:
        """``selection.score_history`` of the finished search in ``search_dir`` with ARQ's scoring on the search's
        own set (the same seeded draw of held-out validation images): ARQ's ACR terms for the policies of a search
        whose reward did not measure them (HAQ's)."""
        evaluator = self.evaluator(
            "arq", validation_indices(self.info, self.settings.search_images, self.settings.seed)
        )
        return score_history(search_dir, evaluator.layers, evaluator, arch=self.info["arch"], progress=progress)
