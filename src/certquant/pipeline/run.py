"""``certquant run``: full precision certified once, each (budget, method) searched, its best policy quantized and
fine-tuned with noise, certified with full CERTIFY, and everything reported.

Run folder (every stage keeps its output, so ``resume`` continues at the stage and image where a run stopped)::

    run.json                          the resolved config, the checkpoint's hash, the test indices and the stages
                                      (budget, method, folder): the run's identity (resume must match)
    fp32/certify/                     CERTIFY of the full-precision model on the test subset
    fp32/model.onnx                   with ``certify.runtime: onnx``: the file certified in fp32/certify/ (and in
                                      budget-<F>/<method>/certify/ the stage's model.onnx is the one certified)
    budget-<F>/<method>/search/       the search run folder (history.jsonl, best_policy.json, state.pt, summary.json)
    budget-<F>/<method>/model.pt      the best policy, calibrated on noisy images and fine-tuned with noise
    budget-<F>/<method>/certify/      CERTIFY of that quantized model on the same test subset
    budget-<F>/<method>/model.onnx    with ``export.format: onnx``: the exported file, its certificate card inside
    budget-<F>/<method>/onnx-certify/ CERTIFY of the exported file (run by onnxruntime) on the same test subset
    budget-<F>/<method>/agreement.json  share of noisy test samples where the file and the PyTorch model agree
    results.json, report.md, report.html, *.png    (certquant.report.run_report)

The stages are a task graph (``Pipeline.tasks``): FP32's certification, and per (budget, method) a search, then the
fine-tune of its policy, then the certification of that model. The config's ``engine`` runs it: ``local`` one
stage after another in this process (as listed), ``ray`` each stage as a Ray task with ``engine.cpus_per_worker``
cores and ``engine.gpus_per_worker`` of a GPU, as soon as the stages it needs are done. Each stage writes its own
folder (on a multi-machine cluster the run folder must be on storage every node sees) and is skipped on resume when
its output exists, so a run resumes with either engine.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from certquant.data import every_kth, load_dataset
from certquant.engine import Task, make_engine
from certquant.models import load_checkpoint, resolve_checkpoint
from certquant.pipeline.config import RunConfig, config_from_dict
from certquant.quant import LayerInfo, Policy, quantizable_layers, quantize_checkpoint
from certquant.quant.checkpoint import input_shape
from certquant.report.run_report import write_report
from certquant.search import BitWidthEnv
from certquant.search.job import SearchJob
from certquant.search.runner import BEST_FILE, SUMMARY_FILE
from certquant.smoothing import certify_dataset
from certquant.train import resolve_device
from certquant.utils.errors import CertquantError
from certquant.utils.run_folder import RunFolder

# Settings added after runs were committed (benchmarks/state/): at these values they behave as before the setting
# existed (whatever the default is now), so they stay out of the identity and those runs resume; any other value is
# part of it.
LATER_SETTINGS: dict[tuple[str, str], Any] = {("search", "final_uniform_fallback"): False}


def budget_dir(out: Path, budget: float) -> Path:
    """The folder of one budget's stages inside the run folder ``out``."""
    return out / f"budget-{float(budget):g}"


def stage_folder(budget: float, method: str) -> str:
    """The folder of one (budget, method) stage, relative to the run folder (also recorded in the identity)."""
    return str(budget_dir(Path(), budget) / method)


def _say(message: str) -> None:
    print(f"[certquant run] {message}", file=sys.stderr, flush=True)


def final_model(
    cfg: RunConfig,
    checkpoint: str | Path,
    policy: Policy,
    path: Path,
    device: Any,
    sigma: float,
    finetune_seed: int | None = None,
    progress: bool = True,
) -> Path:
    """The final stage's model of ``policy``: quantized (calibrated on ``cfg.quantize.calibration_images`` training
    images with noise ``sigma``) and fine-tuned with that noise as ``cfg.finetune`` says (``finetune_seed`` replaces
    its seed: a replicate), written to ``path``; resumable, and kept when ``path`` exists. The benchmarks' truth pool
    (benchmarks/bench_truth.py) uses it too."""
    q, f = cfg.quantize, cfg.finetune
    if path.exists():
        return path
    seed = f.seed if finetune_seed is None else finetune_seed
    _say(
        f"quantize + fine-tune {path.parent.name}: {f.epochs} epoch(s) on {f.images} training images with noise "
        f"sigma {sigma}"
    )
    finetuning = replace(f, seed=seed)
    quantize_checkpoint(
        checkpoint, policy, path, q, finetuning, str(device), resume=True, sigma=sigma, progress=progress
    )
    return path


