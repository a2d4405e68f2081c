"""The main job end to end on a tiny synthetic setup: outputs, kill-and-resume equality, bad input."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from certquant.cli.main import app
from certquant.models import load_checkpoint
from certquant.pipeline.config import config_from_dict, load_config
from certquant.pipeline.run import run_pipeline
from certquant.quant import Policy
from certquant.quant.quantize import quantized_policy
from certquant.train import TrainConfig, train
from certquant.utils.errors import CertquantError
from certquant.utils.io import read_jsonl
from run_results import without

REPO = Path(__file__).resolve().parents[2]
# wall-clock fields, the machine, and the checkpoint hashes (a quantized checkpoint records when it was made)
TIMING_KEYS = ("seconds", "started", "software", "machine", "checkpoint_sha256")
PATH_KEYS = {"search", "checkpoint", "state_dir"}  # where each run lives


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    cfg = TrainConfig(
        dataset="synthetic",
        model="small-cnn",
        sigma=0.25,
        epochs=1,
        lr=0.05,
        val_size=200,
        train_limit=600,
        device="cpu",
    )
    return str(train(cfg, tmp_path_factory.mktemp("ckpt")))


def tiny_config(checkpoint: str, **search):
    return config_from_dict(
        {
            "dataset": "synthetic",
            "checkpoint": checkpoint,
            "device": "cpu",
            "certify": {"n0": 10, "n": 100, "skip": 100, "max_images": 3, "batch": 50},
            "search": {
                "budgets": [0.015625],
                "methods": ["arq", "uniform"],
                "episodes": 3,
                "agent": {"warmup_episodes": 2},
                "search_images": 3,
                "final_images": 5,  # the final selection (uniform fallback, on by default) on few images
                "n_p": 40,
                **search,
            },
            "finetune": {"epochs": 1, "images": 128, "batch": 64},
            "quantize": {"calibration_images": 32},
        }
    )


def strip_timing(value):
    """results.json without wall-clock fields and run paths (they differ between two runs of the same work)."""
    return without(value, TIMING_KEYS, PATH_KEYS)


def interrupt_run(cfg, out: Path, monkeypatch) -> None:
    """Run the pipeline into ``out`` and interrupt it at the second image of the arq model's certification."""
    import certquant.smoothing.runner as runner

    original, calls = runner.certify, []

    def killed_mid_stage(*args, **kwargs):
        calls.append(1)
        if len(calls) == 5:  # FP32's three images, then the arq model's first
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(runner, "certify", killed_mid_stage)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(cfg, out, progress=False)
    monkeypatch.setattr(runner, "certify", original)


def test_killed_run_resumes_to_the_same_results(checkpoint, tmp_path, monkeypatch):
    cfg = tiny_config(checkpoint)
    straight = run_pipeline(cfg, tmp_path / "straight", progress=False)
    for name in ("results.json", "report.md", "report.html", "certified_accuracy.png", "bitops_vs_acr.png"):
        assert (tmp_path / "straight" / name).is_file(), name
    assert [row["name"] for row in straight["rows"]] == ["FP32", "arq@0.015625", "uniform@0.015625"]
    assert all(row["bitops_fraction"] <= 0.015625 for row in straight["rows"][1:])

    interrupt_run(cfg, tmp_path / "killed", monkeypatch)
    assert not (tmp_path / "killed" / "results.json").exists()
    with pytest.raises(CertquantError, match="--resume"):
        run_pipeline(cfg, tmp_path / "killed", progress=False)
    resumed = run_pipeline(cfg, tmp_path / "killed", resume=True, progress=False)
    assert strip_timing(resumed) == strip_timing(straight)
    saved = json.loads((tmp_path / "killed" / "results.json").read_text())
    assert strip_timing(saved) == strip_timing(json.loads(json.dumps(straight)))


def test_a_run_resumes_without_its_models_and_search_states(checkpoint, tmp_path, monkeypatch):
    """What benchmarks/state/ commits (a run folder without *.pt, *.onnx and fine-tuning states) resumes to the same
    results: models are re-made deterministically, and a search left unfinished without its state.pt restarts from
    its first episode."""
    cfg = tiny_config(checkpoint)
    straight = run_pipeline(cfg, tmp_path / "straight", progress=False)
    interrupt_run(cfg, tmp_path / "kept", monkeypatch)
    run = tmp_path / "kept"
    for path in [*run.rglob("*.pt"), *run.rglob("*.onnx")]:
        path.unlink()
    for path in run.rglob("*.finetune"):
        shutil.rmtree(path)
    (run / "budget-0.015625" / "arq" / "search" / "summary.json").unlink()  # the search, as if left unfinished
    resumed = run_pipeline(cfg, run, resume=True, progress=False)
    assert strip_timing(resumed) == strip_timing(straight)


