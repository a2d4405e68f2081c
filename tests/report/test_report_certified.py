"""The certified-accuracy table and plot, from hand-written run folders."""

from __future__ import annotations

import json

import pytest

from certquant.report import certified_accuracy_table, load_certify_run, plot_certified_accuracy
from certquant.utils.errors import CertquantError


def _run(folder, radii_correct, indices=None):
    folder.mkdir()
    lines = [
        json.dumps({"index": i, "label": 0, "predicted": 0 if ok else -1, "radius": r, "correct": ok, "seconds": 1.0})
        for i, (r, ok) in enumerate(radii_correct)
    ]
    (folder / "certificates.jsonl").write_text("\n".join(lines) + "\n")
    if indices is not None:
        (folder / "summary.json").write_text(json.dumps({"indices": indices}))
    return folder


def test_table_side_by_side_and_plot(tmp_path):
    a = load_certify_run(_run(tmp_path / "a", [(0.6, True), (0.3, True), (0.0, False), (0.1, True)]))
    b = load_certify_run(_run(tmp_path / "b", [(0.2, True), (0.0, False)]))
    table = certified_accuracy_table([a, b]).splitlines()
    assert table[0] == "| run | images | ACR | r=0 | r=0.25 | r=0.5 | r=0.75 | abstain |"
    assert table[2] == "| a | 4 | 0.250 | 0.750 | 0.500 | 0.250 | 0.000 | 0.250 |"
    assert table[3] == "| b | 2 | 0.100 | 0.500 | 0.000 | 0.000 | 0.000 | 0.500 |"
    png = plot_certified_accuracy([a, b], tmp_path / "plot.png")
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_summary_indices_select_records(tmp_path):
    run = load_certify_run(_run(tmp_path / "r", [(0.5, True), (0.4, True), (0.3, True)], indices=[0, 2]))
    assert [r["index"] for r in run.records] == [0, 2]


def test_missing_run(tmp_path):
    with pytest.raises(CertquantError, match="no certificates.jsonl"):
        load_certify_run(tmp_path)
