"""Errors difframe raises. Each message says what is wrong and how to fix it."""

from __future__ import annotations


class DifframeError(Exception):
    """Base class of every error difframe raises on purpose."""


class PluginError(DifframeError):
    """A plugin failed to import, its hook raised, or it registered something invalid."""


class UnknownComponentError(DifframeError, LookupError):
    """A name that no installed plugin registers."""

    def __str__(self) -> str:  # LookupError would repr() the message
        return str(self.args[0]) if self.args else ""


class UnavailableError(DifframeError):
    """The component exists but cannot run on this machine (missing package, no GPU)."""


class ConfigError(DifframeError, ValueError):
    """A component configuration that does not validate."""


class ModelLoadError(DifframeError, OSError):
    """A model folder or weights file that cannot be loaded as asked."""


class SaveTargetError(DifframeError, OSError):
    """The place a save was asked to write is not a folder it may replace (a file, a link to a file or nowhere)."""
