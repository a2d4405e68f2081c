#!/usr/bin/env bash
# One-time setup on Debian (root) or any machine with Python >= 3.10: Fashion-MNIST from Debian's package and headless
# Chromium (for the report test) when apt is available, then certquant with pinned dependencies (torch 2.13.0 CPU
# build) and its optional extras (deploy: onnx, onnxruntime; ray), so CI runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist) >/dev/null \
    || echo "note: apt-get could not install dataset-fashion-mnist; certquant will try to download Fashion-MNIST"
fi
# Headless Chromium renders report.html in the report test (tests/report/test_run_report.py; skipped without it).
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver) >/dev/null \
    || echo "note: apt-get could not install chromium; the report's browser test will be skipped"
fi
python -m pip install --quiet --disable-pip-version-check torch==2.13.0
python -m pip install --quiet --disable-pip-version-check -e ".[test,deploy,ray]"  # extras: optional for users, tested in CI
echo "certquant installed: $(command -v certquant)"
