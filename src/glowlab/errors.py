"""Errors that the command line reports as one line with exit code 2."""

from __future__ import annotations

__all__ = ["GlowlabError", "UsageError"]


class GlowlabError(Exception):
    """Base class of glowlab's own errors."""


class UsageError(GlowlabError, ValueError):
    """Bad user input: a wrong argument, file, or combination of options."""
