"""bench_truth end to end at a tiny size: the pool (distinct, 85-100% of the budget, searched policies first), the
held-out images (neither search, final-selection nor test images), the final stage's fine-tune per replicate, the
metrics from the certificates, resume giving the same results, and the result files."""

from __future__ import annotations

import json

import pytest
import torch

import bench_truth
from certquant.models import load_checkpoint
from certquant.quant import Policy, bitops_fraction, quantizable_layers
from certquant.quant.checkpoint import input_shape
from certquant.search.job import validation_indices
from certquant.smoothing.metrics import certified_accuracy
from certquant.utils import read_jsonl

BUDGET = 0.0125


def _run(tiny_config, work, results, *extra):
    return bench_truth.main(
        [
            "--config",
            str(tiny_config),
            "--budget",
            str(BUDGET),
            "--policies",
            "4",
            "--replicates",
            "2",
            "--images",
            "5",
            "--work",
            str(work),
            "--results",
            str(results),
            "--name",
            "truth-tiny",
            "--no-progress",
            *extra,
        ]
    )


def test_truth_pool_end_to_end(tiny_config, tiny_checkpoint, tmp_path):
    data = _run(tiny_config, tmp_path / "work", tmp_path / "results")
    model, info = load_checkpoint(tiny_checkpoint)
    layers = quantizable_layers(model, input_shape(info))
    rows = data["policies"]
    assert len(rows) == 4
    assert len({(tuple(r["w_bits"]), tuple(r["a_bits"])) for r in rows}) == 4
    for r in rows:
        assert 0.85 <= r["budget_use"] <= 1.0
        assert len(r["replicates"]) == 2 and [x["finetune_seed"] for x in r["replicates"]] == [0, 1]
    held_out = data["provenance"]["validation_indices"]
    search = validation_indices(info, 4, 0)
    final = validation_indices(info, 4, 0, offset=4)
    assert len(held_out) == 5 and not set(held_out) & (set(search) | set(final))
    # metrics are those of the replicate's certificates on exactly these images
    records = list(read_jsonl(tmp_path / "work" / "policy-00" / "certify-ft1" / "certificates.jsonl"))
    assert sorted(r["index"] for r in records) == held_out
    rep = rows[0]["replicates"][1]
    assert rep["cert_acc_0.25"] == certified_accuracy(records, 0.25)
    assert rep["clean_accuracy"] == certified_accuracy(records, 0.0)
    # the fine-tune seed is the replicate's: the two models differ
    a, _ = load_checkpoint(tmp_path / "work" / "policy-00" / "model-ft0.pt")
    b, _ = load_checkpoint(tmp_path / "work" / "policy-00" / "model-ft1.pt")
    pairs = zip(a.state_dict().values(), b.state_dict().values())
    assert any((p != q).any() for p, q in pairs if p.is_floating_point())
    stored = Policy.from_dict(load_checkpoint(tmp_path / "work" / "policy-00" / "model-ft0.pt")[1]["policy"])
    assert bitops_fraction(layers, stored) == pytest.approx(rows[0]["bitops_fraction"])
    saved = json.loads((tmp_path / "results" / "truth-tiny.json").read_text())
    assert saved["policies"][0]["mean"]["acr"] == pytest.approx(rows[0]["mean"]["acr"])
    assert "| policy |" in (tmp_path / "results" / "truth-tiny.md").read_text()
    # the same command resumes: nothing re-run, the same numbers
    again = _run(tiny_config, tmp_path / "work", tmp_path / "results")
    assert [r["replicates"][0]["acr"] for r in again["policies"]] == [r["replicates"][0]["acr"] for r in rows]


