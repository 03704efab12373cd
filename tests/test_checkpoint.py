"""Checkpoints: round trips, atomic writes, and clear errors for damaged or mismatched files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import glowlab
from glowlab import checkpoint as ckpt
from glowlab.checkpoint import CheckpointError, read_checkpoint, write_checkpoint


def _model(hidden: int = 8) -> glowlab.Glow:
    model = glowlab.Glow((1, 8, 8), levels=2, steps=1, hidden_channels=hidden)
    model.log_prob(torch.rand(16, 1, 8, 8) - 0.5)  # ActNorm init
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    return model


def _weights_file(manifest: Path) -> Path:
    return manifest.parent / json.loads(manifest.read_text())["weights"]["file"]


def test_save_load_round_trip(tmp_path: Path) -> None:
    model = _model()
    path = glowlab.save(model, tmp_path / "model")
    assert path == tmp_path / "model.json"
    assert _weights_file(path).name.startswith("model-")
    x = torch.rand(4, 1, 8, 8) - 0.5
    for source in (path, _weights_file(path), tmp_path / "model"):
        loaded = glowlab.load(source)
        assert isinstance(loaded, glowlab.Glow) and not loaded.training
        assert torch.equal(loaded.log_prob(x), model.eval().log_prob(x))
    manifest = json.loads(path.read_text())
    assert manifest["model"] == {"name": "glow", "config": model.config}


def test_a_model_saved_as_safetensors_loads_by_that_name(tmp_path: Path) -> None:
    """save("X.safetensors") writes X.json and X-XXXXXXXX.safetensors: load takes the name."""
    model = _model()
    assert glowlab.save(model, tmp_path / "model.safetensors") == tmp_path / "model.json"
    x = torch.rand(4, 1, 8, 8) - 0.5
    loaded = glowlab.load(tmp_path / "model.safetensors")
    assert torch.equal(loaded.log_prob(x), model.eval().log_prob(x))
    with pytest.raises(FileNotFoundError, match=r"other\.safetensors does not exist"):
        glowlab.load(tmp_path / "other.safetensors")


def test_ema_weights_are_the_default(tmp_path: Path) -> None:
    model, ema = _model(), _model()
    path = write_checkpoint(tmp_path / "run", model, ema=ema)
    x = torch.rand(4, 1, 8, 8) - 0.5
    assert torch.equal(glowlab.load(path).log_prob(x), ema.eval().log_prob(x))
    assert torch.equal(glowlab.load(path, weights="raw").log_prob(x), model.eval().log_prob(x))


def test_load_keeps_the_saved_precision(tmp_path: Path) -> None:
    torch.set_default_dtype(torch.float32)
    path = glowlab.save(_model(), tmp_path / "m")
    torch.set_default_dtype(torch.float64)
    assert next(glowlab.load(path).parameters()).dtype == torch.float32


def _write_tagged(tmp_path: Path, model: torch.nn.Module, tag: str) -> Path:
    return write_checkpoint(
        tmp_path / "last", model, state={"optimizer": {}, "x": torch.ones(3)}, tag=tag
    )


def test_crash_while_writing_weights_keeps_the_old_checkpoint(tmp_path: Path, monkeypatch) -> None:
    old = _model()
    path = _write_tagged(tmp_path, old, "00000001")
    before = sorted(p.name for p in tmp_path.iterdir())

    def crash(tensors, file, metadata):  # a half-written file, then the process "dies"
        Path(file).write_bytes(b"\x00" * 100)
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt, "_save_tensors", crash)
    with pytest.raises(KeyboardInterrupt):
        _write_tagged(tmp_path, _model(), "00000002")
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no temporary left behind
    loaded = read_checkpoint(path).build_model("raw")
    for a, b in zip(loaded.state_dict().values(), old.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def _fail_manifest_replace(monkeypatch) -> None:
    """Make the rename of a manifest into place fail, as on a full disk."""
    real_replace = ckpt.os.replace

    def replace(src, dst):
        if str(dst).endswith(".json"):
            raise OSError("disk full")
        real_replace(src, dst)

    monkeypatch.setattr(ckpt.os, "replace", replace)


def _assert_weights(weights: dict[str, torch.Tensor], model: torch.nn.Module) -> None:
    assert weights.keys() == model.state_dict().keys()
    for key, value in model.state_dict().items():
        assert torch.equal(weights[key], value)


def test_crash_before_the_manifest_is_replaced_keeps_the_old_checkpoint(
    tmp_path: Path, monkeypatch
) -> None:
    old = _model()
    path = _write_tagged(tmp_path, old, "00000001")
    _fail_manifest_replace(monkeypatch)
    with pytest.raises(OSError, match="disk full"):
        _write_tagged(tmp_path, _model(), "00000002")
    monkeypatch.undo()
    checkpoint = read_checkpoint(path, with_state=True)  # sizes and hashes still match
    assert checkpoint.manifest["weights"]["file"].startswith("last-00000001-")
    assert torch.equal(checkpoint.state["x"], torch.ones(3))
    _assert_weights(checkpoint.weights, old)
    # The next successful write removes the orphaned files of the failed one.
    _write_tagged(tmp_path, old, "00000003")
    names = sorted(p.name for p in tmp_path.iterdir())
    assert len(names) == 3 and names[2] == "last.json"
    assert names[0].startswith("last-00000003-") and names[0].endswith(".safetensors")
    assert names[1] == names[0].replace(".safetensors", ".state.pt")


@pytest.mark.parametrize("how", ["same tag", "save to the same stem"])
def test_crash_while_rewriting_a_checkpoint_keeps_the_old_one(
    tmp_path: Path, monkeypatch, how: str
) -> None:
    """Rewriting never replaces the files the current manifest lists (``best`` at the same
    step after a rollback, or ``save`` to the same stem)."""

    def write(model: torch.nn.Module) -> Path:
        if how == "same tag":
            return _write_tagged(tmp_path, model, "00000004")
        return glowlab.save(model, tmp_path / "last")

    old = _model()
    path = write(old)
    _fail_manifest_replace(monkeypatch)
    with pytest.raises(OSError, match="disk full"):
        write(_model())
    monkeypatch.undo()
    loaded = read_checkpoint(path, with_state=how == "same tag")  # sizes and hashes match
    _assert_weights(loaded.weights, old)
    new = _model()
    write(new)  # a successful rewrite leaves only its own files
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) == (3 if how == "same tag" else 2)
    _assert_weights(read_checkpoint(path).weights, new)


def test_checkpoints_with_the_old_file_names_still_load(tmp_path: Path) -> None:
    """Manifests name their files: ``STEM.safetensors`` from earlier versions still loads."""
    model = _model()
    path = glowlab.save(model, tmp_path / "m")
    weights = _weights_file(path)
    weights.rename(tmp_path / "m.safetensors")
    manifest = json.loads(path.read_text())
    manifest["weights"]["file"] = "m.safetensors"
    path.write_text(json.dumps(manifest))
    x = torch.rand(4, 1, 8, 8) - 0.5
    for source in (path, tmp_path / "m.safetensors", tmp_path / "m"):
        assert torch.equal(glowlab.load(source).log_prob(x), model.eval().log_prob(x))
    glowlab.save(model, tmp_path / "m")  # a rewrite replaces the old file by a new name
    assert not (tmp_path / "m.safetensors").exists()
    assert len(list(tmp_path.glob("m-*.safetensors"))) == 1


def test_truncated_files_give_clear_errors(tmp_path: Path) -> None:
    path = glowlab.save(_model(), tmp_path / "m")
    weights = _weights_file(path)
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        glowlab.load(path)
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        glowlab.load(weights)
    text = path.read_text()
    path.write_text(text[: len(text) // 2])
    with pytest.raises(CheckpointError, match="not valid JSON"):
        glowlab.load(path)


def test_flipped_byte_is_detected(tmp_path: Path) -> None:
    path = glowlab.save(_model(), tmp_path / "m")
    weights = _weights_file(path)
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="SHA-256"):
        glowlab.load(path)


def test_config_that_does_not_match_the_weights(tmp_path: Path) -> None:
    path = glowlab.save(_model(hidden=8), tmp_path / "m")
    manifest = json.loads(path.read_text())
    manifest["model"]["config"]["hidden_channels"] = 16
    path.write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match=r"does not match the Glow model.*another shape"):
        glowlab.load(path)
    manifest["model"]["config"]["levels"] = 4
    path.write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="cannot build"):
        glowlab.load(path)


def test_not_a_checkpoint(tmp_path: Path) -> None:
    (tmp_path / "x.json").write_text('{"hello": 1}')
    with pytest.raises(CheckpointError, match="not a glowlab checkpoint"):
        glowlab.load(tmp_path / "x.json")
    with pytest.raises(FileNotFoundError, match="no checkpoint in"):
        glowlab.load(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        glowlab.load(tmp_path / "missing.json")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_load_onto_cuda(tmp_path: Path) -> None:
    path = glowlab.save(_model(), tmp_path / "m")
    model = glowlab.load(path, map_location="cuda")
    assert next(model.parameters()).is_cuda
    x = torch.rand(2, 1, 8, 8, device="cuda") - 0.5
    assert torch.isfinite(model.log_prob(x)).all()


def test_written_files_get_the_usual_permissions(tmp_path) -> None:
    import os

    from glowlab.images import save_png

    model = glowlab.Glow((1, 4, 4), levels=1, steps=1, hidden_channels=4)
    manifest = glowlab.save(model, tmp_path / "m")
    png = save_png(tmp_path / "p.png", torch.zeros(1, 2, 2, dtype=torch.uint8))
    umask = os.umask(0)
    os.umask(umask)
    for path in [manifest, png, *tmp_path.glob("m-*.safetensors")]:
        assert (path.stat().st_mode & 0o777) == 0o666 & ~umask, path
