"""The one exception of ``engine.interventions``."""

from __future__ import annotations


class InterventionError(RuntimeError):
    """An intervention could not be applied, did not fire, or was specified inconsistently."""
