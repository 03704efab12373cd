"""The three seed models and the registry used to rebuild a model from its config."""

from __future__ import annotations

from typing import Any

from .base import FlowModel, FlowOutput, Level
from .glow import Glow
from .nice import NICE
from .realnvp import RealNVP

__all__ = ["MODELS", "NICE", "FlowModel", "FlowOutput", "Glow", "Level", "RealNVP", "build_model"]

MODELS: dict[str, type[FlowModel]] = {"glow": Glow, "realnvp": RealNVP, "nice": NICE}


def build_model(name: str, config: dict[str, Any]) -> FlowModel:
    """Rebuild a model from its registry name and ``model.config``."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(sorted(MODELS))}")
    return MODELS[name](**config)
