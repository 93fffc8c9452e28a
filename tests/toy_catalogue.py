"""The header shared by the unit tests' toy claim catalogues (engine.verdicts.parse_catalogue): the two embedded
cpu models and their scale markers. A test appends its own scales and [[claim]] tables."""

HEADER = """
[catalogue]
cpu_models = ["smollm2-135m", "gemma3-270m"]
default_tolerance = { rel = 0.05 }
[scales]
scale_135m = "SmolLM2-135M"
scale_270m = "Gemma-3-270M"
"""
