"""Shared fixtures: an isolated cache and data folder per test session, so tests never touch the user's cache."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(autouse=True)
def _quiet_threads():
    import torch

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    yield
