"""MI-Atlas engine: models, tasks, interventions, atlas, steering, LoRA, quantisation, claims, reports.

Nothing in this package imports pytest or `claims/`; the pytest plugin sits on top of it.
"""

__version__ = "0.1.0"
ENGINE_VERSION = __version__
