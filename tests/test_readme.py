"""Every table of numbers in README.md matches the committed result file it quotes (benchmarks/results/, and the
zoo's manifest for the zoo table). A README table without a declared source fails the test, so a new figure cannot
enter the README without the file behind it.

The default run's table is checked against ``benchmarks/results/default-run/results.json``, which
``python benchmarks/default_run.py`` regenerates (it runs the README's ``certquant run``)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from certquant.report.run_report import summary_table

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
Table = dict  # {"line": int, "header": list[str], "rows": list[list[str]]}


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip())[1:-1]]


def markdown_tables(text: str) -> list[Table]:
    """Every pipe table of a markdown text: its first line number, header cells and body rows' cells."""
    tables, block = [], []
    for number, line in enumerate(text.splitlines() + [""], start=1):
        if line.startswith("|"):
            block.append((number, line))
        elif block:
            if len(block) >= 2 and set(block[1][1].replace("|", "").strip()) <= set("-: "):
                tables.append(
                    {"line": block[0][0], "header": _cells(block[0][1]), "rows": [_cells(row) for _, row in block[2:]]}
                )
            block = []
    return tables


def _rows_in(name: str) -> Callable[[Table], None]:
    """Every README row is a row of a table in benchmarks/results/<name> (cell by cell)."""

    def check(table: Table) -> None:
        source = {tuple(row) for t in markdown_tables((RESULTS / name).read_text()) for row in t["rows"]}
        for row in table["rows"]:
            assert tuple(row) in source, f"README line {table['line']}: row {row} is not in benchmarks/results/{name}"

    return check


def _numbers(cell: str) -> list[tuple[float, int]]:
    """The numbers in a cell with their decimal places ("99.92%" -> (99.92, 2); "10,000" -> (10000, 0))."""
    return [
        (float(m), len(m.split(".")[1]) if "." in m else 0)
        for m in re.findall(r"[-+]?\d+(?:\.\d+)?", cell.replace(",", ""))
    ]


def _digest_of(name: str, keys: int = 2, unchecked: tuple[str, ...] = ()) -> Callable[[Table], None]:
    """A README digest of a result table: each README row matches a row of benchmarks/results/<name> with the same
    first ``keys`` cells (of any of its tables) such that every number in the README row is a number of that row,
    rounded as the README shows it (but the ``unchecked`` columns, which the result file does not repeat: e.g. a
    policy's BitOPs fraction)."""

    def covers(row: list[str], header: list[str], source_row: list[str]) -> bool:
        values = [v for cell in source_row for v, _ in _numbers(cell)]
        return all(
            any(round(v, places) == value for v in values)
            for column, cell in zip(header[keys:], row[keys:])
            if column not in unchecked
            for value, places in _numbers(cell)
        )

    def check(table: Table) -> None:
        source = [row for t in markdown_tables((RESULTS / name).read_text()) for row in t["rows"]]
        for row in table["rows"]:
            candidates = [s for s in source if s[:keys] == row[:keys]]
            assert candidates, f"README line {table['line']}: no row {row[:keys]} in benchmarks/results/{name}"
            assert any(covers(row, table["header"], s) for s in candidates), (
                f"README line {table['line']}: a number of {row} is not in its row of benchmarks/results/{name}"
            )

    return check


def _default_run(table: Table) -> None:
    """The README's default-run table is exactly the table the committed run's results.json gives."""
    results = json.loads((RESULTS / "default-run" / "results.json").read_text())
    expected = markdown_tables(summary_table(results))[0]
    assert table["header"] == expected["header"]
    assert table["rows"] == expected["rows"], "README's default-run table differs from benchmarks/results/default-run"


def _zoo(table: Table) -> None:
    entries = {e["name"]: e for e in json.loads((ROOT / "src" / "certquant" / "zoo" / "zoo.json").read_text())}
    assert len(table["rows"]) == len(entries)
    for name, _, clean, noisy in table["rows"]:
        entry = entries[name.strip("`")]
        assert (clean, noisy) == (f"{100 * entry['clean_accuracy']:.2f}%", f"{100 * entry['noisy_accuracy']:.2f}%")


def _certify(table: Table) -> None:
    summary = json.loads((RESULTS / "certify-small-cnn-fmnist-s0.25-500" / "summary.json").read_text())

    def ci(key: str) -> str:
        return f"{summary[key]:.3f} (95% CI {summary[key + '_ci95'][0]:.3f}-{summary[key + '_ci95'][1]:.3f})"

    acc = summary["certified_accuracy"]
    expected = (
        [ci("clean_accuracy"), ci("acr")]
        + [f"{acc[r]:.3f}" for r in ("0.25", "0.5", "0.75", "1")]
        + [f"{summary['abstain_rate']:.3f}"]
    )
    assert table["rows"] == [expected]


