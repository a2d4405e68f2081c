"""The run report of a tiny real run (arq, haq, uniform on synthetic data): what results.json holds, and what a
reader sees when report.html is opened in headless Chromium (every method's policies in the scatter, labelled
layers, the per-layer bit chart, no raw index list above the fold)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from certquant.data import compact_indices, describe_indices, expand_indices, index_count
from certquant.pipeline.config import config_from_dict
from certquant.pipeline.run import run_pipeline
from certquant.report.run_report import pareto_series
from certquant.train import TrainConfig, train
from certquant.utils.io import file_sha256

METHODS = ["arq", "haq", "uniform"]
NAMES = [f"{m}@0.015625" for m in METHODS]
LAYERS = ["1.0", "1.3", "1.7", "1.9"]  # small-cnn's conv, conv, linear, linear
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("report")
    checkpoint = train(
        TrainConfig(
            dataset="synthetic",
            model="small-cnn",
            sigma=0.25,
            epochs=1,
            lr=0.05,
            val_size=200,
            train_limit=600,
            device="cpu",
        ),
        root / "ckpt",
    )
    cfg = config_from_dict(
        {
            "dataset": "synthetic",
            "checkpoint": str(checkpoint),
            "device": "cpu",
            "certify": {"n0": 10, "n": 100, "skip": 50, "max_images": 4, "batch": 50},
            "search": {
                "budgets": [0.015625],
                "methods": METHODS,
                "episodes": 3,
                "agent": {"warmup_episodes": 2},
                "search_images": 3,
                "final_images": 3,
                "n_p": 40,
            },
            "finetune": {"epochs": 1, "images": 128, "batch": 64},
            "quantize": {"calibration_images": 32},
        }
    )
    run_pipeline(cfg, root / "run", progress=False)
    return root / "run"


def test_results_hold_hashes_every_policy_layers_and_meaning(run):
    results = json.loads((run / "results.json").read_text())
    for row in results["rows"][1:]:
        folder = run / "budget-0.015625" / row["method"]
        assert row["checkpoint_sha256"] == file_sha256(folder / "model.pt")
    series = pareto_series(results)
    assert list(series) == NAMES  # HAQ's policies too, scored with ARQ's estimator after its search
    for name in NAMES:
        distinct = {
            (tuple(r["w_bits"]), tuple(r["a_bits"]))
            for r in map(
                json.loads,
                (run / "budget-0.015625" / name.split("@")[0] / "search" / "history.jsonl").read_text().splitlines(),
            )
        }
        row = next(r for r in results["rows"] if r["name"] == name)
        # the deployed policy is marked, unless it is the uniform fallback, which the search never proposed
        marked = 0 if (row["final_selection"] or {}).get("uniform_fallback") else 1
        assert len(series[name]) == len(distinct) and sum(p["chosen"] for p in series[name]) == marked
    assert all(p["acr_from"] == "ARQ's estimator after the search" for p in series["haq@0.015625"])
    assert [layer["name"] for layer in results["layers"]] == LAYERS
    assert [layer["label"] for layer in results["layers"]] == ["conv1", "conv2", "fc1", "fc2"]
    assert results["layers"][1]["weight_shape"] == [64, 32, 3, 3]
    assert abs(sum(layer["fp32_bitops_share"] for layer in results["layers"]) - 1) < 1e-12
    assert [c["name"] for c in results["comparisons"]] == NAMES
    for comparison in results["comparisons"]:
        assert comparison["acr_verdict"] in ("inside", "below", "above")
        assert "against FP32" in comparison["sentence"] and "paired 95% CI" in comparison["sentence"]
    assert results["provenance"]["test_indices"] == {"count": 4, "ranges": [[0, 200, 50]]}
    assert results["provenance"]["machine"]["torch_threads"] >= 1
    # the default final selection (uniform fallback) is told per searched row: which policy it deploys and why
    report = (run / "report.md").read_text()
    for row in results["rows"][1:]:
        choice = row["final_selection"]
        if row["method"] == "uniform":
            assert choice is None
            continue
        assert choice is not None and choice["candidates"] >= 2
        said = "deploys uniform bits" if choice["uniform_fallback"] else f"deploys episode {choice['episode']}'s"
        assert f"- {row['name']}: " in report and said in report.split(f"- {row['name']}: ")[1].split("\n")[0]
    summary = report.split("\n\n")[1]
    assert "n0 = 10, n = 100, alpha = 0.001 on 4 test images (0 to 150 in steps of 50)" in summary


def test_index_sets_round_trip():
    for indices in ([], [7], [3, 4], list(range(0, 10_000, 100)), [1, 3, 4, 10, 20, 30, 31], [0, 1, 2, 9, 11, 13]):
        assert expand_indices(compact_indices(indices)) == indices
        assert index_count(compact_indices(indices)) == index_count(indices) == len(indices)  # compact or a list
    assert compact_indices(list(range(0, 10_000, 100))) == {"count": 100, "ranges": [[0, 10_000, 100]]}
    assert describe_indices([0, 1, 2, 9, 11, 13]) == "0-2; 9 to 13 in steps of 2"


PROBE = """<script>
window.addEventListener('load', () => {
  const fold = window.innerHeight, out = {fold: fold, scatter: {}, bars: {}, above: ''};
  for (const g of document.querySelectorAll("#pareto svg g[id^='policies-']"))
    out.scatter[g.id.slice('policies-'.length)] = g.querySelectorAll('use').length;
  out.scatterText = document.querySelector('#pareto svg').textContent;
  for (const b of document.querySelectorAll("#bits svg [id^='bits-']")) {
    const r = b.getBoundingClientRect();
    out.bars[b.id] = r.height > 0 && r.width > 0;
  }
  out.bitsText = document.querySelector('#bits svg').textContent;
  out.layerTable = [...document.querySelectorAll('table.layers tbody tr')].map(tr => tr.innerText);
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  while (walker.nextNode()) {
    const node = walker.currentNode, el = node.parentElement;
    if (!el || el.closest('script') || el.id === 'probe') continue;
    const rects = [...el.getClientRects()];
    if (rects.some(r => r.height > 0 && r.top < fold)) out.above += node.textContent + ' ';
  }
  out.detailsOpen = [...document.querySelectorAll('details')].map(d => d.open);
  const pre = document.createElement('pre'); pre.id = 'probe'; pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script></body>"""


@pytest.mark.skipif(
    CHROMIUM is None,
    reason="no browser: headless Chromium is not installed (Debian: apt-get install "
    "chromium chromium-driver; scripts/setup.sh does it when run as root)",
)
def test_report_html_in_headless_chromium(run, tmp_path):
    """Layout measured by the browser: a probe script appended to a copy of report.html records what is drawn."""
    page = tmp_path / "probe.html"
    page.write_text((run / "report.html").read_text().replace("</body>", PROBE))
    command = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-dev-shm-usage",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--window-size=1280,900",
        "--virtual-time-budget=10000",
        "--dump-dom",
        page.as_uri(),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=180)
    match = re.search(r'<pre id="probe">(.*?)</pre>', done.stdout, re.S)
    assert match, f"no probe output (exit {done.returncode}): {done.stderr[-2000:]}"
    import html

    seen = json.loads(html.unescape(match.group(1)))
    results = json.loads((run / "results.json").read_text())
    series = pareto_series(results)
    assert seen["scatter"] == {name: len(series[name]) for name in NAMES}  # every method's policies, HAQ's too
    assert "budget 1.5625% of FP32 BitOPs" in seen["scatterText"]
    assert all(f"{name}: {len(series[name])} polic" in seen["scatterText"] for name in NAMES)
    expected_bars = {f"bits-{name}-{which}-{layer}" for name in NAMES for which in "wa" for layer in LAYERS}
    assert set(seen["bars"]) == expected_bars and all(seen["bars"].values())  # drawn, with a size
    assert all(
        f"{label} ({layer})" in seen["bitsText"] for label, layer in zip(["conv1", "conv2", "fc1", "fc2"], LAYERS)
    )
    assert seen["layerTable"][1].split("\t")[:4] == ["conv2", "1.3", "Conv2d 3x3", "64x32x3x3"]
    above = seen["above"]
    assert "certquant report" in above and "n0 = 10, n = 100, alpha = 0.001" in above
    assert not re.search(r"(\d+\s*,\s*){9,}\d+", above), "a raw index list above the fold"
    assert "test_indices" not in above and seen["detailsOpen"] == [False]  # raw provenance collapsed, at the end
