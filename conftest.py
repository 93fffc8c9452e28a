"""Project-wide pytest plugins: the claims framework (markers, ``claim`` fixture, verdicts, results files) and the
xdist grouping of claim tests by model (one GPU per worker where there are GPUs) and the progress lines / time
table of the measurements (``claims.progress``)."""

pytest_plugins = ["claims.plugin", "claims.xdist_groups", "claims.progress"]
