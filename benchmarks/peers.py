"""One interface to glowlab and to other Glow implementations, for side-by-side benchmarks.

``bench_peers.py`` times training steps, peak memory, sampling and learning speed of
several implementations with the same protocol. Each one is wrapped in a
:class:`Contender`, which knows the implementation's input convention, how its likelihood
reads as bits per dimension, how it samples, and the optimizer of its own training
script (its *recipe*).

The other implementations are not part of glowlab. Their code is imported from a checkout
whose folder is given on the command line (``--peer KIND=PATH``); nothing of theirs is
changed. Two kinds are known:

``rosinality``
    `rosinality/glow-pytorch <https://github.com/rosinality/glow-pytorch>`_: ``model.py``
    (needs scipy). Its coupling network is 512 channels wide, always affine with a learned
    top prior. Recipe: ``torch.optim.Adam`` at lr 1e-4, its ``train.py`` default.
    Input: dequantized images in [-0.5, 0.5), as glowlab's.

``y0ast``
    `y0ast/Glow-PyTorch <https://github.com/y0ast/Glow-PyTorch>`_: ``model.py``,
    ``modules.py`` and ``utils.py``. Recipe: ``torch.optim.Adam`` at lr 5e-4 with weight
    decay 5e-5 and a linear warmup over 5 epochs (the learning rate is multiplied by
    ``min(1, (epoch + 1) / 5)``), and ActNorm's init on 8 batches, as its ``train.py``
    does by default. Input: ``pixel / 256 - 0.5``; the model adds the dequantization noise
    itself and returns bits per dimension.

Every contender is handed the same uint8 images and returns the bits/dim of the discrete
8-bit data (the ``-D * log(256)`` dequantization term included), so the figures compare
directly.
"""

from __future__ import annotations

import contextlib
import importlib
import math
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from common import build_model, guarded_step, precision_context
from torch import Tensor, nn

import glowlab
from glowlab.metrics import bits_per_dim_from_log_prob
from glowlab.optim import Adamax
from glowlab.speed import GraphedCall

N_BITS = 8
BINS = 2**N_BITS


class Unsupported(Exception):
    """The implementation cannot build or run what was asked; the message says why."""


class Contender:
    """One implementation under test: a model on a device, and its training recipe.

    Subclasses set :attr:`model` and implement :meth:`bits_per_dim` and :meth:`sample`.
    ``bits_per_dim`` is per image, of uint8 ``pixels``, dequantized with fresh noise.
    """

    name: str
    recipe: str
    model: nn.Module
    init_images: int  # images for ActNorm's data-dependent init, as the recipe does it

    def __init__(self, config: dict[str, Any], device: torch.device, source: str) -> None:
        self.config = config
        self.device = device
        self.source = source

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.config["image_shape"])  # type: ignore[return-value]

    @property
    def dims(self) -> int:
        return math.prod(self.image_shape)

    def bits_per_dim(self, pixels: Tensor) -> Tensor:
        raise NotImplementedError

    def sample(self, n: int, temperature: float) -> Tensor:
        raise NotImplementedError

    def initialize(self, pixels: Tensor) -> None:
        """Run the data-dependent init (ActNorm) on ``pixels`` without a gradient."""
        self.model.train()
        with torch.no_grad():
            self.bits_per_dim(pixels)

    def optimizer(self) -> torch.optim.Optimizer:
        raise NotImplementedError

    def learning_rate(self, base: float, step: int, batch: int, train_size: int) -> float:
        """The recipe's learning rate at training step ``step`` (from 0) of ``batch`` images."""
        return base

    def training_step(self, optimizer: torch.optim.Optimizer) -> Callable[[Tensor], Tensor]:
        """A function that takes one step on a uint8 batch and returns the loss (no read-back)."""

        def step(pixels: Tensor) -> Tensor:
            optimizer.zero_grad(set_to_none=True)
            loss = self.backward(pixels)
            optimizer.step()
            return loss.detach()

        return step

    def backward(self, pixels: Tensor) -> Tensor:
        """The mean bits/dim of a uint8 batch, after its backward pass."""
        loss = self.bits_per_dim(pixels).mean()
        loss.backward()
        return loss

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


