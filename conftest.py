"""Project-wide pytest plugins: the claims framework (markers, ``claim`` fixture, verdicts, results files) and the
xdist grouping of claim tests by model (one GPU per worker where there are GPUs)."""

pytest_plugins = ["claims.plugin", "claims.xdist_groups"]
