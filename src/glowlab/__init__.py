"""glowlab: flow-based generative models of images with exact log-likelihood.

NICE, RealNVP and Glow, their invertible layers, and the tools to train, evaluate, sample
and manipulate them. Models take float images in [-0.5, 0.5) of shape (B, C, H, W).
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from .checkpoint import load, save
from .config import TrainConfig
from .metrics import bits_per_dim, bits_per_dim_from_log_prob, dequantize, quantize
from .models import NICE, FlowModel, FlowOutput, Glow, RealNVP, build_model
from .train import Trainer

try:
    __version__ = version("glowlab")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"

__all__ = [
    "NICE",
    "FlowModel",
    "FlowOutput",
    "Glow",
    "RealNVP",
    "TrainConfig",
    "Trainer",
    "__version__",
    "bits_per_dim",
    "bits_per_dim_from_log_prob",
    "build_model",
    "dequantize",
    "load",
    "quantize",
    "save",
]