class GlowlabContender(Contender):
    """glowlab's Glow with the Trainer's guarded Adamax, in a chosen precision and mode."""

    name = "glowlab"
    init_images = 256

    def __init__(
        self,
        config: dict[str, Any],
        device: torch.device,
        config_name: str,
        precision: str,
        memory_mode: str,
        layout: Callable[[nn.Module], Callable[[Tensor], Tensor]],
        warmup_steps: int,
        cuda_graphs: bool = False,
    ) -> None:
        super().__init__(config, device, f"glowlab {glowlab.__version__}")
        self.model = build_model(config_name, device, **config)  # config: every field
        self.model.set_memory_mode(memory_mode)
        self.precision = precision
        self._layout_setup: Callable[[nn.Module], Callable[[Tensor], Tensor]] | None = layout
        self._layout: Callable[[Tensor], Tensor] = lambda x: x
        self.warmup_steps = warmup_steps
        self.cuda_graphs = cuda_graphs
        self._sample_graphs: dict[tuple[int, float], GraphedCall] = {}
        self.recipe = (
            f"glowlab.optim.Adamax lr 1e-3, linear warmup over {warmup_steps} steps, "
            f"guarded (bench_learning.py's); {precision}, memory mode {memory_mode}"
            + (", CUDA graphs" if cuda_graphs else "")
        )

    def initialize(self, pixels: Tensor) -> None:
        super().initialize(pixels)
        if self._layout_setup is not None:  # channels-last and compilation: once, after init
            self._layout = self._layout_setup(self.model)
            self._layout_setup = None

    def bits_per_dim(self, pixels: Tensor) -> Tensor:
        x = glowlab.dequantize(pixels, N_BITS, dtype=torch.float32)
        with precision_context(self.precision, self.model):
            log_prob = self.model.log_prob(self._layout(x))
        return bits_per_dim_from_log_prob(log_prob, self.dims, N_BITS)

    def backward(self, pixels: Tensor) -> Tensor:
        # The backward pass in the same precision: the memory-saving modes run the coupling
        # networks again there.
        with precision_context(self.precision, self.model):
            return super().backward(pixels)

    def sample(self, n: int, temperature: float) -> Tensor:
        if not self.cuda_graphs:
            return self._sample(n, temperature)
        key = (n, temperature)
        if key not in self._sample_graphs:
            self._sample_graphs[key] = GraphedCall(
                lambda: self._sample(n, temperature), device=self.device
            )
        return self._sample_graphs[key]()

    def _sample(self, n: int, temperature: float) -> Tensor:
        with precision_context(self.precision, self.model):
            return self.model.sample(n, temperature=temperature)

    def optimizer(self) -> torch.optim.Optimizer:
        # A recorded step reads its learning rate from a tensor (GraphedCall).
        lr = torch.tensor(1e-3, device=self.device) if self.cuda_graphs else 1e-3
        return Adamax(self.model.parameters(), lr=lr)

    def learning_rate(self, base: float, step: int, batch: int, train_size: int) -> float:
        return base * min(1.0, (step + 1) / max(self.warmup_steps, 1))

    def training_step(self, optimizer: torch.optim.Optimizer) -> Callable[[Tensor], Tensor]:
        # As the Trainer steps; NaN for a rejected update, as bench_learning.py counts.
        step = guarded_step(optimizer, self.backward)  # type: ignore[arg-type]
        return _GraphedSteps(step, self.device) if self.cuda_graphs else step


class _GraphedSteps:
    """A training step recorded as one CUDA graph per batch shape (``warm`` records one
    without training: its warmup calls reject their updates)."""

    def __init__(self, step: Callable[[Tensor, Tensor], Tensor], device: torch.device) -> None:
        self.step = step
        self.yes = torch.ones((), dtype=torch.bool, device=device)
        self.graphs: dict[tuple[int, ...], GraphedCall] = {}

    def warm(self, pixels: Tensor) -> None:
        if tuple(pixels.shape) not in self.graphs:
            no = torch.zeros_like(self.yes)
            self.graphs[tuple(pixels.shape)] = GraphedCall(self.step, pixels, no)

    def __call__(self, pixels: Tensor) -> Tensor:
        self.warm(pixels)
        return self.graphs[tuple(pixels.shape)](pixels, self.yes).clone()


