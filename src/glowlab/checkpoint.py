"""Checkpoints: safetensors weights plus a JSON manifest, written atomically.

A checkpoint is named by its JSON manifest, e.g. ``run/checkpoints/last.json``, which says
how to rebuild the model (registry name and ``model.config``) and lists the files that
belong to it, each with its size and SHA-256:

* ``weights``: a safetensors file with the model's ``state_dict``, and the Polyak/EMA
  weights under the prefix ``ema/`` when the run keeps them. Its safetensors metadata
  repeats the model name and config, so the weights file alone can also rebuild the model.
* ``state`` (training checkpoints only): a ``torch.save`` file with the optimizer state and
  every random-number-generator state (torch CPU and CUDA, the trainer's generator, NumPy,
  Python), loaded with ``weights_only=True``.

The manifest also holds the full training config and the training progress (step, epoch,
position in the epoch's data order, learning-rate scale). Every write gives the data files
new names (a training checkpoint's carry the step, and all of them a random suffix), so
rewriting a checkpoint never touches the files its current manifest lists. The manifest is
written last: every file goes to a temporary name in the same folder, is flushed with
``fsync`` and renamed to its target with ``os.replace``, and the files of the previous
version are deleted only once the new manifest is in place, so a crash at any point leaves
the previous manifest and the files it lists intact.

Example:
    >>> import tempfile, glowlab
    >>> model = glowlab.Glow((1, 8, 8), levels=1, steps=1, hidden_channels=8)
    >>> path = save(model, tempfile.mkdtemp() + "/model")
    >>> type(load(path)).__name__
    'Glow'
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from ._files import atomic_write
from ._optional import require
from .errors import GlowlabError
from .models import FlowModel, build_model

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "atomic_write",
    "build_model_on",
    "find_checkpoint",
    "load",
    "read_checkpoint",
    "save",
    "write_checkpoint",
]

FORMAT = "glowlab-checkpoint"
VERSION = 1
EMA_PREFIX = "ema/"
_DATA_SUFFIXES = (".safetensors", ".state.pt")

PathLike = str | os.PathLike[str]


class CheckpointError(GlowlabError, ValueError):
    """A checkpoint is missing, truncated, corrupt, or does not match the model it describes."""


@dataclass
class Checkpoint:
    """A checkpoint read back from disk.

    Attributes:
        path: the JSON manifest.
        manifest: its contents.
        weights: the model's ``state_dict``.
        ema: the Polyak/EMA weights, or None.
        state: the optimizer and RNG states (training checkpoints), or None.
    """

    path: Path
    manifest: dict[str, Any]
    weights: dict[str, Tensor]
    ema: dict[str, Tensor] | None = None
    state: dict[str, Any] | None = field(default=None, repr=False)

    @property
    def model_name(self) -> str:
        return str(self.manifest["model"]["name"])

    @property
    def model_config(self) -> dict[str, Any]:
        return dict(self.manifest["model"]["config"])

    def build_model(self, weights: Literal["ema", "raw"] = "ema") -> FlowModel:
        """The model with the EMA weights (when the checkpoint has them) or the raw ones.

        It is built on the device the weights were read onto, in the precision they were
        saved in.
        """
        if weights not in ("ema", "raw"):
            raise ValueError(f"weights must be 'ema' or 'raw', got {weights!r}")
        state = self.ema if weights == "ema" and self.ema is not None else self.weights
        floats = [t for t in state.values() if t.is_floating_point()]
        device = floats[0].device if floats else torch.device("cpu")
        dtype = floats[0].dtype if floats else torch.get_default_dtype()
        try:
            model = build_model_on(self.model_name, self.model_config, device, dtype)
        except (TypeError, ValueError) as exc:
            raise CheckpointError(
                f"checkpoint {self.path} has a model config that glowlab cannot build: {exc}"
            ) from None
        load_weights(model, state, self.path)
        return model


def build_model_on(
    name: str, config: dict[str, Any], device: str | torch.device, dtype: torch.dtype
) -> FlowModel:
    """``build_model(name, config)`` with its tensors created on ``device`` in ``dtype``.

    Creating the tensors in place (rather than building on the CPU and calling ``.to``)
    avoids a second copy of a large model.
    """
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            return build_model(name, config)
    finally:
        torch.set_default_dtype(previous)


# -- atomic files -----------------------------------------------------------------------
def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _file_entry(path: Path) -> dict[str, Any]:
    return {"file": path.name, "bytes": path.stat().st_size, "sha256": _sha256(path)}


# -- writing ----------------------------------------------------------------------------
def _stem(path: PathLike) -> Path:
    path = Path(path)
    if path.suffix in (".json", ".safetensors"):
        path = path.with_suffix("")
    return path


def _save_tensors(tensors: dict[str, Tensor], path: Path, metadata: dict[str, str]) -> None:
    save_file = require("safetensors.torch", "train").save_file

    save_file(tensors, str(path), metadata=metadata)


def _tensors(model: torch.nn.Module, prefix: str = "") -> dict[str, Tensor]:
    # clone(): safetensors refuses tensors that share memory.
    return {
        prefix + k: v.detach().to("cpu", copy=True).contiguous()
        for k, v in model.state_dict().items()
    }


def write_checkpoint(
    path: PathLike,
    model: FlowModel,
    *,
    ema: torch.nn.Module | None = None,
    train_config: Mapping[str, Any] | None = None,
    train_state: Mapping[str, Any] | None = None,
    state: Mapping[str, Any] | None = None,
    tag: str | None = None,
) -> Path:
    """Write a checkpoint and return its manifest path (``path`` with a ``.json`` suffix).

    The data files are ``STEM-TAG-XXXXXXXX.safetensors`` (and ``.state.pt``), or
    ``STEM-XXXXXXXX...`` without ``tag``, with a random suffix that is new on every write:
    rewriting a checkpoint (the same step under the same tag, or :func:`save` to the same
    stem) never replaces a file that the current manifest lists. The files the previous
    manifest listed are deleted once the new manifest is in place; with ``tag``, so are
    other data files of this checkpoint left behind by an interrupted write.
    """
    stem = _stem(path)
    manifest_path = stem.with_name(stem.name + ".json")
    previous = _listed_files(manifest_path)
    base = _unique_base(stem, tag)
    model_info = {"name": model.name, "config": _jsonable(model.config)}
    tensors = _tensors(model)
    if ema is not None:
        tensors.update(_tensors(ema, EMA_PREFIX))
    metadata = {"format": FORMAT, "model": json.dumps(model_info)}
    weights_path = atomic_write(
        base.with_name(base.name + ".safetensors"), lambda p: _save_tensors(tensors, p, metadata)
    )
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "glowlab_version": _version(),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "model": model_info,
        "weights": {**_file_entry(weights_path), "ema": ema is not None},
        "state": None,
        "train_config": _jsonable(train_config) if train_config is not None else None,
        "train_state": _jsonable(train_state) if train_state is not None else None,
    }
    if state is not None:
        state_path = atomic_write(
            base.with_name(base.name + ".state.pt"), lambda p: torch.save(dict(state), p)
        )
        manifest["state"] = _file_entry(state_path)
    text = json.dumps(manifest, indent=2) + "\n"
    atomic_write(manifest_path, lambda p: p.write_text(text))
    keep = {weights_path.name, (manifest.get("state") or {}).get("file")}
    for name in previous - keep:
        (stem.parent / name).unlink(missing_ok=True)
    _remove_stale(stem, keep, tagged=bool(tag))
    return manifest_path


def _unique_base(stem: Path, tag: str | None) -> Path:
    """``STEM-TAG-XXXXXXXX`` (or ``STEM-XXXXXXXX``): a name no existing data file has."""
    prefix = f"{stem.name}-{tag}" if tag else stem.name
    while True:
        base = stem.with_name(f"{prefix}-{secrets.token_hex(4)}")
        if not any(base.with_name(base.name + s).exists() for s in _DATA_SUFFIXES):
            return base


def _listed_files(manifest_path: Path) -> set[str]:
    """The data files that the glowlab manifest at ``manifest_path`` lists (none if unreadable)."""
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError):
        return set()
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        return set()
    names = set()
    for key in ("weights", "state"):
        entry = manifest.get(key)
        name = entry.get("file") if isinstance(entry, dict) else None
        # Only plain names of files beside the manifest: never follow a path elsewhere.
        if isinstance(name, str) and name == Path(name).name and name.endswith(_DATA_SUFFIXES):
            names.add(name)
    return names


def _remove_stale(stem: Path, keep: set[Any], tagged: bool) -> None:
    """Delete data files of interrupted writes of checkpoint ``stem`` and leftover temporaries.

    A training checkpoint (``tagged``) owns every ``STEM-*`` data file in its folder. A bare
    :func:`save` goes to a folder of the user's: it removes only names it writes itself,
    ``STEM-XXXXXXXX.*``, so that the files of a checkpoint ``STEM-small`` beside it stay.
    """
    name = re.escape(stem.name)
    data = rf"{name}-.+" if tagged else rf"{name}-[0-9a-f]{{8}}"
    data += r"\.(safetensors|state\.pt)"
    temporary = rf"\.{name}.*" if tagged else rf"\.(?:{name}\.json|{data})\.[^.]+"
    pattern = re.compile(rf"(?:{data})|(?:{temporary}\.tmp)")
    for candidate in stem.parent.iterdir():
        if candidate.name not in keep and pattern.fullmatch(candidate.name):
            candidate.unlink(missing_ok=True)


def save(model: FlowModel, path: PathLike) -> Path:
    """Save a bare model as ``STEM.json`` plus the weights it names; returns the JSON path.

    The weights file is ``STEM-XXXXXXXX.safetensors`` (a new random suffix on every save, see
    :func:`write_checkpoint`). ``path`` may end in ``.json``, ``.safetensors`` or neither.
    :func:`load` rebuilds the model from the manifest (or ``STEM``) or from the weights file
    alone, with no other arguments.
    """
    if not isinstance(model, FlowModel):
        raise TypeError(f"save expects a glowlab FlowModel, got {type(model).__name__}")
    return write_checkpoint(path, model)


# -- reading ----------------------------------------------------------------------------
def find_checkpoint(path: PathLike) -> Path:
    """The manifest (or bare weights file) that ``path`` names.

    ``path`` may be a manifest, a weights file, a checkpoint stem, a run folder (its
    ``checkpoints/last.json``) or a checkpoints folder (its ``last.json``). A
    ``STEM.safetensors`` that does not exist names ``STEM.json``, where :func:`save` put
    the manifest of a model saved under that name.
    """
    path = Path(path)
    candidates = [path]
    if path.is_dir():
        candidates = [path / "checkpoints" / "last.json", path / "last.json"]
    elif path.suffix == ".safetensors":
        candidates.append(path.with_suffix(".json"))
    elif path.suffix != ".json":
        candidates += [
            path.with_name(path.name + ".json"),
            path.with_name(path.name + ".safetensors"),
        ]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    if path.is_dir():
        raise FileNotFoundError(
            f"no checkpoint in {path}: expected {candidates[0]} or {candidates[1]}"
        )
    raise FileNotFoundError(f"checkpoint {path} does not exist")


def read_checkpoint(
    path: PathLike, map_location: str | torch.device = "cpu", with_state: bool = False
) -> Checkpoint:
    """Read and verify a checkpoint (sizes and SHA-256 of its files) onto ``map_location``."""
    path = find_checkpoint(path)
    if path.suffix == ".safetensors":
        return _read_bare_weights(path, map_location)
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CheckpointError(
            f"checkpoint {path} is not valid JSON (truncated or corrupt)"
        ) from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CheckpointError(f'{path} is not a glowlab checkpoint (no "format": "{FORMAT}")')
    try:
        weights_file = _verified(path, manifest["weights"])
        model = manifest["model"]
        if not isinstance(model.get("name"), str) or not isinstance(model.get("config"), dict):
            raise TypeError
    except (KeyError, TypeError, AttributeError):
        raise CheckpointError(
            f"checkpoint {path} is missing required entries (corrupt manifest)"
        ) from None
    tensors = _load_tensors(weights_file, map_location)
    weights = {k: v for k, v in tensors.items() if not k.startswith(EMA_PREFIX)}
    ema = {k[len(EMA_PREFIX) :]: v for k, v in tensors.items() if k.startswith(EMA_PREFIX)} or None
    state = None
    if with_state:
        if not manifest.get("state"):
            raise CheckpointError(f"checkpoint {path} has no training state to resume from")
        state_file = _verified(path, manifest["state"])
        try:
            state = torch.load(state_file, map_location=map_location, weights_only=True)
        except Exception as exc:  # torch raises several types for a damaged file
            raise CheckpointError(f"cannot read training state {state_file}: {exc}") from None
    return Checkpoint(path, manifest, weights, ema, state)


def _verified(manifest_path: Path, entry: Mapping[str, Any]) -> Path:
    file = manifest_path.parent / str(entry["file"])
    if not file.is_file():
        raise CheckpointError(f"checkpoint {manifest_path} refers to {file.name}, which is missing")
    size = file.stat().st_size
    if size != entry["bytes"]:
        raise CheckpointError(
            f"checkpoint file {file} has {size} bytes, expected {entry['bytes']} "
            "(truncated or corrupt)"
        )
    if _sha256(file) != entry["sha256"]:
        raise CheckpointError(f"checkpoint file {file} does not match its SHA-256 (corrupt)")
    return file


def _load_tensors(file: Path, map_location: str | torch.device) -> dict[str, Tensor]:
    load_file = require("safetensors.torch", "train").load_file

    try:
        return load_file(str(file), device=str(torch.device(map_location)))
    except Exception as exc:  # safetensors raises its own error types for damaged files
        raise CheckpointError(f"cannot read weights {file} (truncated or corrupt): {exc}") from None


def _read_bare_weights(path: Path, map_location: str | torch.device) -> Checkpoint:
    safe_open = require("safetensors", "train").safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except Exception as exc:
        raise CheckpointError(f"cannot read weights {path} (truncated or corrupt): {exc}") from None
    if metadata.get("format") != FORMAT or "model" not in metadata:
        raise CheckpointError(
            f"{path} has no glowlab model metadata; load its JSON manifest instead"
        )
    tensors = _load_tensors(path, map_location)
    weights = {k: v for k, v in tensors.items() if not k.startswith(EMA_PREFIX)}
    ema = {k[len(EMA_PREFIX) :]: v for k, v in tensors.items() if k.startswith(EMA_PREFIX)} or None
    manifest = {"format": FORMAT, "model": json.loads(metadata["model"]), "train_config": None}
    return Checkpoint(path, manifest, weights, ema)


def load_weights(model: torch.nn.Module, state: Mapping[str, Tensor], source: PathLike) -> None:
    """``model.load_state_dict(state)``, with a one-line error that names what does not match."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing (e.g. {missing[0]})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
    if shapes:
        k = shapes[0]
        problems.append(
            f"{len(shapes)} with another shape (e.g. {k}: {tuple(state[k].shape)} in the "
            f"checkpoint, {tuple(own[k].shape)} in the model)"
        )
    if problems:
        raise CheckpointError(
            f"checkpoint {source} does not match the {type(model).__name__} model: weights "
            + ", ".join(problems)
        )
    model.load_state_dict(dict(state))


def load(
    path: PathLike,
    weights: Literal["ema", "raw"] = "ema",
    map_location: str | torch.device = "cpu",
) -> FlowModel:
    """Rebuild a model from a checkpoint with no other information, in eval mode.

    Args:
        path: a manifest (``.json``), a weights file, a checkpoint stem, or a run folder.
        weights: ``"ema"`` uses the Polyak/EMA weights when the checkpoint has them,
            ``"raw"`` the optimizer's weights.
        map_location: device for the weights (``"cpu"``, ``"cuda"``, ...).
    """
    return read_checkpoint(path, map_location).build_model(weights).eval()


# -- helpers ----------------------------------------------------------------------------
def _jsonable(value: Any) -> Any:
    return json.loads(
        json.dumps(value, default=lambda v: list(v) if isinstance(v, tuple) else str(v))
    )


def _version() -> str:
    from . import __version__

    return __version__
