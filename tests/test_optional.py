"""A missing optional dependency is reported with the extra that installs it."""

from __future__ import annotations

import sys

import pytest

from glowlab import _optional
from glowlab.cli import main


def test_require_names_the_extra() -> None:
    with pytest.raises(ImportError, match=r"pip install 'glowlab\[train\]'"):
        _optional.require("glowlab_no_such_module.sub", "train")
    assert _optional.require("json", "train").__name__ == "json"


def test_missing_safetensors_is_one_line_with_exit_code_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path
) -> None:
    monkeypatch.setitem(sys.modules, "safetensors", None)  # makes the import fail
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)
    code = main(["train", "--preset", "glow-digits", "--steps", "1", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err == [
        "glowlab train: error: safetensors is needed for this and is not installed: "
        "pip install 'glowlab[train]'"
    ]
