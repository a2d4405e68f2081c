"""``certquant run``: full precision certified once, each (budget, method) searched, its best policy quantized and
fine-tuned with noise, certified with full CERTIFY, and everything reported.

Run folder (every stage keeps its output, so ``resume`` continues at the stage and image where a run stopped)::

    run.json                          the resolved config and the checkpoint's hash (resume must match)
    fp32/certify/                     CERTIFY of the full-precision model on the test subset
    budget-<F>/<method>/search/       the search run folder (history.jsonl, best_policy.json, state.pt, summary.json)
    budget-<F>/<method>/model.pt      the best policy, calibrated on noisy images and fine-tuned with noise
    budget-<F>/<method>/certify/      CERTIFY of that quantized model on the same test subset
    results.json, report.md, report.html, *.png    (certquant.report.run_report)
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from certquant.data import every_kth, load_dataset
from certquant.models import load_checkpoint, resolve_checkpoint
from certquant.pipeline.config import RunConfig
from certquant.quant import Policy, quantize_checkpoint
from certquant.quant.checkpoint import input_shape
from certquant.report.run_report import write_report
from certquant.search import EnvConfig, EvalConfig
from certquant.search.job import build_search, final_selection
from certquant.smoothing import certify_dataset
from certquant.train import resolve_device
from certquant.utils.errors import CertquantError
from certquant.utils.io import atomic_write_json
from certquant.utils.provenance import software_versions

RUN_FILE = "run.json"


def budget_dir(out: Path, budget: float) -> Path:
    return out / f"budget-{float(budget):g}"


def _say(message: str) -> None:
    print(f"[certquant run] {message}", file=sys.stderr, flush=True)


class Pipeline:
    """One run of the main job; ``run()`` executes (or resumes) every stage in order."""

    def __init__(self, cfg: RunConfig, out: str | Path, resume: bool = False, progress: bool = True):
        self.cfg, self.out, self.resume, self.progress = cfg, Path(out), resume, progress
        self.device = resolve_device(cfg.device)
        self.checkpoint = resolve_checkpoint(cfg.checkpoint)
        self.model, self.info = load_checkpoint(self.checkpoint, expect_dataset=cfg.dataset, map_location=self.device)
        self.sigma = float(cfg.sigma if cfg.sigma is not None else self.info["sigma"])
        images, labels = load_dataset(self.info["dataset"], "test")
        self.test_images, self.test_labels = images, labels
        self.indices = every_kth(len(images), cfg.certify.skip, cfg.certify.max_images)

    # -- run folder -----------------------------------------------------------------------------------------------

    def identity(self) -> dict[str, Any]:
        return {"format": "certquant-run", "version": 1, "config": self.cfg.to_dict(), "checkpoint": self.checkpoint,
                "checkpoint_sha256": self.info["sha256"], "sigma": self.sigma, "test_indices": self.indices}

    def open(self) -> None:
        """Claim the run folder; refuse a used one without resume, or a resume with another config."""
        path = self.out / RUN_FILE
        identity = json.loads(json.dumps(self.identity()))
        if path.exists():
            if not self.resume:
                raise CertquantError(f"{self.out} already holds a run: pass --resume to continue it or choose another --out")
            saved = json.loads(path.read_text())
            if saved.get("identity") != identity:
                raise CertquantError(f"{self.out} holds a run with another config or checkpoint: "
                                     "resume with the same config, or choose another --out")
            return
        self.out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, {"identity": identity, "software": software_versions(),
                                 "started": time.strftime("%Y-%m-%dT%H:%M:%S")})

    def check_budgets(self) -> None:
        """Fail at once (before any certification) when a budget no policy can meet."""
        from certquant.quant import quantizable_layers
        from certquant.search import BitWidthEnv

        layers = quantizable_layers(self.model, input_shape(self.info))
        for budget in self.cfg.search.budgets:
            BitWidthEnv(layers, self._env(budget), arch=self.info["arch"])

    # -- stages ---------------------------------------------------------------------------------------------------

    def _certify(self, model, out_dir: Path, name: str) -> dict:
        c = self.cfg.certify
        _say(f"certify {name}: {len(self.indices)} test images, n0={c.n0}, n={c.n}, alpha={c.alpha}, sigma={self.sigma}")
        return certify_dataset(model, self.test_images, self.test_labels, self.indices, out_dir, self.sigma, c.n0, c.n,
                               c.alpha, c.batch, c.seed, identity={"name": name},
                               provenance={"model": name}, input_shape=input_shape(self.info),
                               progress=self.progress, channels_last=self.device.type == "cpu")

    def _env(self, budget: float) -> EnvConfig:
        s = self.cfg.search
        if s.w_bits != s.a_bits:
            raise CertquantError("search.w_bits and search.a_bits must give the same [min, max] range")
        return EnvConfig(budget=float(budget), min_bits=int(s.w_bits[0]), max_bits=int(s.w_bits[1]),
                         pin_first_last=s.pin_first_last)

    def _eval_config(self, method: str) -> EvalConfig:
        s, c = self.cfg.search, self.cfg.certify
        return EvalConfig(reward="haq" if method == "haq" else "arq", estimator=s.estimator, clean_weight=s.clean_weight,
                          n0=c.n0, n_p=s.n_p, n_fp=c.n, alpha=c.alpha, batch_size=c.batch, seed=s.seed)

    def _search(self, budget: float, method: str, folder: Path) -> Policy:
        """The search's best policy or, with ``search.final_top_k`` > 1, the best of its top k on fresh images."""
        policy = self._run_search(budget, method, folder / "search")
        s = self.cfg.search
        if s.final_top_k == 1 or method == "uniform":
            return policy
        _say(f"final selection {method} at budget {budget:g}: top {s.final_top_k} re-scored on {s.final_images} "
             "fresh images")
        return final_selection(folder / "search", self.model, self.info, self.sigma, self._eval_config(method),
                               s.search_images, s.final_top_k, s.final_images, s.seed, self.device)

    def _run_search(self, budget: float, method: str, search_dir: Path) -> Policy:
        s = self.cfg.search
        if (search_dir / "summary.json").exists():
            return Policy.load(search_dir / "best_policy.json")
        eval_config = self._eval_config(method)
        search, evaluator = build_search(self.model, self.info, self.sigma, self._env(budget), eval_config, method,
                                         s.episodes, search_dir, "train", s.search_images, test_subset=self.indices,
                                         warmup=s.warmup, seed=s.seed, device=self.device)
        search.open(resume=True)
        _say(f"search {method} at budget {budget:g}: {search.total_episodes} episode(s) on {len(evaluator.indices)} images")
        result = search.run(progress=self.progress, reference=evaluator.reference())
        return result.best_policy

    def _quantize(self, policy: Policy, folder: Path) -> Path:
        f = self.cfg.finetune
        path = folder / "model.pt"
        if path.exists():
            return path
        _say(f"quantize + fine-tune {folder.name}: {f.epochs} epoch(s) on {f.images} noisy training images")
        quantize_checkpoint(self.checkpoint, policy, path, calib_images=f.calibration_images, calib_seed=f.seed,
                            finetune_epochs=f.epochs, finetune_images=f.images, lr=f.lr, batch_size=f.batch,
                            seed=f.seed, device=str(self.device), resume=True)
        return path

    def run(self) -> dict:
        self.open()
        self.check_budgets()
        started = time.time()
        self._certify(self.model, self.out / "fp32" / "certify", "fp32")
        for budget in self.cfg.search.budgets:
            for method in self.cfg.search.methods:
                folder = budget_dir(self.out, budget) / method
                policy = self._search(budget, method, folder)
                qmodel, _ = load_checkpoint(self._quantize(policy, folder), map_location=self.device)
                self._certify(qmodel, folder / "certify", f"{method}@{float(budget):g}")
        _say(f"all stages done in {time.time() - started:.0f}s (this session); writing the report")
        return write_report(self.out)


def run_pipeline(cfg: RunConfig, out: str | Path, resume: bool = False, progress: bool = True) -> dict:
    """Run or resume the main job; returns the results written to ``out/results.json``."""
    return Pipeline(cfg, out, resume, progress).run()
