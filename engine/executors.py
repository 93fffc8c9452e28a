"""Executors for atlas sweeps: ``local`` (this process) and ``ray`` (Ray actors, one machine or a cluster).

A sweep is a list of atlas jobs (model x seed x family selection x component/method: ``AtlasJob``). Each job is
split into cells by ``engine.atlas.plan_cells`` (examples, optionally per family, x layer ranges); a cell is
computed by ``engine.atlas.compute_cell`` and the cells of a job are assembled by ``engine.atlas.merge_cells``.
The plan belongs to the sweep, not to the executor, so ``local`` and ``ray`` compute the same cells and write the
same ``atlas.json`` (``write_sweep``); only timings and the executor's name differ (``comparable``).

With the default plan (all examples together, layers in ranges of ``layers_per_cell``) a merged atlas equals
the un-split ``engine.atlas.atlas`` call exactly: every per-layer quantity (per-example effects, the
information-erasing guard's sums, the unchanged count) depends only on its layer and the batches, which a layer
split does not change. ``by_family=True`` (and ``max_rows``) also split the examples: the per-example effects
then come from other batches (other padding and matmul shapes) and agree with the un-split call to float32
rounding, and the guard pairs prompts within a family, so ``erase_ratio`` is that of the family-split plan.
Either way both executors give the same bits, because they compute the same cells.

Ray (optional extra: ``pip install -e '.[ray]'``):

* one actor per worker slot, requesting ``num_cpus`` / ``num_gpus`` / ``memory``; the actor process keeps the
  model it loaded (``max_models`` at a time), and the driver sends a model's cells to actors that hold it;
* progress streams as cells finish (``progress`` callback with a ``CellEvent``);
* a killed or lost actor is restarted (``max_restarts``) and its queued and running cells are retried
  (``max_task_retries``); a cell that raises an ordinary exception fails the sweep at once;
* a sweep is returned, and written, only when every cell merged: otherwise ``SweepError`` and nothing is
  written. With ``cache=True`` each finished cell is stored in the content-addressed cache (``engine/cache.py``)
  of the node that computed it, so a rerun on that machine (or with a shared ``MI_ATLAS_RESULTS_CACHE``)
  resumes where the failed sweep stopped.

``RayExecutor`` also has ``map(fn, jobs)``, the protocol of ``engine.atlas.atlas(..., executor=...)``.
Without ray installed the local executor works as before and asking for ``ray`` raises ``ExecutorError``.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from engine import ENGINE_VERSION, stats
from engine.atlas import AtlasError

EXECUTORS = ("local", "ray")
SWEEP_KIND = "atlas_sweep"
SWEEP_FORMAT = 1
RAY_INSTALL = "pip install -e '.[ray]'  (or: pip install 'ray[default]')"


class ExecutorError(ValueError):
    """An executor cannot run here (e.g. ray is not installed) or was asked for something it cannot do."""


class SweepError(AtlasError):
    """A sweep did not complete; nothing was written. ``done`` lists the labels of the cells that finished."""

    def __init__(self, message: str, done: Sequence[str] = ()):
        super().__init__(message)
        self.done = list(done)


# ------------------------------------------------------------------------------------------------ plan


@dataclass(frozen=True)
class AtlasJob:
    """One atlas of a sweep: ``engine.atlas.atlas(load(model), examples, **options)``.

    ``examples`` is the job's sample, resolved by the driver (``Sweep.from_grid`` draws it with
    ``engine.tasks.sample``), so workers need no fixtures.
    """

    model: str
    seed: int
    examples: tuple
    families: tuple[str, ...] | None = None
    component: str = "layer"
    method: str = "zero"
    positions: str = "all"
    measure: str = "answer"
    template: str = "auto"
    heads: tuple[int, ...] | None = None
    modules: tuple[str, ...] | None = None
    layers: tuple[int, ...] | None = None  # None: every layer of the model
    dtype: str = "fp32"
    quant: str | None = None
    batch_size: int = 32
    fast: bool = True
    n_resamples: int = stats.DEFAULT_RESAMPLES

    @property
    def label(self) -> str:
        fams = "all" if self.families is None else "+".join(self.families)
        return f"{self.model}/seed{self.seed}/{fams}/{self.component}-{self.method}"

    def cell_options(self) -> dict:
        """``engine.atlas.compute_cell`` keyword arguments."""
        return dict(method=self.method, component=self.component, positions=self.positions, measure=self.measure,
                    template=self.template, seed=self.seed, batch_size=self.batch_size, fast=self.fast,
                    heads=None if self.heads is None else list(self.heads),
                    modules=None if self.modules is None else list(self.modules))

    def describe(self) -> dict:
        """The job without its examples (the atlas keeps their ids and the suite hash)."""
        out = {k: v for k, v in asdict(self).items() if k != "examples"}
        out["n_examples"] = len(self.examples)
        return out


@dataclass(frozen=True)
class SweepCell:
    """Cell ``cell`` (an ``engine.atlas.Cell``: example rows x layers) of job number ``job``."""

    job: int
    cell: Any
    label: str


@dataclass
class Sweep:
    """Atlas jobs and how each is cut into cells (the same plan for every executor)."""

    jobs: list[AtlasJob]
    layers_per_cell: int | None = 8
    by_family: bool = False
    max_rows: int | None = None
    n_layers: dict[str, int] = field(default_factory=dict)  # model -> layers (default: the registry's)

    @classmethod
    def from_grid(cls, models: Sequence[str], seeds: Sequence[int], *,
                  family_groups: Sequence[Sequence[str]] | None = None, per_family: int = 4,
                  suite: str = "synthetic", split: str | None = None, components: Sequence[str] = ("layer",),
                  methods: Sequence[str] = ("zero",), layers_per_cell: int | None = 8, by_family: bool = False,
                  max_rows: int | None = None, **options) -> "Sweep":
        """models x seeds x family groups x components x methods; ``options`` go to every ``AtlasJob``.

        ``family_groups``: None = one atlas over every family; ``[[f] for f in FAMILIES]`` = one atlas per family.
        """
        from engine import tasks

        groups = [None] if family_groups is None else [tuple(g) for g in family_groups]
        jobs = []
        for model in models:
            for seed in seeds:
                for group in groups:
                    examples = tuple(tasks.sample(families=None if group is None else list(group),
                                                  per_family=per_family, seed=seed, suite=suite, split=split))
                    for component in components:
                        for method in methods:
                            jobs.append(AtlasJob(model=model, seed=seed, examples=examples, families=group,
                                                 component=component, method=method, **options))
        return cls(jobs, layers_per_cell=layers_per_cell, by_family=by_family, max_rows=max_rows)

    def layers_of(self, model: str) -> int:
        if model in self.n_layers:
            return self.n_layers[model]
        from engine import models

        return int(models.spec_for(model).n_layers)

    def cells(self) -> list[SweepCell]:
        from engine import atlas as atlas_lib

        if self.layers_per_cell is not None and self.layers_per_cell < 1:
            raise ExecutorError(f"layers_per_cell must be >= 1, got {self.layers_per_cell}")
        out = []
        for j, job in enumerate(self.jobs):
            layers = range(self.layers_of(job.model)) if job.layers is None else list(job.layers)
            for cell in atlas_lib.plan_cells(job.examples, layers, by_family=self.by_family,
                                             layer_chunk=self.layers_per_cell, max_rows=self.max_rows):
                out.append(SweepCell(j, cell, f"{job.label}/{cell.label}"))
        return out


# ------------------------------------------------------------------------------------------------ cells

_MODELS: OrderedDict = OrderedDict()  # this process's loaded models: a worker loads each model once
MAX_MODELS = 1


def model_for(job: AtlasJob, max_models: int | None = None):
    """The job's model, loaded once per process (LRU of ``max_models``, default ``MAX_MODELS``)."""
    from engine import models

    key = (job.model, job.dtype, job.quant)
    lm = _MODELS.pop(key, None)
    if lm is None:
        while _MODELS and len(_MODELS) >= (max_models or MAX_MODELS):
            _MODELS.popitem(last=False)
        lm = models.load(job.model, dtype=job.dtype, quant=job.quant)
    _MODELS[key] = lm
    return lm


