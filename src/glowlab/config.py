"""Training configuration: frozen dataclasses, named presets, ``--set`` overrides and JSON.

A run is fully described by one :class:`TrainConfig`, which has four sections:

* ``data`` (:class:`DataConfig`): which dataset, bit depth and augmentation;
* ``model`` (:class:`ModelConfig`): the registry name, ``num_classes`` and the keyword
  arguments of the model's constructor (``image_shape`` comes from the data);
* ``optim`` (:class:`OptimConfig`): optimizer, learning rate, warmup, clipping and EMA;
* ``train`` (:class:`LoopConfig`): steps, batch sizes, logging, evaluation and checkpoints;

plus the top-level ``seed`` and ``device``. Every field has a dotted name (``seed``,
``train.batch_size``, ``model.steps``) that :func:`apply_overrides` accepts as
``NAME=VALUE``. Values are parsed as JSON where they can be (``8``, ``1e-3``, ``true``,
``null``, ``[0.9, 0.999]``) and as plain strings otherwise (``model.coupling=additive``).

Example:
    >>> overrides = ["model.steps=8", "train.batch_size=32"]
    >>> config = apply_overrides(get_preset("glow-cifar10"), overrides)
    >>> config.model.options["steps"], config.train.batch_size
    (8, 32)
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
import os
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .errors import UsageError
from .models import MODELS

__all__ = [
    "PRESETS",
    "DataConfig",
    "LoopConfig",
    "ModelConfig",
    "OptimConfig",
    "TrainConfig",
    "apply_overrides",
    "config_fields",
    "get_preset",
    "load_config",
    "model_parameters",
    "save_config",
]

OptimizerName = Literal["adam", "adamw", "adamax"]
DeviceName = Literal["auto", "cpu", "cuda"]
DtypeName = Literal["float32", "float64"]
MemoryModeName = Literal["standard", "invertible", "checkpoint"]
PrecisionName = Literal["fp32", "tf32", "bf16"]


def _field(default: Any, help: str) -> Any:
    """A ``dataclasses.field`` with a help string (shown by ``glowlab train --help``)."""
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


#: The temperatures of the Glow paper's sample grids (one row each).
PAPER_TEMPERATURES: tuple[float, ...] = (0.0, 0.25, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


@dataclass(frozen=True)
class DataConfig:
    """Which images to train on and how they are turned into model inputs."""

    name: str = _field("digits", "dataset name (see glowlab.data.dataset_names)")
    data_dir: str | None = _field(None, "folder holding the dataset files (None: the default)")
    download: bool = _field(False, "download missing dataset files")
    image_size: int | None = _field(None, "resize/pad images to this side (None: native size)")
    n_bits: int = _field(8, "bits per colour channel the model sees (Glow's CelebA-HQ uses 5)")
    random_shift: int = _field(0, "augmentation: random translation of up to this many pixels")
    random_flip: bool = _field(False, "augmentation: random left-right flips")
    max_train_images: int | None = _field(None, "use only the first N training images")


@dataclass(frozen=True)
class ModelConfig:
    """A model: its registry name, ``num_classes`` and constructor arguments (``options``).

    ``options`` holds the keyword arguments of the model class other than ``image_shape``
    (set from the data) and ``num_classes``; missing ones take the constructor's defaults.
    ``model.KEY=VALUE`` overrides set ``options[KEY]``.
    """

    name: str = _field("glow", "model name: glow, realnvp or nice")
    num_classes: int | None = _field(
        None, "train class-conditionally on this many classes (Glow only; None: unconditional)"
    )
    options: dict[str, Any] = _field({}, "model constructor arguments (set as model.KEY=VALUE)")  # noqa: RUF009


@dataclass(frozen=True)
class OptimConfig:
    """Optimizer, learning-rate schedule, gradient clipping and weight averaging."""

    name: OptimizerName = _field("adamax", "optimizer: adam, adamw or adamax")  # noqa: RUF009
    lr: float = _field(1e-3, "peak learning rate")
    betas: tuple[float, float] = _field((0.9, 0.999), "Adam betas")
    eps: float = _field(1e-8, "Adam epsilon")
    weight_decay: float = _field(0.0, "weight decay (L2 for adam/adamax, decoupled for adamw)")
    warmup_steps: int = _field(0, "linear learning-rate warmup from 0 over this many steps")
    grad_clip: float | None = _field(None, "clip the gradient norm to this value (None: off)")
    ema_decay: float | None = _field(
        0.999, "Polyak/EMA decay of the weights used for eval and sampling (None: off)"
    )


@dataclass(frozen=True)
class LoopConfig:
    """Length of the run, batch sizes, and how often to log, evaluate, sample and save."""

    steps: int = _field(
        1000, "number of training steps (a rejected non-finite step counts, with no update)"
    )
    batch_size: int = _field(
        64, "training batch size, over all processes (under torchrun each takes its share)"
    )
    init_batch_size: int = _field(
        256, "images for the data-dependent ActNorm init, over all processes"
    )
    eval_batch_size: int = _field(500, "batch size for test bits/dim")
    class_weight: float = _field(0.01, "weight of the class cross-entropy (conditional models)")
    dtype: DtypeName = _field("float32", "floating-point type of weights and activations")  # noqa: RUF009
    memory_mode: MemoryModeName = _field(  # noqa: RUF009
        "standard",
        "activation memory: standard, invertible (not with batch_norm flow layers), checkpoint",
    )
    precision: PrecisionName = _field(  # noqa: RUF009
        "fp32",
        "fp32; tf32 (CUDA only: TF32 matmuls and convolutions); bf16 (coupling networks in "
        "bfloat16, log-dets and likelihood in float32; CPU too); tf32 and bf16 need float32",
    )
    compile: bool = _field(False, "torch.compile each flow step (bounded compile time)")
    compile_backend: str = _field(
        "inductor", "torch.compile backend when train.compile (aot_eager: no code generation)"
    )
    channels_last: bool | None = _field(
        None,
        "store convolution weights and inputs channels-last (null: on the CPU, where it is "
        "faster, and off on CUDA)",
    )
    keep_freed_memory: bool | None = _field(
        None,
        "keep the memory each step frees for the next instead of returning it to the "
        "system (glibc malloc settings, process-wide; null: on the CPU)",
    )
    log_every: int = _field(10, "steps between training log records")
    eval_every: int = _field(1000, "steps between test evaluations (0: only at the end)")
    max_eval_images: int | None = _field(None, "cap on test images per evaluation (None: all)")
    eval_draws: int = _field(1, "dequantization draws averaged per test evaluation")
    sample_every: int = _field(1000, "steps between sample grids (0: only at the end)")
    sample_temperatures: tuple[float, ...] = _field(
        PAPER_TEMPERATURES, "temperatures of the sample grids, one row each"
    )
    samples_per_row: int = _field(8, "samples per temperature in a grid")
    checkpoint_every: int = _field(500, "steps between checkpoints (the last is always saved)")
    keep_best: bool = _field(True, "also keep the checkpoint with the best test bits/dim")
    nan_patience: int = _field(5, "consecutive non-finite steps before rolling back")
    rollback_lr_factor: float = _field(0.5, "learning-rate factor applied at each rollback")
    max_rollbacks: int = _field(3, "rollbacks allowed before the run stops with an error")
    progress: bool = _field(True, "show a progress bar (needs tqdm)")
    tensorboard: bool = _field(True, "also log to TensorBoard when it is installed")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run; saved as ``config.json`` with every run."""

    data: DataConfig = _field(DataConfig(), "dataset")  # noqa: RUF009
    model: ModelConfig = _field(ModelConfig(), "model")  # noqa: RUF009
    optim: OptimConfig = _field(OptimConfig(), "optimizer")  # noqa: RUF009
    train: LoopConfig = _field(LoopConfig(), "training loop")  # noqa: RUF009
    seed: int = _field(0, "seed of every random number generator and of the data order")
    device: DeviceName = _field("auto", "auto (cuda when available), cpu or cuda")  # noqa: RUF009
    preset: str | None = _field(None, "the preset this config started from")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (tuples become lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        """The inverse of :meth:`to_dict`; unknown or mistyped fields raise ``UsageError``."""
        return _from_dict(cls, data, "")

    def model_kwargs(self, image_shape: tuple[int, int, int]) -> dict[str, Any]:
        """Keyword arguments of ``build_model(self.model.name, ...)`` for images of this shape."""
        kwargs: dict[str, Any] = {"image_shape": list(image_shape), **self.model.options}
        if self.model.num_classes is not None:
            kwargs["num_classes"] = self.model.num_classes
        return kwargs


_SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "model": ModelConfig,
    "optim": OptimConfig,
    "train": LoopConfig,
}


