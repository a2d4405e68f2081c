#!/usr/bin/env bash
# One-time setup on Debian (root) or any machine with Python >= 3.10: Fashion-MNIST from Debian's package when apt
# is available, then certquant with pinned dependencies (torch 2.13.0 CPU build) and its extras (pytest, ray).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist) >/dev/null \
    || echo "note: apt-get could not install dataset-fashion-mnist; certquant will try to download Fashion-MNIST"
fi
python -m pip install --quiet --disable-pip-version-check torch==2.13.0
python -m pip install --quiet --disable-pip-version-check -e ".[test,ray]"  # ray: optional for users, tested in CI
echo "certquant installed: $(command -v certquant)"