def _cell_key(lm, job: AtlasJob, cell) -> dict:
    from engine import atlas as atlas_lib

    return {"kind": "atlas_cell", "model": lm.key, "fingerprint": lm.fingerprint, "dtype": str(lm.dtype),
            "quant": getattr(lm, "quant", None), "suite": atlas_lib.suite_hash(job.examples),
            "options": job.cell_options(), "rows": list(cell.rows), "layers": list(cell.layers)}


def compute_sweep_cell(jobs: Sequence[AtlasJob], index: int, cell, cache: bool = False) -> dict:
    """Compute one cell of ``jobs[index]`` in this process: ``{"meta", "units", "result"}`` (plain data).

    ``meta``/``units`` are what ``merge_cells`` needs from the model (the driver never loads it).
    """
    from engine import atlas as atlas_lib

    job = jobs[index]
    lm = model_for(job)

    def compute() -> dict:
        return atlas_lib.compute_cell(lm, list(job.examples), cell, **job.cell_options()).to_json()

    if cache:
        from engine.cache import cached

        result = cached(_cell_key(lm, job, cell), compute)
    else:
        result = compute()
    _ids, units = atlas_lib.sweep_units(lm, job.component, job.heads, job.modules)
    return {"meta": atlas_lib.model_meta(lm), "units": units, "result": result}


