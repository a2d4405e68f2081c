"""The deploy tests need the deploy extra (onnx, onnxruntime); scripts/setup.sh installs it, so CI runs them."""

import pytest

pytest.importorskip("onnxruntime")  # the deploy extra; scripts/setup.sh installs it, so CI runs these tests
