"""The one exception of the model layer."""

from __future__ import annotations


class ModelError(RuntimeError):
    """A model cannot be used; the message names the model and says what to do."""