class RosinalityContender(Contender):
    name = "rosinality"
    recipe = "torch.optim.Adam lr 1e-4 (its train.py default); torch defaults"
    init_images = 0  # its train.py inits on the first training batch

    def __init__(self, config: dict[str, Any], device: torch.device, checkout: Path) -> None:
        super().__init__(config, device, checkout_source(checkout))
        if config["hidden_channels"] != 512:
            raise Unsupported("its coupling networks are 512 channels wide, not configurable")
        if config["coupling"] != "affine" or config["permutation"] != "conv1x1_lu":
            raise Unsupported("only affine couplings with LU 1x1 convolutions are benchmarked")
        if not config["learn_top"]:
            raise Unsupported("its top prior is always learned")
        channels = config["image_shape"][0]
        with import_checkout(checkout, "model") as (module,):
            self.model = module.Glow(
                channels, config["steps"], config["levels"], affine=True, conv_lu=True
            ).to(device)
        self._z_shapes: list[torch.Size] | None = None

    def bits_per_dim(self, pixels: Tensor) -> Tensor:
        x = glowlab.dequantize(pixels, N_BITS, dtype=torch.float32)
        log_p, logdet, z = self.model(x)
        if self._z_shapes is None:
            self._z_shapes = [t.shape[1:] for t in z]
        return bits_per_dim_from_log_prob(log_p + logdet, self.dims, N_BITS)

    def sample(self, n: int, temperature: float) -> Tensor:
        if self._z_shapes is None:
            raise RuntimeError("initialize the model before sampling")
        z = [torch.randn(n, *s, device=self.device) * temperature for s in self._z_shapes]
        with torch.no_grad():
            return self.model.reverse(z)

    def optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.model.parameters(), lr=1e-4)


class Y0astContender(Contender):
    name = "y0ast"
    recipe = (
        "torch.optim.Adam lr 5e-4, weight decay 5e-5, warmup over 5 epochs "
        "(its train.py defaults); torch defaults"
    )
    init_images = 8 * 64  # n_init_batches x batch_size, its train.py defaults

    def __init__(self, config: dict[str, Any], device: torch.device, checkout: Path) -> None:
        super().__init__(config, device, checkout_source(checkout))
        if config["permutation"] not in ("conv1x1", "conv1x1_lu"):
            raise Unsupported("only 1x1 convolution permutations are benchmarked")
        c, h, w = config["image_shape"]
        with import_checkout(checkout, "model", "modules", "utils") as (module, modules, _):
            self.model = module.Glow(
                (h, w, c), config["hidden_channels"], config["steps"], config["levels"],
                1.0, "invconv", config["coupling"], config["permutation"] == "conv1x1_lu",
                10, config["learn_top"], False,
            ).to(device)  # fmt: skip
        self._gaussian_sample = modules.gaussian_sample

    def bits_per_dim(self, pixels: Tensor) -> Tensor:
        x = pixels.to(torch.float32) / BINS - 0.5  # a fresh tensor: the model adds noise in place
        _, bits, _ = self.model(x, None)
        return bits

    def sample(self, n: int, temperature: float) -> Tensor:
        with torch.no_grad():
            if n == 32:  # its own sampling path, which draws 32
                return self.model(temperature=temperature, reverse=True)
            mean, logs = self.model.prior(torch.empty(n, 1, 1, 1, device=self.device))
            z = self._gaussian_sample(mean, logs, temperature)
            return self.model(z=z, temperature=temperature, reverse=True)

    def optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.model.parameters(), lr=5e-4, weight_decay=5e-5)

    def learning_rate(self, base: float, step: int, batch: int, train_size: int) -> float:
        epoch = step * batch // train_size
        return base * min(1.0, (epoch + 1) / 5)


PEER_KINDS: dict[str, type[Contender]] = {
    "rosinality": RosinalityContender,
    "y0ast": Y0astContender,
}


@contextlib.contextmanager
def import_checkout(checkout: Path, *names: str) -> Iterator[tuple[Any, ...]]:
    """Import top-level modules ``names`` from the folder ``checkout``, and forget them after.

    Peers name their files ``model.py``, ``modules.py``, ``utils.py``; these names are taken
    out of ``sys.modules`` again (and any earlier modules of those names put back), so two
    checkouts do not see each other's files.
    """
    folder = str(Path(checkout).resolve())
    saved = {name: sys.modules.pop(name) for name in names if name in sys.modules}
    sys.path.insert(0, folder)
    try:
        yield tuple(importlib.import_module(name) for name in names)
    finally:
        sys.path.remove(folder)
        for name in names:
            sys.modules.pop(name, None)
        sys.modules.update(saved)


def checkout_source(checkout: Path) -> str:
    """Where a checkout's code came from: its ``SOURCE.txt``, else its git commit, else its path."""
    source = Path(checkout) / "SOURCE.txt"
    if source.exists():
        return " ".join(source.read_text().split())
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        commit = subprocess.run(
            ["git", "-C", str(checkout), "rev-parse", "HEAD"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        return f"{checkout} at {commit}"
    return str(checkout)