# -- presets ----------------------------------------------------------------------------
def _glow(**options: Any) -> dict[str, Any]:
    base = dict(
        levels=3,
        steps=32,
        hidden_channels=512,
        coupling="affine",
        permutation="conv1x1_lu",
        learn_top=True,
    )
    return {**base, **options}


# Glow's CIFAR-10 setting (Kingma & Dhariwal 2018, Table 2 and openai/glow): L=3, K=32,
# width 512, Adamax at 1e-3, batch 64, warmup over about ten epochs (10 * 50000 / 64).
_GLOW_CIFAR = TrainConfig(
    data=DataConfig(name="cifar10", n_bits=8, random_shift=0),
    model=ModelConfig(name="glow", options=_glow()),
    optim=OptimConfig(name="adamax", lr=1e-3, warmup_steps=7800, grad_clip=None, ema_decay=0.999),
    train=LoopConfig(
        steps=400_000,
        batch_size=64,
        init_batch_size=512,
        eval_every=5000,
        sample_every=5000,
        checkpoint_every=1000,
    ),
    preset="glow-cifar10",
)

#: Named starting points for ``glowlab train --preset NAME``.
PRESETS: dict[str, TrainConfig] = {
    "glow-cifar10": _GLOW_CIFAR,
    "glow-cifar10-additive": dataclasses.replace(
        _GLOW_CIFAR,
        model=ModelConfig(name="glow", options=_glow(coupling="additive")),
        preset="glow-cifar10-additive",
    ),
    # MNIST padded to 32x32 so that it can be squeezed three times, as in Glow.
    "glow-mnist": TrainConfig(
        data=DataConfig(name="mnist", image_size=32, n_bits=8),
        model=ModelConfig(name="glow", options=_glow()),
        optim=OptimConfig(name="adamax", lr=1e-3, warmup_steps=9400, ema_decay=0.999),
        train=LoopConfig(
            steps=200_000,
            batch_size=64,
            init_batch_size=512,
            eval_every=5000,
            sample_every=5000,
            checkpoint_every=1000,
        ),
        preset="glow-mnist",
    ),
    # RealNVP (Dinh et al. 2017): Adam at 1e-3, L2 5e-5, random flips, batch 64.
    "realnvp-cifar10": TrainConfig(
        data=DataConfig(name="cifar10", n_bits=8, random_flip=True),
        model=ModelConfig(
            name="realnvp",
            # One downscaling (two scales) for CIFAR-10, as in the paper's section 4.1.
            options=dict(levels=2, hidden_channels=64, res_blocks=8, batch_norm=True),
        ),
        optim=OptimConfig(
            name="adam", lr=1e-3, weight_decay=5e-5, warmup_steps=200, ema_decay=0.999
        ),
        train=LoopConfig(
            steps=200_000,
            batch_size=64,
            init_batch_size=64,
            eval_every=5000,
            sample_every=5000,
            checkpoint_every=1000,
        ),
        preset="realnvp-cifar10",
    ),
    # NICE (Dinh et al. 2015): four couplings of 5x1000 ReLU layers, logistic prior, Adam with
    # lr 1e-3, beta1 0.9, beta2 0.01 and eps 1e-4.
    "nice-mnist": TrainConfig(
        data=DataConfig(name="mnist", n_bits=8),
        model=ModelConfig(
            name="nice",
            options=dict(couplings=4, hidden_features=1000, hidden_layers=5, prior="logistic"),
        ),
        optim=OptimConfig(name="adam", lr=1e-3, betas=(0.9, 0.01), eps=1e-4, ema_decay=None),
        train=LoopConfig(
            steps=100_000,
            batch_size=64,
            init_batch_size=64,
            eval_every=5000,
            sample_every=5000,
            checkpoint_every=1000,
        ),
        preset="nice-mnist",
    ),
    # Glow's CelebA setting at 64x64: 5-bit images, additive coupling, batch 32.
    "glow-celeba64": TrainConfig(
        data=DataConfig(name="celeba", image_size=64, n_bits=5),
        model=ModelConfig(name="glow", options=_glow(levels=4, coupling="additive")),
        optim=OptimConfig(name="adamax", lr=1e-3, warmup_steps=5000, ema_decay=0.999),
        train=LoopConfig(
            steps=200_000,
            batch_size=32,
            init_batch_size=256,
            eval_batch_size=200,
            eval_every=5000,
            max_eval_images=10_000,
            sample_every=5000,
            checkpoint_every=1000,
        ),
        preset="glow-celeba64",
    ),
    # The demo: a small Glow on scikit-learn's 8x8 digits, about two minutes on two CPU cores.
    "glow-digits": TrainConfig(
        data=DataConfig(name="digits", n_bits=8),
        model=ModelConfig(
            name="glow",
            options=_glow(levels=2, steps=8, hidden_channels=64, coupling="affine"),
        ),
        optim=OptimConfig(
            name="adamax", lr=2e-3, warmup_steps=100, grad_clip=100.0, ema_decay=0.99
        ),
        train=LoopConfig(
            steps=2000,
            batch_size=64,
            init_batch_size=512,
            eval_every=500,
            sample_every=0,
            checkpoint_every=500,
            log_every=25,
        ),
        preset="glow-digits",
    ),
}