def merge_job(job: AtlasJob, outputs: Sequence[dict], n_layers: int) -> dict:
    """The atlas JSON of ``job`` from its cells' outputs (``merge_cells`` checks they tile it exactly once)."""
    from engine import atlas as atlas_lib

    meta, units = outputs[0]["meta"], outputs[0]["units"]
    if any(o["meta"] != meta for o in outputs):
        raise SweepError(f"{job.label}: cells were computed on different weights: "
                         f"{sorted({o['meta']['fingerprint'] for o in outputs})}")
    merged = atlas_lib.merge_cells(meta, list(job.examples), [o["result"] for o in outputs], method=job.method,
                                   component=job.component, positions=job.positions, measure=job.measure,
                                   template=job.template, seed=job.seed,
                                   layers=list(range(n_layers)) if job.layers is None else list(job.layers),
                                   units=units, fast=job.fast, n_resamples=job.n_resamples)
    return merged.to_json()


@dataclass
class CellEvent:
    """Progress: cell ``label`` finished (``done`` of ``total``) on ``worker`` (pid ``pid``) in ``seconds``."""

    done: int
    total: int
    label: str
    worker: str
    pid: int
    seconds: float
    restarted: bool = False
    elapsed: float = 0.0

    def line(self) -> str:
        eta = self.elapsed / self.done * (self.total - self.done) if self.done else 0.0
        note = " (restarted worker)" if self.restarted else ""
        return (f"[{self.done}/{self.total}] {self.label} on {self.worker}{note}: {self.seconds:.1f} s "
                f"(elapsed {self.elapsed:.0f} s, eta {eta:.0f} s)")


def _assemble(sweep: Sweep, cells: list[SweepCell], outputs: dict[int, dict], executor: str, seconds: float,
              extra: dict | None = None) -> dict:
    missing = [c.label for i, c in enumerate(cells) if i not in outputs]
    if missing:  # never hand out (or write) a partial sweep
        raise SweepError(f"sweep incomplete: {len(missing)} of {len(cells)} cells missing (e.g. {missing[:3]})",
                         done=[c.label for i, c in enumerate(cells) if i in outputs])
    atlases = [merge_job(job, [outputs[i] for i, c in enumerate(cells) if c.job == j], sweep.layers_of(job.model))
               for j, job in enumerate(sweep.jobs)]
    return {"kind": SWEEP_KIND, "format": SWEEP_FORMAT, "complete": True, "engine_version": ENGINE_VERSION,
            "executor": executor, "plan": {"layers_per_cell": sweep.layers_per_cell, "by_family": sweep.by_family,
                                           "max_rows": sweep.max_rows, "n_cells": len(cells)},
            "seconds": seconds, "jobs": [job.describe() for job in sweep.jobs], "atlases": atlases,
            **(extra or {})}


def write_sweep(result: dict, path: str | Path) -> Path:
    """Write a complete sweep as JSON, atomically (a reader never sees half a file). Refuses a partial one."""
    if result.get("kind") != SWEEP_KIND or result.get("complete") is not True:
        raise SweepError("write_sweep: refusing to write a sweep that is not marked complete")
    if len(result.get("atlases", [])) != len(result.get("jobs", [])):
        raise SweepError(f"write_sweep: {len(result.get('atlases', []))} atlases for {len(result['jobs'])} jobs")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(result, handle, indent=1, allow_nan=True)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def comparable(result: dict) -> dict:
    """A sweep without what legitimately differs between executors and runs (timings, executor details)."""
    out = {k: v for k, v in result.items() if k not in ("seconds", "executor", "ray")}
    out["atlases"] = [{k: v for k, v in a.items() if k != "seconds"} for a in result["atlases"]]
    return out


# ------------------------------------------------------------------------------------------------ local


