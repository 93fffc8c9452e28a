"""MI-Atlas claim tests, one module per block (atlas, lora, steer, quant), and the pytest plugin that runs them.

``claims.plugin`` is loaded by the root ``conftest.py``. A claim test imports only what it needs from it, e.g.
``from claims.plugin import claim_params``.
"""