def get_preset(name: str) -> TrainConfig:
    """The preset called ``name`` (see :data:`PRESETS`)."""
    if name not in PRESETS:
        raise UsageError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]


# -- fields and overrides ---------------------------------------------------------------
def config_fields() -> list[tuple[str, str, Any, str]]:
    """Every overridable field as ``(dotted name, type, default, help)``, in order."""
    rows: list[tuple[str, str, Any, str]] = []
    defaults = TrainConfig()
    top_hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        if f.name in _SECTIONS:
            section = getattr(defaults, f.name)
            hints = typing.get_type_hints(type(section))
            for sub in dataclasses.fields(section):
                rows.append(
                    (
                        f"{f.name}.{sub.name}",
                        _type_name(hints[sub.name]),
                        getattr(section, sub.name),
                        sub.metadata["help"],
                    )
                )
        else:
            rows.append(
                (
                    f.name,
                    _type_name(top_hints[f.name]),
                    getattr(defaults, f.name),
                    f.metadata["help"],
                )
            )
    return rows


def _type_name(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        return "|".join(map(str, args))
    if origin in (typing.Union, types.UnionType):
        return "|".join("null" if a is type(None) else _type_name(a) for a in args)
    if origin is tuple:
        inner = _type_name(args[0]) if args else "any"
        return f"list of {inner}"
    if origin is dict:
        return "object"
    return getattr(hint, "__name__", str(hint))


def model_parameters(name: str) -> dict[str, inspect.Parameter]:
    """The constructor arguments of model ``name`` that ``model.KEY=VALUE`` may set."""
    if name not in MODELS:
        raise UsageError(f"unknown model {name!r}; choose one of {', '.join(sorted(MODELS))}")
    params = inspect.signature(MODELS[name].__init__).parameters
    return {k: p for k, p in params.items() if k not in ("self", "image_shape", "num_classes")}


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def apply_overrides(config: TrainConfig, overrides: Iterable[str]) -> TrainConfig:
    """Return ``config`` with each ``NAME=VALUE`` applied in order.

    ``NAME`` is a dotted field name (see :func:`config_fields`) or ``model.KEY`` for a
    constructor argument of the model. Setting ``model.name`` to a different model drops
    the options that the new model does not accept.
    """
    data = config.to_dict()
    for item in overrides:
        if "=" not in item:
            raise UsageError(
                f"override {item!r} must look like NAME=VALUE, e.g. train.batch_size=32"
            )
        name, _, text = item.partition("=")
        name, value = name.strip(), _parse_value(text.strip())
        section, _, key = name.partition(".")
        if not key:
            if section in _SECTIONS or section not in data:
                raise UsageError(f"unknown config field {name!r}; see 'glowlab train --help'")
            data[section] = value
        elif section not in _SECTIONS or "." in key:
            raise UsageError(f"unknown config field {name!r}; see 'glowlab train --help'")
        elif section == "model" and key == "name":
            allowed = model_parameters(str(value))
            data["model"]["name"] = value
            data["model"]["options"] = {
                k: v for k, v in data["model"]["options"].items() if k in allowed
            }
        elif section == "model" and key not in ("num_classes", "options"):
            if key not in model_parameters(data["model"]["name"]):
                choices = ", ".join(sorted(model_parameters(data["model"]["name"])))
                raise UsageError(
                    f"model {data['model']['name']!r} has no option {key!r}; "
                    f"choose one of {choices}"
                )
            data["model"]["options"][key] = value
        elif key not in data[section]:
            raise UsageError(f"unknown config field {name!r}; see 'glowlab train --help'")
        else:
            data[section][key] = value
    return TrainConfig.from_dict(data)


# -- conversion from plain data ---------------------------------------------------------
def _from_dict(cls: type, data: Any, prefix: str) -> Any:
    if not isinstance(data, Mapping):
        raise UsageError(f"config section {prefix.rstrip('.') or 'root'} must be an object")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise UsageError(f"unknown config field {prefix}{unknown[0]}; see 'glowlab train --help'")
    kwargs = {}
    for name in names & set(data):
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _from_dict(hint, data[name], f"{prefix}{name}.")
        else:
            kwargs[name] = _coerce(data[name], hint, f"{prefix}{name}")
    config = cls(**kwargs)
    _validate(config, prefix)
    return config


def _coerce(value: Any, hint: Any, name: str) -> Any:
    """Check ``value`` against the type ``hint`` (converting lists to tuples, ints to floats)."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, name)
            except UsageError:
                pass
        raise UsageError(f"{name} must be {_describe(hint)}, got {value!r}")
    if origin is Literal:
        if value not in args:
            raise UsageError(f"{name} must be one of {', '.join(map(str, args))}, got {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            value = [value]
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], name) for v in value)
        if len(value) != len(args):
            raise UsageError(f"{name} must be a list of {len(args)} values, got {value!r}")
        return tuple(_coerce(v, a, name) for v, a in zip(value, args, strict=True))
    if origin is dict:
        if not isinstance(value, Mapping):
            raise UsageError(f"{name} must be a JSON object, got {value!r}")
        return dict(value)
    if hint is bool:
        if not isinstance(value, bool):
            raise UsageError(f"{name} must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise UsageError(f"{name} must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UsageError(f"{name} must be a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise UsageError(f"{name} must be a string, got {value!r}")
        return value
    return value


def _describe(hint: Any) -> str:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    names = [getattr(a, "__name__", str(a)) for a in args]
    return " or ".join(names) + " or null"


def check_seed(seed: int, name: str = "seed") -> None:
    """Refuse a seed outside [0, 2**63 - 1], the range every command takes: torch's
    generators take seeds below 2**64, and the commands derive others from it (the data
    order mixes in the epoch, the latent commands add 1 or 2)."""
    if not 0 <= seed < 2**63:
        raise UsageError(f"{name} must be in [0, 2**63 - 1], got {seed}")


def _validate(config: Any, prefix: str) -> None:
    """Range checks that types alone do not catch."""
    checks: list[tuple[str, bool, str]] = []
    if isinstance(config, DataConfig):
        checks += [
            ("n_bits", 1 <= config.n_bits <= 8, "an integer from 1 to 8"),
            ("random_shift", config.random_shift >= 0, ">= 0"),
            (
                "max_train_images",
                config.max_train_images is None or config.max_train_images > 0,
                "> 0",
            ),
        ]
    elif isinstance(config, ModelConfig):
        if config.name not in MODELS:
            raise UsageError(
                f"unknown model {config.name!r}; choose one of {', '.join(sorted(MODELS))}"
            )
        allowed = model_parameters(config.name)
        for key in config.options:
            if key not in allowed:
                raise UsageError(
                    f"model {config.name!r} has no option {key!r}; choose one of "
                    f"{', '.join(sorted(allowed))}"
                )
        if (
            config.num_classes is not None
            and "num_classes" not in inspect.signature(MODELS[config.name].__init__).parameters
        ):
            raise UsageError(
                f"model {config.name!r} cannot be class-conditional; set model.num_classes=null"
            )
        checks.append(
            ("num_classes", config.num_classes is None or config.num_classes >= 2, ">= 2")
        )
    elif isinstance(config, OptimConfig):
        checks += [
            ("lr", math.isfinite(config.lr) and config.lr > 0, "finite and > 0"),
            ("eps", math.isfinite(config.eps) and config.eps > 0, "finite and > 0"),
            ("betas", all(0 <= b < 1 for b in config.betas), "two numbers in [0, 1)"),
            (
                "weight_decay",
                math.isfinite(config.weight_decay) and config.weight_decay >= 0,
                "finite and >= 0",
            ),
            ("warmup_steps", config.warmup_steps >= 0, ">= 0"),
            ("grad_clip", config.grad_clip is None or config.grad_clip > 0, "> 0 or null"),
            (
                "ema_decay",
                config.ema_decay is None or 0 < config.ema_decay < 1,
                "in (0, 1) or null",
            ),
        ]
    elif isinstance(config, TrainConfig):
        check_seed(config.seed, f"{prefix}seed")
    elif isinstance(config, LoopConfig):
        positive = ["steps", "batch_size", "init_batch_size", "eval_batch_size", "log_every"]
        positive += ["eval_draws", "samples_per_row", "checkpoint_every", "nan_patience"]
        checks += [(name, getattr(config, name) > 0, "> 0") for name in positive]
        checks += [
            ("eval_every", config.eval_every >= 0, ">= 0"),
            ("sample_every", config.sample_every >= 0, ">= 0"),
            (
                "class_weight",
                math.isfinite(config.class_weight) and config.class_weight >= 0,
                "finite and >= 0",
            ),
            (
                "max_eval_images",
                config.max_eval_images is None or config.max_eval_images > 0,
                "> 0",
            ),
            ("rollback_lr_factor", 0 < config.rollback_lr_factor < 1, "in (0, 1)"),
            ("max_rollbacks", config.max_rollbacks >= 0, ">= 0"),
            (
                "sample_temperatures",
                len(config.sample_temperatures) > 0,
                "a non-empty list (one grid row per temperature, e.g. [0.7, 1.0])",
            ),
            (
                "sample_temperatures",
                all(math.isfinite(t) and t >= 0 for t in config.sample_temperatures),
                "finite and >= 0",
            ),
            ("compile_backend", bool(config.compile_backend.strip()), "a backend name"),
        ]
        if config.precision != "fp32" and config.dtype != "float32":
            raise UsageError(
                f"{prefix}precision={config.precision} needs {prefix}dtype=float32 (it is "
                f"{config.dtype}); use {prefix}precision=fp32 for a {config.dtype} run"
            )
    for name, ok, what in checks:
        if not ok:
            raise UsageError(f"{prefix}{name} must be {what}, got {getattr(config, name)!r}")


# -- files -----------------------------------------------------------------------------
def save_config(config: TrainConfig, path: str | os.PathLike[str]) -> Path:
    """Write ``config`` as indented JSON (atomically: a temporary file, then a rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(config.to_dict(), indent=2) + "\n")
    os.replace(tmp, path)
    return path


def load_config(path: str | os.PathLike[str], base: TrainConfig | None = None) -> TrainConfig:
    """Read a config written by :func:`save_config`, or the config of a checkpoint manifest.

    Fields the file omits keep the values of ``base``, else of the preset the file names
    (``"preset"``), else the defaults; so a file may hold only what differs. That includes
    the model's options, key by key, while the model stays the same (another model starts
    from its own defaults). A complete model section (``name``, ``num_classes`` and
    ``options``, as a run's ``config.json`` and a checkpoint manifest hold it) is taken as
    it is: those options are the ones its run was built with.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"config file {path} is not valid JSON: {exc}") from None
    manifest = isinstance(data, Mapping) and "train_config" in data
    if manifest:
        data = data["train_config"]
    if not isinstance(data, Mapping):
        raise UsageError(f"config file {path} must hold a JSON object")
    if base is None:
        base = get_preset(data["preset"]) if data.get("preset") else TrainConfig()
    merged = base.to_dict()
    for key, value in data.items():
        if key in _SECTIONS and isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            if key == "model":
                # The options merge key by key while the model stays the same; another model
                # starts from its own defaults, and a complete section's options are whole.
                same = value.get("name", merged["model"]["name"]) == merged["model"]["name"]
                complete = manifest or {"name", "num_classes", "options"} <= set(value)
                kept = merged["model"]["options"] if same and not complete else {}
                options = value.get("options", {})
                if isinstance(options, Mapping):  # anything else is refused by from_dict
                    value = {**value, "options": {**kept, **options}}
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return TrainConfig.from_dict(merged)