def run_local(sweep: Sweep, *, cache: bool = False, progress: Callable[[CellEvent], None] | None = None) -> dict:
    """Compute every cell in this process (cells of one model together, so it is loaded once) and merge."""
    cells = sweep.cells()
    order = sorted(range(len(cells)), key=lambda i: (sweep.jobs[cells[i].job].model, i))
    outputs: dict[int, dict] = {}
    start = time.perf_counter()
    for i in order:
        t0 = time.perf_counter()
        outputs[i] = compute_sweep_cell(sweep.jobs, cells[i].job, cells[i].cell, cache)
        if progress is not None:
            progress(CellEvent(len(outputs), len(cells), cells[i].label, "local", os.getpid(),
                               time.perf_counter() - t0, elapsed=time.perf_counter() - start))
    return _assemble(sweep, cells, outputs, "local", time.perf_counter() - start)


# ------------------------------------------------------------------------------------------------ ray


_DTYPE_BYTES = {"fp32": 4, "float32": 4, "bf16": 2, "bfloat16": 2, "fp16": 2, "float16": 2}


def estimate_memory(model: str, dtype: str = "fp32", quant: str | None = None) -> int | None:
    """Bytes an actor needs for ``model``: twice its weights (weights + activations and the loading copy) plus
    1 GiB for the process (torch, transformers); None when the registry does not give a parameter count."""
    from engine import models

    try:
        params = models.spec_for(model).params.strip().upper()
        count = float(params[:-1]) * {"K": 1e3, "M": 1e6, "B": 1e9}[params[-1]]
    except (models.ModelError, ValueError, KeyError, IndexError, AttributeError):
        return None
    per_param = {"nf4": 0.5, "int8": 1}.get(quant or "", _DTYPE_BYTES.get(str(dtype), 4))
    return int(2 * count * per_param + 2**30)


def require_ray():
    """The ``ray`` module, or ``ExecutorError`` saying how to install it."""
    try:
        import ray
    except ImportError as exc:
        raise ExecutorError(f"the ray executor needs the optional dependency 'ray', which is not installed "
                            f"({exc}). Install it with: {RAY_INSTALL}; or use --executor local") from None
    return ray


class _Worker:
    """A Ray actor: runs module-level functions in its own process, where loaded models stay (``model_for``)."""

    def __init__(self, name: str, num_cpus: float, max_models: int):
        import warnings

        import ray
        import torch

        global MAX_MODELS
        self.name = name
        MAX_MODELS = max_models
        if num_cpus >= 1:
            torch.set_num_threads(int(num_cpus))
        with warnings.catch_warnings():  # deprecated in favour of comparing actor ids; still the direct answer
            warnings.simplefilter("ignore")
            self.restarted = bool(ray.get_runtime_context().was_current_actor_reconstructed)

    def info(self) -> dict:
        return {"pid": os.getpid(), "name": self.name, "restarted": self.restarted}

    def run(self, fn: Callable, *args) -> tuple[Any, dict]:
        start = time.perf_counter()
        out = fn(*args)
        return out, {**self.info(), "seconds": time.perf_counter() - start}


@dataclass
class RayOptions:
    """Where and how the Ray executor runs.

    ``address``: None = ``ray.init()``'s default (``RAY_ADDRESS``, else a running local cluster, else a new
    one); ``"local"`` = always a new local cluster; ``"auto"`` = the running cluster; or ``"ray://host:10001"``.
    ``workers``: actors to start (default: as many as the cluster's resources allow, at most one per cell).
    ``num_gpus`` per actor (default 1 when the cluster has GPUs, else 0). ``memory`` per actor in bytes, a
    scheduling request: ``"auto"`` (default) = ``estimate_memory`` of the largest model of the run, None = none.
    ``init``: extra ``ray.init`` arguments (e.g. ``num_cpus``, ``runtime_env``).
    """

    address: str | None = None
    workers: int | None = None
    num_cpus: float = 1.0
    num_gpus: float | None = None
    memory: int | str | None = "auto"
    max_models: int = 1
    max_restarts: int = 3
    max_task_retries: int = 3
    in_flight: int = 2  # calls queued per actor, so an actor never idles between cells
    layers_per_cell: int | None = 4  # the plan ``engine.atlas.atlas(..., executor=)`` uses (``plan``)
    init: dict = field(default_factory=dict)