class Pipeline:
    """One run of the main job: everything is loaded and validated when it is built, nothing is written until
    ``run()`` (or ``search_only()``) claims the run folder and executes (or resumes) every stage in order."""

    def __init__(self, cfg: RunConfig, out: str | Path, resume: bool = False, progress: bool = True):
        self.cfg, self.out, self.resume, self.progress = cfg, Path(out), resume, progress
        self.device = resolve_device(cfg.device)
        self.checkpoint = resolve_checkpoint(cfg.checkpoint)
        self.model, self.info = load_checkpoint(self.checkpoint, expect_dataset=cfg.dataset, map_location=self.device)
        self.sigma = float(cfg.sigma if cfg.sigma is not None else self.info["sigma"])
        images, labels = load_dataset(self.info["dataset"], "test")
        self.test_images, self.test_labels = images, labels
        self.indices = every_kth(len(images), cfg.certify.skip, cfg.certify.max_images)
        self.stages = [(float(b), m) for b in cfg.search.budgets for m in cfg.search.methods]
        for budget in cfg.search.budgets:  # a budget no policy can meet fails here, before anything is written
            BitWidthEnv(self.search_layers(), cfg.search.env(budget), arch=self.info["arch"])
        if cfg.certify.runtime == "onnx":  # refused before anything is written when the deploy extra is missing
            from certquant.deploy.deps import require

            for module in ("onnx", "onnxruntime"):
                require(module)
        self.job = SearchJob(self.model, self.info, self.sigma, cfg.search, cfg.certify, self.device)
        self.job.check_validation_images(cfg.search.methods)  # too few held-out images fail here, not after a search
        self.folder = RunFolder(self.out, "run", self.identity())

    def search_layers(self) -> list[LayerInfo]:
        """The checkpoint's quantizable layers, in forward order."""
        return quantizable_layers(self.model, input_shape(self.info))

    def identity(self) -> dict[str, Any]:
        """What must match on resume: the config without its engine (either engine resumes the other's run) and
        without the settings added since runs were committed, while they hold their former behaviour (those runs
        resume)."""
        config = {k: v for k, v in self.cfg.to_dict().items() if k != "engine"}
        for (section, key), former in LATER_SETTINGS.items():
            if config[section].get(key) == former:
                del config[section][key]
        return {
            "format": "certquant-run",
            "version": 2,
            "config": config,
            "checkpoint": self.checkpoint,
            "checkpoint_sha256": self.info["sha256"],
            "sigma": self.sigma,
            "test_indices": self.indices,
            "stages": [{"budget": b, "method": m, "folder": stage_folder(b, m)} for b, m in self.stages],
        }

    # -- stages ---------------------------------------------------------------------------------------------------

    def _certify(self, model: Any, out_dir: Path, name: str) -> dict:
        c = self.cfg.certify
        _say(
            f"certify {name}: {len(self.indices)} test images, n0={c.n0}, n={c.n}, alpha={c.alpha}, sigma={self.sigma}"
        )
        return certify_dataset(
            model,
            self.test_images,
            self.test_labels,
            self.indices,
            out_dir,
            self.sigma,
            c.n0,
            c.n,
            c.alpha,
            c.batch,
            c.seed,
            identity={"name": name},
            provenance={"model": name, "runtime": self.cfg.certify.runtime},
            input_shape=input_shape(self.info),
            progress=self.progress,
            channels_last=self.device.type == "cpu",
            resume=True,
        )

    def _runnable(self, model: Any, checkpoint: str | Path, onnx_path: Path) -> Any:
        """What CERTIFY runs: ``model`` itself, or with ``certify.runtime: onnx`` the export of ``checkpoint`` to
        ``onnx_path`` (made once; the export settings of ``export``) run by onnxruntime."""
        if self.cfg.certify.runtime == "torch":
            return model
        from certquant.deploy import exported_classifier

        return exported_classifier(checkpoint, onnx_path, self.cfg.export.opset, self.cfg.export.integer_kernels)

    def search(self, budget: float, method: str) -> Policy:
        """The search's best policy or, with a final selection (``search.final_top_k`` > 1 or the uniform fallback), the
        best of its candidates on fresh images."""
        s = self.cfg.search
        search_dir = self.out / stage_folder(budget, method) / "search"
        if not (search_dir / SUMMARY_FILE).exists():  # a finished search is read back, not rebuilt
            search, evaluator = self.job.build(method, budget, search_dir)
            search.open(resume=True)
            _say(
                f"search {method} at budget {budget:g}: {search.total_episodes} episode(s) on "
                f"{len(evaluator.indices)} images"
            )
            search.run(progress=self.progress, reference=evaluator.reference())
        if not s.has_final_selection(method):
            return Policy.load(search_dir / BEST_FILE)
        _say(
            f"final selection {method} at budget {budget:g}: top {s.final_top_k}"
            f"{' and uniform bits' if s.final_uniform_fallback else ''} re-scored on {s.final_images} fresh images"
        )
        return self.job.final_selection(search_dir, method, budget)

    def _score_acr(self, budget: float, method: str, search_dir: Path) -> None:
        """ARQ's search-set ACR of every policy a search with another reward evaluated (the report's BitOPs-vs-ACR
        plot shows every method's policies on the same axes); resumable, one line per policy."""
        _say(f"score {method}'s policies at budget {budget:g} with ARQ's certified radius on the same search set")
        self.job.score_policies(search_dir, progress=self.progress)

    def _quantize(self, policy: Policy, folder: Path) -> Path:
        return final_model(
            self.cfg, self.checkpoint, policy, folder / "model.pt", self.device, self.sigma, progress=self.progress
        )

    def _deploy(self, qmodel: Any, folder: Path, name: str) -> None:
        """``export.format: onnx``: export the final model, compare predictions on noisy test samples, certify the
        file as onnxruntime runs it and write the certificate card into it (each step skipped when its output
        exists)."""
        from certquant.deploy import export_checkpoint, load_onnx, prediction_agreement, write_card
        from certquant.utils.io import atomic_write_json

        e, path = self.cfg.export, folder / "model.onnx"
        if not path.exists():
            _say(f"export {name} to {path} (opset {e.opset})")
            export_checkpoint(folder / "model.pt", path, e.opset, e.integer_kernels)
        onnx_model, _ = load_onnx(path)
        if not (folder / "agreement.json").exists():
            c = self.cfg.certify
            agreement = prediction_agreement(
                qmodel.cpu(),
                onnx_model,
                self.test_images,
                self.indices,
                self.sigma,
                e.agreement_samples,
                c.seed,
                c.batch,
            )
            atomic_write_json(folder / "agreement.json", agreement)
        if e.certify and self.cfg.certify.runtime == "onnx":  # certify/ is already the file's certification
            write_card(path, folder / "certify")
        elif e.certify:
            write_card(path, self._certify(onnx_model, folder / "onnx-certify", f"{name} (onnx)"))

    def search_only(self) -> dict[tuple[float, str], Policy]:
        """Claim the run folder and run only the searches (``certquant search``): the best policy of each stage."""
        self.folder.claim(self.resume)
        return {(b, m): self.search(b, m) for b, m in self.stages}

    # -- the task graph -------------------------------------------------------------------------------------------

    def stage(self, stage: str, budget: float | None = None, method: str | None = None, previous: Any = None) -> Any:
        """Run (or skip, when done) one stage: ``certify-fp32``; ``search`` -> Policy; ``quantize`` (of ``previous``,
        the search's policy) -> model path; ``certify`` (of ``previous``, that path)."""
        if stage == "certify-fp32":
            fp32 = self._runnable(self.model, self.checkpoint, self.out / "fp32" / "model.onnx")
            self._certify(fp32, self.out / "fp32" / "certify", "fp32")
            return None
        if budget is None or method is None:
            raise CertquantError(f"pipeline stage '{stage}' needs a budget and a method")
        folder = self.out / stage_folder(budget, method)
        if stage == "search":
            policy = self.search(budget, method)
            if method == "haq":  # HAQ's policies scored with ARQ's estimator too, for the BitOPs-vs-ACR plot
                self._score_acr(budget, method, folder / "search")
            return policy
        if stage == "quantize":
            return str(self._quantize(previous, folder))
        if stage == "certify":
            qmodel, _ = load_checkpoint(previous, map_location=self.device)
            runnable = self._runnable(qmodel, previous, folder / "model.onnx")
            self._certify(runnable, folder / "certify", f"{method}@{budget:g}")
            if self.cfg.export.enabled:
                self._deploy(qmodel, folder, f"{method}@{budget:g}")
            return None
        raise CertquantError(f"unknown pipeline stage '{stage}'")

    def tasks(self) -> list[Task]:
        """The stages as tasks, in the order the local engine runs them."""
        spec = (self.cfg.to_dict(), str(self.out))
        tasks = [Task("certify fp32", run_stage, (spec, "certify-fp32"))]
        for budget, method in self.stages:
            name = f"{method}@{budget:g}"
            tasks += [
                Task(f"search {name}", run_stage, (spec, "search", budget, method)),
                Task(f"fine-tune {name}", run_stage_after, (spec, "quantize", budget, method), (f"search {name}",)),
                Task(f"certify {name}", run_stage_after, (spec, "certify", budget, method), (f"fine-tune {name}",)),
            ]
        return tasks

    def run(self) -> dict:
        with make_engine(self.cfg.engine) as engine:
            engine.check_device(self.device.type)  # e.g. more GPUs than the cluster has: refused before anything
            self.folder.claim(self.resume)
            started = time.perf_counter()  # a duration: immune to wall-clock jumps
            _PIPELINES[_spec_key((self.cfg.to_dict(), str(self.out)))] = self
            try:
                engine.run_graph(
                    self.tasks(), progress=self.progress and self.cfg.engine.engine != "local", desc="run stages"
                )
            finally:
                _PIPELINES.clear()
        _say(f"all stages done in {time.perf_counter() - started:.0f}s (this session); writing the report")
        return write_report(self.out)