def _irs(table: Table) -> None:
    """Each row's two measured speed-ups (two-sided, one-sided) are the benchmark file's, for that sigma, policy, n_p
    and number of images (the reference column quotes the reference implementation's published figures)."""
    for sigma, policy, n_p, images, two, one, _ in table["rows"]:
        if images == "500":
            text = (RESULTS / f"irs-s{sigma}-500.md").read_text()
        else:
            text = (RESULTS / "irs.md").read_text().split(f"## sigma = {sigma} (")[1].split("\n## ")[0]
        percent = n_p.split("%")[0]
        rows = [
            dict(zip(t["header"], row))
            for t in markdown_tables(text)
            for row in t["rows"]
            if row[0] == policy and row[2].endswith(f"({percent}%)")
        ]
        assert len(rows) == 1, (sigma, policy, n_p, images)
        got = rows[0]
        assert (two.replace("**", ""), one) == (got["speed-up 2s"], got["speed-up 1s"]), (sigma, policy, n_p, images)


def _irs_levels(table: Table) -> None:
    """Each row's ACR cost of IRS's exact level (with its interval) and the speed-ups at the exact and the paper's
    level are ``benchmarks/results/irs-levels.json``'s (sigma 0.5)."""
    policies = json.loads((RESULTS / "irs-levels.json").read_text())["sigmas"]["0.5"]["policies"]
    for policy, n_p, cost, two, one in table["rows"]:
        fraction = float(n_p.split("%")[0]) / 100
        rows = {
            d: next(r for r in policies[policy]["irs"][d] if abs(r["fraction"] - fraction) < 1e-9)
            for d in ("two-sided", "one-sided")
        }
        r2 = rows["two-sided"]
        assert cost == f"{r2['level_cost']:.4f} [{r2['level_cost_ci95'][0]:.4f}, {r2['level_cost_ci95'][1]:.4f}]"
        for cell, r in ((two, r2), (one, rows["one-sided"])):
            low, high = r["speedup_ci95"]
            want = f"{r['speedup']:.2f}x [{low:.2f}, {high:.2f}] / {r['speedup_published_levels']:.2f}x"
            assert cell.replace("**", "") == want, (policy, n_p, cell, want)


RESULT_TABLE = [
    "model",
    "config",
    "BitOPs / FP32",
    "clean",
    "noisy",
    "d clean",
    "d noisy",
    "FT clean",
    "FT noisy",
    "FT d clean",
    "FT d noisy",
]
SEARCH_TABLE = ["model", "BitOPs %", "clean acc", "ACR", "cert acc r=0.25", "cert acc r=0.5", "search s"]
# (header, occurrence among tables with that header) -> check; None: a table of names, not of measured numbers
DEPLOY_FIDELITY = (
    "model",
    "policy",
    "BitOPs %",
    "agreement, integer kernels (default)",
    "agreement, float on levels",
    "certified images",
    "n",
    "ACR PyTorch",
    "ACR ONNX",
    "ACR difference",
    "identical certificates",
)
DEPLOY_SPEED = (
    "model",
    "engine",
    "BitOPs % of FP32",
    "latency ms (batch 1)",
    "vs ORT FP32",
    "images/s (batch 256)",
    "vs ORT FP32",
    "file KiB",
    "vs FP32 file",
    "runs in integers",
)
SCALE = (
    "model",
    "engine",
    "workers",
    "wall s",
    "start s",
    "img/s",
    "img/s after start",
    "time / local",
    "time / local after start",
    "throughput / 1 worker",
    "throughput / 1 worker after start",
    "identical",
    "load avg",
)

SCALE_CPU = (
    "model",
    "images x rounds",
    "local CPU s / image",
    "Ray CPU s / image",
    "Ray / local CPU",
    "local wall s / image",
    "Ray wall s / image",
    "Ray / local wall",
    "page faults / image (local / Ray)",
    "load avg",
)

# The search matrix's three tables (benchmarks/search_matrix.py): the small CNN's first, then ResNet-20's.
MATRIX_RESULTS = ("budget", "method", "ACR [95% over seeds]", "clean acc", "cert acc r=0.5", "BitOPs %", "search s")
MATRIX_DIFFERENCES = ("budget", "ARQ minus", "seeds", "mean dACR", "95% CI over seeds", "per seed", "verdict")
MATRIX_TIMES = (
    "budget",
    "ARQ episodes s",
    "ARQ FP32 reference s",
    "ARQ final selection s",
    "ARQ total s",
    "HAQ episodes s",
    "HAQ total s",
    "ARQ / HAQ (total)",
    "per seed",
    "95% CI over seeds",
)