class RayExecutor:
    """Ray actors computing tasks ``(fn, args)``; a context manager that connects (or starts) Ray and the actors.

    ``run_tasks`` is the scheduler; ``map(fn, jobs)`` and ``plan`` are ``engine.atlas.atlas(..., executor=)``'s
    protocol: the plan splits layers only (all examples together), so the merged atlas is bit for bit the one
    the local executor computes. ``progress`` receives a ``CellEvent`` per finished task.
    """

    def __init__(self, options: RayOptions | None = None, progress: Callable[[CellEvent], None] | None = None):
        self.options = options or RayOptions()
        self.ray = require_ray()
        self.progress = progress
        self._started = False
        self.events: list[CellEvent] = []

    @property
    def plan(self) -> dict:
        """``engine.atlas.plan_cells`` arguments for ``atlas(..., executor=self)``."""
        return {"by_family": False, "layer_chunk": self.options.layers_per_cell}

    def __enter__(self) -> "RayExecutor":
        if not self.ray.is_initialized():
            init = {"address": self.options.address, "include_dashboard": False, **self.options.init}
            self.ray.init(**init)
            self._started = True
        return self

    def __exit__(self, *exc) -> None:
        if self._started:
            self.ray.shutdown()
            self._started = False

    def _plan_workers(self, n_tasks: int, memory: int | None) -> tuple[int, float]:
        o, resources = self.options, self.ray.cluster_resources()
        gpus = o.num_gpus if o.num_gpus is not None else (1.0 if resources.get("GPU", 0) >= 1 else 0.0)
        if o.workers is not None:
            n = o.workers
        else:
            fits = [resources.get("CPU", 1) / max(o.num_cpus, 1e-9)]
            if gpus > 0:
                fits.append(resources.get("GPU", 0) / gpus)
            if memory:
                fits.append(resources.get("memory", memory) / memory)
            n = int(min(fits))
        return max(1, min(n, n_tasks)), gpus

    def run_tasks(self, tasks: Sequence[tuple[Callable, tuple, str, str]],
                  progress: Callable[[CellEvent], None] | None = None,
                  models: Sequence[tuple[str, str, str | None]] = ()) -> list:
        """Run ``(fn, args, affinity, label)`` tasks on actors; results in task order, or ``SweepError``.

        ``affinity`` (e.g. the model key) steers a task to an actor that ran the same affinity last, so that a
        model is loaded once per actor. Top-level ``ObjectRef`` arguments are resolved on the worker.
        ``models`` ((key, dtype, quant) the tasks load) sizes ``memory="auto"``.
        """
        from ray.exceptions import RayActorError, RayTaskError

        ray, o = self.ray, self.options
        if not tasks:
            return []
        memory = o.memory
        if memory == "auto":
            sizes = [m for m in (estimate_memory(*spec) for spec in models) if m]
            memory = max(sizes) if sizes else None
        n_workers, gpus = self._plan_workers(len(tasks), memory)
        actor_options = {"num_cpus": o.num_cpus, "num_gpus": gpus, "max_restarts": o.max_restarts,
                         "max_task_retries": o.max_task_retries}
        if memory:
            actor_options["memory"] = int(memory)
        self.memory = memory
        worker_cls = ray.remote(_Worker)
        actors = [worker_cls.options(**actor_options).remote(f"worker-{k}", o.num_cpus, o.max_models)
                  for k in range(n_workers)]
        self.workers, self.num_gpus = n_workers, gpus
        queue = list(range(len(tasks)))
        holds: list[str | None] = [None] * n_workers
        load = [0] * n_workers
        pending: dict = {}
        results: dict[int, Any] = {}
        start = time.perf_counter()

        def submit() -> None:
            while queue:
                free = [k for k in range(n_workers) if load[k] < o.in_flight]
                if not free:
                    return
                fn, args, affinity, _label = tasks[queue[0]]
                # an actor holding this affinity, else an idle one, else the least loaded
                k = min(free, key=lambda a: (holds[a] != affinity, load[a]))
                i = queue.pop(0)
                pending[actors[k].run.remote(fn, *args)] = (i, k)
                holds[k], load[k] = affinity, load[k] + 1

        def lost(i: int, exc: Exception) -> SweepError:
            return SweepError(f"task {tasks[i][3]}: worker lost more often than max_restarts={o.max_restarts} / "
                              f"max_task_retries={o.max_task_retries} allow: {exc}",
                              done=[tasks[d][3] for d in results])

        try:
            submit()
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                i, k = pending.pop(ready[0])
                load[k] -= 1
                try:
                    out, info = ray.get(ready[0])
                except RayActorError as exc:
                    raise lost(i, exc) from exc
                except RayTaskError as exc:  # the task itself raised: a bug or bad input, not retried
                    raise SweepError(f"task {tasks[i][3]} failed: {exc}", done=[tasks[d][3] for d in results]) from exc
                results[i] = out
                event = CellEvent(len(results), len(tasks), tasks[i][3], info["name"], info["pid"], info["seconds"],
                                  restarted=info["restarted"], elapsed=time.perf_counter() - start)
                self.events.append(event)
                if progress is not None:
                    progress(event)
                submit()
        finally:  # killing the actors also drops their queued and running calls
            for actor in actors:
                ray.kill(actor, no_restart=True)
        return [results[i] for i in range(len(tasks))]

    def map(self, fn: Callable, jobs: Sequence) -> list:
        """``[fn(job) for job in jobs]`` on actors (jobs with a ``"model"`` key stay with actors holding it)."""
        with self:
            tasks = [(fn, (job,), job.get("model") if isinstance(job, dict) else None, _job_label(job, i))
                     for i, job in enumerate(jobs)]
            models = {(job["model"], job.get("dtype", "fp32"), job.get("quant")) for job in jobs
                      if isinstance(job, dict) and "model" in job}
            return self.run_tasks(tasks, self.progress, sorted(models, key=str))