_PIPELINES: dict[str, Pipeline] = {}  # per process: the open pipeline of a run, so its stages load data once


def _spec_key(spec: tuple[dict[str, Any], str]) -> str:
    return json.dumps(spec, sort_keys=True, default=str)


def run_stage(
    spec: tuple[dict[str, Any], str], stage: str, budget: float | None = None, method: str | None = None
) -> Any:
    """A task of ``Pipeline.tasks``; ``spec`` = (config dict, run folder). In the driver's process the open
    ``Pipeline`` runs it; on a Ray worker one is opened (resume, no progress bars) once per process and reused."""
    return run_stage_after(None, spec, stage, budget, method)


def run_stage_after(
    previous: Any, spec: tuple[dict[str, Any], str], stage: str, budget: float | None = None, method: str | None = None
) -> Any:
    """``run_stage`` of a stage that takes the result of the stage before it (a policy, a model path)."""
    key = _spec_key(spec)
    if key not in _PIPELINES:
        _PIPELINES.clear()
        _PIPELINES[key] = Pipeline(config_from_dict(spec[0]), spec[1], resume=True, progress=False)
    return _PIPELINES[key].stage(stage, budget, method, previous=previous)


def run_pipeline(cfg: RunConfig, out: str | Path, resume: bool = False, progress: bool = True) -> dict:
    """Run or resume the main job; returns the results written to ``out/results.json``."""
    return Pipeline(cfg, out, resume, progress).run()