SOURCES: dict[tuple[tuple[str, ...], int], Callable[[Table], None] | None] = {
    (
        (
            "model",
            "BitOPs %",
            "size (KiB)",
            "clean acc",
            "ACR",
            "cert acc r=0.25",
            "cert acc r=0.5",
            "cert acc r=0.75",
            "cert acc r=1",
            "search s",
        ),
        0,
    ): _default_run,
    (("name", "model", "clean test accuracy", "accuracy under N(0, sigma^2)"), 0): _zoo,
    (("command", "what it does", "details"), 0): None,
    (
        ("clean smoothed accuracy", "ACR", "cert. acc. r = 0.25", "r = 0.5", "r = 0.75", "r = 1.0", "abstain"),
        0,
    ): _certify,
    (tuple(RESULT_TABLE), 0): _rows_in("quant.md"),
    (tuple(RESULT_TABLE), 1): _rows_in("quant-resnet20.md"),
    (
        (
            "sigma",
            "policy",
            "n_p",
            "images",
            "two-sided (published)",
            "one-sided (default)",
            "reference two- / one-sided",
        ),
        0,
    ): _irs,
    (
        (
            "policy",
            "n_p",
            "ACR cost of the exact level [95%]",
            "two-sided: exact / paper's level",
            "one-sided: exact / paper's level",
        ),
        0,
    ): _irs_levels,
    (tuple(SEARCH_TABLE), 0): _rows_in("search.md"),
    (tuple(SEARCH_TABLE), 1): _rows_in("search-resnet20.md"),
    (("name", "where it comes from"), 0): None,
    (
        (
            "method",
            "r = 0.25",
            "r = 0.5",
            "r = 0.75",
            "r = 1",
            "samples per image",
            "total samples",
            "samples vs fixed-n at 100000",
        ),
        0,
    ): _rows_in("sequential.md"),
    (DEPLOY_FIDELITY, 0): _digest_of("deploy-fidelity.md"),
    (DEPLOY_SPEED, 0): _digest_of("deploy-speed.md", unchecked=("BitOPs % of FP32",)),
    (("work", "local engine (default)", "Ray engine"), 0): None,  # what runs where: no figures
    (SCALE, 0): _rows_in("scale-quiet-long.md"),
    (
        (
            "reward",
            "tau ACR",
            "tau - best",
            "front",
            "tau clean",
            "regret ACR",
            "cost / cand.",
            "fwd samples / cand.",
        ),
        0,
    ): _digest_of("fidelity-small-cnn-fmnist-s0.25-0.0125.md", keys=1),
    (SCALE_CPU, 0): _rows_in("scale-quiet.md"),
    (MATRIX_RESULTS, 0): _digest_of("search-matrix-small-cnn.md"),
    (MATRIX_DIFFERENCES, 0): _rows_in("search-matrix-small-cnn.md"),
    (MATRIX_TIMES, 0): _digest_of("search-matrix-small-cnn.md", keys=1),
    (MATRIX_RESULTS, 1): _digest_of("search-matrix-resnet20.md"),
    (MATRIX_DIFFERENCES, 1): _rows_in("search-matrix-resnet20.md"),
    (MATRIX_TIMES, 1): _digest_of("search-matrix-resnet20.md", keys=1),
}


def _readme_tables() -> list[tuple[tuple[tuple[str, ...], int], Table]]:
    seen: dict[tuple[str, ...], int] = {}
    keyed = []
    for table in markdown_tables((ROOT / "README.md").read_text()):
        header = tuple(table["header"])
        keyed.append(((header, seen.get(header, 0)), table))
        seen[header] = seen.get(header, 0) + 1
    return keyed


def test_every_readme_table_has_a_declared_source():
    unknown = [(table["line"], key[0]) for key, table in _readme_tables() if key not in SOURCES]
    assert not unknown, f"README tables without a committed source (add one to SOURCES): {unknown}"


@pytest.mark.parametrize(
    "key,table",
    [(k, t) for k, t in _readme_tables() if SOURCES.get(k) is not None],
    ids=lambda value: f"line{value['line']}" if isinstance(value, dict) else "",
)
def test_readme_table_matches_its_result_file(key, table):
    SOURCES[key](table)


def test_markdown_tables_parse_escaped_pipes():
    text = "| a | b |\n|---|---|\n| `x \\| y` | 1 |\n\n| c |\n|---|\n| 2 |\n"
    assert [t["rows"] for t in markdown_tables(text)] == [[["`x \\| y`", "1"]], [["2"]]]


def test_digest_rejects_a_number_not_in_its_row(tmp_path, monkeypatch):
    """A digest row passes only when each of its numbers is in one source row with the same keys (not scattered)."""
    (tmp_path / "r.md").write_text("| k | a | b |\n|---|---|---|\n| x | 1.25 | 7 |\n| x | 3.50 | 9 |\n")
    monkeypatch.setitem(globals(), "RESULTS", tmp_path)
    header = ["k", "a", "b"]
    _digest_of("r.md", keys=1)({"line": 1, "header": header, "rows": [["x", "1.2", "7"], ["x", "3.5", "9"]]})
    for wrong in (["x", "1.25", "9"], ["y", "1.25", "7"], ["x", "2.0", "7"]):
        with pytest.raises(AssertionError):
            _digest_of("r.md", keys=1)({"line": 1, "header": header, "rows": [wrong]})