def _job_label(job, i: int) -> str:
    if isinstance(job, dict) and isinstance(job.get("cell"), dict):
        layers = job["cell"].get("layers") or [0]
        return f"{job.get('model')} cell {i} L{layers[0]}-{layers[-1]}"
    return f"job {i}"


def get_executor(name: str, *, address: str | None = None, progress: Callable[[CellEvent], None] | None = None,
                 **options):
    """The ``executor=`` object of ``engine.atlas.atlas`` for ``--executor NAME``: None for ``local``."""
    if name == "local":
        if address:
            raise ExecutorError("--ray-address needs --executor ray")
        return None
    if name == "ray":
        return RayExecutor(RayOptions(address=address, **options), progress=progress or _print_event)
    raise ExecutorError(f"unknown executor {name!r}; choose from {', '.join(EXECUTORS)}")


def _print_event(event: CellEvent) -> None:
    print(event.line(), file=sys.stderr, flush=True)


def run_ray(sweep: Sweep, options: RayOptions | None = None, *, cache: bool = False,
            progress: Callable[[CellEvent], None] | None = None) -> dict:
    """Compute the sweep's cells on Ray actors and merge them: the same result as ``run_local``."""
    executor = RayExecutor(options)
    cells = sweep.cells()
    start = time.perf_counter()
    with executor:
        jobs_ref = executor.ray.put(sweep.jobs)  # the examples travel once per node, not once per cell
        tasks = [(compute_sweep_cell, (jobs_ref, c.job, c.cell, cache), sweep.jobs[c.job].model, c.label)
                 for c in cells]
        order = sorted(range(len(tasks)), key=lambda i: (tasks[i][2], i))  # a model's cells together
        models = sorted({(job.model, job.dtype, job.quant) for job in sweep.jobs}, key=str)
        outs = executor.run_tasks([tasks[i] for i in order], progress, models)
    outputs = {i: out for i, out in zip(order, outs)}
    o = executor.options
    extra = {"ray": {"workers": executor.workers, "num_cpus": o.num_cpus, "num_gpus": executor.num_gpus,
                     "memory": executor.memory, "max_restarts": o.max_restarts,
                     "max_task_retries": o.max_task_retries,
                     "cells_on_restarted_workers": sum(e.restarted for e in executor.events),
                     "pids": sorted({e.pid for e in executor.events})}}
    return _assemble(sweep, cells, outputs, "ray", time.perf_counter() - start, extra)


# ------------------------------------------------------------------------------------------------ entry point


def run_sweep(sweep: Sweep, executor: str = "local", *, cache: bool = False, ray_options: RayOptions | None = None,
              progress: Callable[[CellEvent], None] | None = None, out: str | Path | None = None) -> dict:
    """Run ``sweep`` with ``executor`` ("local" or "ray"); write it to ``out`` only once it is complete."""
    if executor == "local":
        if ray_options is not None and ray_options.address:
            raise ExecutorError("--ray-address needs --executor ray")
        result = run_local(sweep, cache=cache, progress=progress)
    elif executor == "ray":
        result = run_ray(sweep, ray_options, cache=cache, progress=progress)
    else:
        raise ExecutorError(f"unknown executor {executor!r}; choose from {', '.join(EXECUTORS)}")
    if out is not None:
        write_sweep(result, out)
    return result
