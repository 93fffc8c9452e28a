"""Project-wide pytest plugins: the claims framework (markers, ``claim`` fixture, verdicts, results files) and the
xdist grouping of claim tests by model (one GPU per worker where there are GPUs), the progress lines / time
table of the measurements (``claims.progress``) and the pytest-html extras of claim tests (``claims.html_extras``:
inert without pytest-html or ``--html``)."""

pytest_plugins = ["claims.plugin", "claims.xdist_groups", "claims.progress", "claims.html_extras"]
