"""pytest-xdist on a multi-GPU machine: one GPU per worker, claims grouped by model (see engine/devices.py).

Registered from the root ``conftest.py`` (``pytest_plugins``), next to ``claims.plugin``. Three hooks:

* ``pytest_configure`` (first): an xdist worker sets ``CUDA_VISIBLE_DEVICES`` to its own device, chosen from its
  worker id and the run's visible devices, before anything initialises CUDA. Outside xdist, or without a GPU,
  nothing changes: the same code runs on CPU with ``-n 2``.
* ``pytest_collection_modifyitems`` (first): every claim test gets ``xdist_group("<model>/<block>")``
  (``"<model>/atlas"``, ``"<model>/lora"``, ``"<model>/steer"``, ...); ``--dist loadgroup`` keeps a group on one
  worker, which loads the model once. An explicit ``xdist_group`` mark on a test wins.
* the same hook (last): re-applies xdist's ``@group`` node-id suffix where pytest >= 9.2 ignores xdist 3.8's
  write to ``_nodeid`` (pytest-dev/pytest-xdist#1386); a no-op where xdist's own write took effect.

Whatever the grouping, the content-addressed cache (``engine/cache.py``, file-locked) makes each atlas be
computed once across workers: a second worker asking for it waits and reads it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from engine import devices


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    if hasattr(config, "workerinput"):  # an xdist worker: pin it before anything initialises CUDA
        try:
            devices.pin_worker()
        except devices.DeviceError as exc:
            raise pytest.UsageError(str(exc)) from exc


def _claim_block(config: pytest.Config, claim_id: str) -> str | None:
    from claims.plugin import CATALOGUE  # the catalogue claims.plugin loaded in pytest_configure

    catalogue = config.stash.get(CATALOGUE, None)
    try:
        return None if catalogue is None else catalogue[claim_id].block
    except Exception:  # an unknown claim id is reported as a collection error by claims.plugin
        return None


@pytest.hookimpl(tryfirst=True)  # before xdist's WorkerInteractor reads the xdist_group marks
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        mark = item.get_closest_marker("claim")
        if mark is None or item.get_closest_marker("xdist_group") or not mark.args:
            continue
        model = mark.kwargs.get("model")
        model = model if isinstance(model, str) or model is None else "+".join(model)
        block = _claim_block(config, mark.args[0])
        if model and block:
            item.add_marker(pytest.mark.xdist_group(devices.claim_group(model, block)))


@pytest.hookimpl(trylast=True, specname="pytest_collection_modifyitems")
def pytest_collection_modifyitems_loadgroup(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not (hasattr(config, "workerinput") and config.getvalue("loadgroup")):
        return
    for item in items:
        suffix = devices.loadgroup_suffix(
            [m.args[0] if m.args else m.kwargs.get("name", "default") for m in item.iter_markers("xdist_group")])
        if suffix and not item.nodeid.endswith(suffix) and hasattr(item, "_id"):
            item._id = type(item._id).parse(item.nodeid + suffix)
    items[:] = longest_groups_first(config, items)


def _group(item: pytest.Item) -> str:
    marks = [m.args[0] if m.args else m.kwargs.get("name", "default") for m in item.iter_markers("xdist_group")]
    return marks[0] if marks else item.nodeid


def longest_groups_first(config: pytest.Config, items: list[pytest.Item]) -> list[pytest.Item]:
    """The items regrouped so that the groups that took longest in the plan's last timed run come first (xdist's
    loadgroup hands groups out in order of first appearance: longest first leaves no long group for the end, when
    the other worker would idle); a plan without timings of its own is ranked by the default plan's. Within a group,
    and without timings, the collection order is kept. Every worker reads the same timings file, so every worker
    collects the same order."""
    from claims.progress import timings_source
    from engine.planner import read_timings

    # None: no file, or a malformed one (one warning, from the controller or the only process)
    source = timings_source(config)
    data = read_timings(source, warn=not hasattr(config, "workerinput"))
    reference = Path(str(config.rootpath)) / "results" / "bench" / "plan-default-timings.json"
    if data is None and not source.is_file() and reference.is_file():
        # a plan never timed (e.g. the first `--plan full`): the reference plan's claim times rank the groups
        data = read_timings(reference, warn=not hasattr(config, "workerinput"))
    if data is None:
        return items
    seconds = {c["claim"]: float(c["seconds"]) for c in data.get("claims", [])}
    totals: dict[str, float] = {}
    for item in items:
        mark = item.get_closest_marker("claim")
        model = mark.kwargs.get("model") if mark is not None else None
        model = model if isinstance(model, str) or model is None else "+".join(model)
        label = f"{mark.args[0]}[{model}]" if mark is not None and mark.args else ""
        totals[_group(item)] = totals.get(_group(item), 0.0) + seconds.get(label, 0.0)
    first = {g: i for i, g in reversed(list(enumerate(map(_group, items))))}
    return sorted(items, key=lambda it: (-totals[_group(it)], first[_group(it)]))