@pytest.fixture(scope="module")
def uniform_run(checkpoint, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("uniform") / "run"
    run_pipeline(tiny_config(checkpoint, methods=["uniform"]), out, progress=False)
    return out


def test_report_html_is_self_contained(uniform_run):
    page = (uniform_run / "report.html").read_text()
    assert page.startswith("<!doctype html>") and "data:image/png;base64," in page and "<table>" in page
    assert "src='http" not in page and 'src="http' not in page
    result = CliRunner().invoke(app, ["report", str(uniform_run)])
    assert result.exit_code == 0 and "| FP32 |" in result.output


@pytest.mark.skipif(
    shutil.which("chromium") is None, reason="headless Chromium not installed (apt-get install chromium)"
)
def test_report_html_renders_in_headless_chromium(uniform_run, tmp_path):
    shot = tmp_path / "report.png"
    subprocess.run(
        [
            "chromium",
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--window-size=1200,1400",
            f"--screenshot={shot}",
            (uniform_run / "report.html").as_uri(),
        ],
        capture_output=True,
        timeout=120,
        check=True,
    )
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000  # a page, not a blank


def test_resume_with_another_config_is_refused(checkpoint, tmp_path):
    run_pipeline(tiny_config(checkpoint, methods=["uniform"]), tmp_path / "run", progress=False)
    with pytest.raises(CertquantError, match="other settings"):
        run_pipeline(
            tiny_config(checkpoint, methods=["uniform"], seed=1), tmp_path / "run", resume=True, progress=False
        )


def test_default_config_file_equals_built_in_defaults():
    assert load_config(REPO / "configs" / "default.yaml") == load_config(None)
    load_config(REPO / "configs" / "paper-cifar10-resnet20.yaml")


def test_final_selection_rescores_the_top_policies_on_fresh_images(checkpoint, tmp_path):
    out = tmp_path / "run"
    cfg = tiny_config(checkpoint, final_top_k=2, final_uniform_fallback=False)
    results = run_pipeline(cfg, out, progress=False)
    selection = json.loads((out / "budget-0.015625" / "arq" / "search" / "final_selection.json").read_text())
    assert selection["k"] == 2 and len(selection["candidates"]) == 2
    assert not (out / "budget-0.015625" / "uniform" / "search" / "final_selection.json").exists()
    best = max(selection["candidates"], key=lambda c: c["final_reward"])
    arq = next(row for row in results["rows"] if row["name"] == "arq@0.015625")
    model, _ = load_checkpoint(out / "budget-0.015625" / "arq" / "model.pt")
    assert quantized_policy(model).w_bits == best["w_bits"] and quantized_policy(model).a_bits == best["a_bits"]
    assert Policy.from_dict(selection["policy"]).w_bits == best["w_bits"] and arq["bitops_fraction"] <= 0.015625
    with pytest.raises(CertquantError, match="final_top_k"):
        tiny_config(checkpoint, final_top_k=0)


def test_uniform_fallback_joins_the_final_selection_even_with_top_1(checkpoint, tmp_path):
    """search.final_uniform_fallback (on by default): uniform bits under the budget are one more candidate of the
    final selection."""
    from certquant.pipeline.run import Pipeline

    out = tmp_path / "run"
    cfg = tiny_config(checkpoint, methods=["arq", "uniform"])
    results = run_pipeline(cfg, out, progress=False)
    selection = json.loads((out / "budget-0.015625" / "arq" / "search" / "final_selection.json").read_text())
    uniform = json.loads((out / "budget-0.015625" / "uniform" / "search" / "best_policy.json").read_text())
    fallback = selection["candidates"][-1]
    assert selection["k"] == 1 and selection["fallback"] is True and fallback["episode"] is None
    assert fallback["w_bits"] == [layer["w_bits"] for layer in uniform["layers"]]
    best = max(selection["candidates"], key=lambda c: c["final_reward"])
    model, _ = load_checkpoint(out / "budget-0.015625" / "arq" / "model.pt")
    assert quantized_policy(model).w_bits == best["w_bits"] and len(results["rows"]) == 3
    # the setting joins the run's identity only when on: runs made before it existed (off) resume unchanged
    assert "final_uniform_fallback" in Pipeline(cfg, out, resume=True).identity()["config"]["search"]
    plain = Pipeline(tiny_config(checkpoint, final_uniform_fallback=False), tmp_path / "plain", progress=False)
    assert "final_uniform_fallback" not in plain.identity()["config"]["search"]


def test_too_few_validation_images_for_the_final_selection_are_refused_before_any_work(checkpoint, tmp_path):
    from certquant.pipeline.run import Pipeline

    out = tmp_path / "run"
    with pytest.raises(CertquantError, match=r"fewer than the 10003 .* lower search.search_images or search.final_"):
        Pipeline(tiny_config(checkpoint, final_images=10000), out, progress=False)
    assert not out.exists()
    Pipeline(tiny_config(checkpoint, final_images=10000, final_uniform_fallback=False), out, progress=False)  # top 1


def test_final_selection_can_score_each_candidate_after_fine_tuning(checkpoint, tmp_path):
    """search.final_finetune_steps: the same search, its top k scored after noisy fine-tuning steps (recorded)."""
    runs = {}
    for steps in (None, 2):
        out = tmp_path / f"run-{steps}"
        run_pipeline(
            tiny_config(checkpoint, methods=["arq"], final_top_k=2, final_images=5, final_finetune_steps=steps),
            out,
            progress=False,
        )
        search = out / "budget-0.015625" / "arq" / "search"
        runs[steps] = (
            [line["reward"] for line in read_jsonl(search / "history.jsonl")],
            json.loads((search / "final_selection.json").read_text()),
        )
    (plain_history, plain), (tuned_history, tuned) = runs[None], runs[2]
    assert plain_history == tuned_history  # the search itself is untouched
    assert plain["finetune_steps"] == 0 and tuned["finetune_steps"] == 2
    assert [c["episode"] for c in plain["candidates"]] == [c["episode"] for c in tuned["candidates"]]
    assert [c["final_reward"] for c in plain["candidates"]] != [c["final_reward"] for c in tuned["candidates"]]
    with pytest.raises(CertquantError, match="final_finetune_steps"):
        tiny_config(checkpoint, final_finetune_steps=-1)


def test_run_sigma_other_than_the_checkpoints_holds_for_the_final_models(checkpoint, tmp_path):
    """One sigma per run: a config whose sigma (0.5) differs from the checkpoint's (0.25) calibrates and fine-tunes
    its final quantized models at 0.5, as it searches and certifies, and the written model records 0.5."""
    from certquant.pipeline.run import Pipeline
    from certquant.quant import quantizable_layers, quantize_checkpoint
    from certquant.quant.checkpoint import input_shape

    cfg = config_from_dict(tiny_config(checkpoint).to_dict(), ["sigma=0.5"])
    pipeline = Pipeline(cfg, tmp_path / "run", progress=False)
    assert pipeline.sigma == 0.5 and load_checkpoint(checkpoint)[1]["sigma"] == 0.25
    policy = Policy.uniform(quantizable_layers(pipeline.model, input_shape(pipeline.info)), 4)
    folder = tmp_path / "run" / "budget"
    folder.mkdir(parents=True)
    _, info = load_checkpoint(pipeline._quantize(policy, folder))
    assert info["sigma"] == 0.5
    assert info["calibration"]["sigma"] == 0.5 and info["calibration"]["base_sigma"] == 0.25
    assert info["finetune"]["sigma"] == 0.5
    # the activation ranges are those of calibrating on images with noise 0.5 (fine-tuning keeps them), not 0.25
    ranges = {
        s: load_checkpoint(
            quantize_checkpoint(
                checkpoint,
                policy,
                tmp_path / f"ref{s}.pt",
                cfg.quantize,
                sigma=s,
                device="cpu",
            )[1]
        )[1]["ranges"]
        for s in (0.25, 0.5)
    }
    assert info["ranges"] == ranges[0.5] != ranges[0.25]


def test_results_do_not_depend_on_the_thread_count(checkpoint, tmp_path):
    """The same run with torch at 1 and at 2 threads gives the same results.json (timings aside): forward passes and
    agent updates do not depend on the count, and fine-tuning runs at quant.finetuning.FINETUNE_THREADS."""
    cfg = tiny_config(checkpoint, methods=["arq", "haq"])
    one = run_pipeline(cfg, tmp_path / "one", progress=False)
    torch.set_num_threads(2)
    two = run_pipeline(cfg, tmp_path / "two", progress=False)
    assert json.loads((tmp_path / "one" / "run.json").read_text())["machine"]["torch_threads"] == 1
    assert json.loads((tmp_path / "two" / "run.json").read_text())["machine"]["torch_threads"] == 2
    assert strip_timing(one) == strip_timing(two)
