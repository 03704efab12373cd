"""The examples in docstrings run, and the code stays lint-clean."""

from __future__ import annotations

import doctest
import importlib
import shutil
import subprocess

import pytest

from conftest import ROOT

MODULES = [
    "glowlab.transforms.base",
    "glowlab.transforms.actnorm",
    "glowlab.transforms.conv1x1",
    "glowlab.transforms.coupling",
    "glowlab.transforms.permutation",
    "glowlab.transforms.preprocessing",
    "glowlab.transforms.reshape",
    "glowlab.nets",
    "glowlab.models.glow",
    "glowlab.models.realnvp",
    "glowlab.models.nice",
    "glowlab.metrics",
    "glowlab.optim",
    "glowlab.data.augment",
    "glowlab.data.base",
    "glowlab.data.digits",
    "glowlab.data.registry",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    module = importlib.import_module(name)
    result = doctest.testmod(module, extraglobs={"torch": importlib.import_module("torch")})
    assert result.failed == 0, f"{result.failed} docstring example(s) failed in {name}"


@pytest.mark.skipif(shutil.which("ruff") is None, reason="ruff is not installed")
def test_ruff_is_clean() -> None:
    result = subprocess.run(
        ["ruff", "check", "src", "tests", "benchmarks"], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