def test_searched_policies_join_the_pool_first(tiny_config, tmp_path):
    from certquant.models import resolve_checkpoint
    from certquant.pipeline import load_config
    from certquant.search.job import SearchJob

    cfg = load_config(tiny_config, ["search.episodes=6"])
    model, info = load_checkpoint(resolve_checkpoint(cfg.checkpoint))
    job = SearchJob(model, info, 0.25, cfg.search, cfg.certify, torch.device("cpu"))
    search, _ = job.build("random", BUDGET, tmp_path / "s")
    search.run(progress=False)
    pool = bench_truth.TruthPool(cfg, BUDGET, tmp_path / "w", 3, 1, 2, [tmp_path / "s"], top_k=2, progress=False)
    drawn = pool.pool()
    history = list(read_jsonl(tmp_path / "s" / "history.jsonl"))
    in_band = [h for h in bench_truth.top_policies(history, 2) if 0.85 <= h["bitops_fraction"] / BUDGET <= 1.0]
    assert [s for s, _ in drawn[: len(in_band)]] == [f"{tmp_path / 's'}#{h['episode']}" for h in in_band]
    assert all(s == "random" for s, _ in drawn[len(in_band) :])


def test_bad_input_is_one_line(tiny_config, tmp_path):
    with pytest.raises(SystemExit, match="^error: .*search history"):
        _run(tiny_config, tmp_path / "w", tmp_path / "r", "--search-dirs", str(tmp_path))


def test_onnx_runtime_gives_the_same_certificates(tiny_config, tmp_path):
    """certify.runtime=onnx certifies the bit-exact export with ONNX Runtime: the same certificates as PyTorch's."""
    pytest.importorskip("onnxruntime")
    extra = ("--policies", "2", "--replicates", "1")
    torch_run = _run(tiny_config, tmp_path / "torch", tmp_path / "r1", *extra)
    onnx_run = _run(tiny_config, tmp_path / "onnx", tmp_path / "r2", *extra, "certify.runtime=onnx")
    assert (tmp_path / "onnx" / "policy-00" / "model-ft0.onnx").is_file()
    for policy in ("policy-00", "policy-01"):
        a = list(read_jsonl(tmp_path / "torch" / policy / "certify-ft0" / "certificates.jsonl"))
        b = list(read_jsonl(tmp_path / "onnx" / policy / "certify-ft0" / "certificates.jsonl"))
        assert [(r["c_a"], r["n_a"], r["pa_lower"]) for r in a] == [(r["c_a"], r["n_a"], r["pa_lower"]) for r in b]
    assert [r["mean"] for r in torch_run["policies"]] == [r["mean"] for r in onnx_run["policies"]]


def test_only_splits_the_pool_and_the_full_command_gathers_it(tiny_config, tmp_path):
    """--only works on part of the pool and writes no result file; the command without it resumes that work and
    gives the numbers of a straight run."""
    extra = ("--policies", "2", "--replicates", "1")
    part = _run(tiny_config, tmp_path / "split", tmp_path / "r1", *extra, "--only", "1")
    assert [r["id"] for r in part["policies"]] == [1] and not (tmp_path / "r1" / "truth-tiny.json").exists()
    gathered = _run(tiny_config, tmp_path / "split", tmp_path / "r1", *extra)
    straight = _run(tiny_config, tmp_path / "straight", tmp_path / "r2", *extra)
    assert [r["mean"] for r in gathered["policies"]] == [r["mean"] for r in straight["policies"]]


def test_finished_replicates_resume_without_their_models(tiny_config, tmp_path):
    """The pool's state without its models (as committed under benchmarks/state/) resumes to the same numbers: a
    replicate whose certification finished is read back, not fine-tuned again."""
    extra = ("--policies", "2", "--replicates", "1")
    first = _run(tiny_config, tmp_path / "work", tmp_path / "r", *extra)
    for model in [*(tmp_path / "work").rglob("*.pt"), *(tmp_path / "work").rglob("*.onnx")]:
        model.unlink()
    again = _run(tiny_config, tmp_path / "work", tmp_path / "r", *extra)
    assert not list((tmp_path / "work").rglob("*.pt"))  # nothing was fine-tuned again
    assert [r["mean"] for r in again["policies"]] == [r["mean"] for r in first["policies"]]
