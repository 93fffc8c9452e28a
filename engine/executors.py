"""Executors for atlas sweeps: ``local`` (this process) and ``ray`` (Ray actors, one machine or a cluster).

A sweep is a list of ``engine.atlas.Job``: one atlas each (model key or path, dtype / quant, examples, options)
and the cells it is cut into (``engine.atlas.plan_cells``: examples, optionally per family, x layer ranges),
planned by the driver from the registry or the model directory's ``config.json`` (``engine.models.metadata``),
never by loading weights. Every executor computes a cell with ``engine.atlas.run_cell`` (in the process that
runs it: the model comes from that process's ``engine.models.shared`` cache) and the driver assembles each job
with ``engine.atlas.merge_job``. The plan belongs to the jobs, not to the executor, so ``local`` and ``ray``
compute the same cells and write the same ``atlas.json`` (``write_sweep``); only timings and the executor's
name differ (``comparable``).

With the default plan (all examples together, layers in ranges of ``layers_per_cell``) a merged atlas equals
the un-split ``engine.atlas.atlas`` call exactly: every per-layer quantity (per-example effects, the
information-erasing guard's sums, the unchanged count) depends only on its layer and the batches, which a layer
split does not change. ``by_family=True`` (and ``max_rows``) also split the examples: the per-example effects
then come from other batches (other padding and matmul shapes) and agree with the un-split call to float32
rounding, and the guard pairs prompts within a family, so ``erase_ratio`` is that of the family-split plan.
Either way both executors give the same bits, because they compute the same cells.

Executors (``LocalExecutor``, ``RayExecutor``) have ``plan`` (the ``plan_cells`` arguments that
``engine.atlas.atlas(..., executor=)`` uses) and ``run(jobs, cache=) -> [[output per cell] per job]``.

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

Without ray installed the local executor works as before and asking for ``ray`` raises ``ExecutorError``.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from engine import ENGINE_VERSION
from engine.atlas import AtlasError, Job, merge_job, run_cell

EXECUTORS = ("local", "ray")
SWEEP_KIND = "atlas_sweep"
SWEEP_FORMAT = 2  # 2: jobs are ``engine.atlas.Job`` descriptions (label, options, n_cells)
RAY_INSTALL = "pip install -e '.[ray]'  (or: pip install 'ray[default]')"


class ExecutorError(ValueError):
    """An executor cannot run here (e.g. ray is not installed) or was asked for something it cannot do."""


class SweepError(AtlasError):
    """A sweep did not complete; nothing was written. ``done`` lists the labels of the cells that finished."""

    def __init__(self, message: str, done: Sequence[str] = ()):
        super().__init__(message)
        self.done = list(done)


# ------------------------------------------------------------------------------------------------ plan


@dataclass
class Sweep:
    """Atlas jobs (``engine.atlas.Job``, each with its cells) and the plan they were cut with (a record)."""

    jobs: list[Job]
    plan: dict = field(default_factory=dict)

    @classmethod
    def from_grid(cls, models: Sequence[str], seeds: Sequence[int], *,
                  family_groups: Sequence[Sequence[str]] | None = None, per_family: int = 4,
                  suite: str = "synthetic", split: str | None = None, components: Sequence[str] = ("layer",),
                  methods: Sequence[str] = ("zero",), layers_per_cell: int | None = 8, by_family: bool = False,
                  max_rows: int | None = None, dtype: str = "fp32", quant: str | None = None,
                  **options) -> Sweep:
        """models x seeds x family groups x components x methods; ``options`` (``engine.atlas.AtlasOptions``
        fields) go to every job. The driver draws each job's sample (``engine.tasks.sample``), so workers need no
        fixtures, and reads each model's layer count from ``engine.models.metadata`` (no weights loaded).

        ``family_groups``: None = one atlas over every family; ``[[f] for f in FAMILIES]`` = one atlas per family.
        """
        from engine import tasks

        plan = {"layers_per_cell": layers_per_cell, "by_family": by_family, "max_rows": max_rows}
        groups = [None] if family_groups is None else [tuple(g) for g in family_groups]
        jobs = []
        for model in models:
            for seed in seeds:
                for group in groups:
                    examples = tasks.sample(families=None if group is None else list(group),
                                            per_family=per_family, seed=seed, suite=suite, split=split)
                    fams = "all" if group is None else "+".join(group)
                    for component in components:
                        for method in methods:
                            jobs.append(Job.plan(model, examples, dtype=dtype, quant=quant,
                                                 label=f"{model}/seed{seed}/{fams}/{component}-{method}",
                                                 by_family=by_family, layer_chunk=layers_per_cell,
                                                 max_rows=max_rows, seed=seed, component=component, method=method,
                                                 **options))
        return cls(jobs, plan)

    @property
    def n_cells(self) -> int:
        return sum(len(job.cells) for job in self.jobs)


# ------------------------------------------------------------------------------------------------ progress


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


def _print_event(event: CellEvent) -> None:
    print(event.line(), file=sys.stderr, flush=True)


def _tasks(jobs: Sequence[Job]) -> list[tuple[int, int]]:
    """Every (job, cell) pair, the cells of one model (and dtype / quant) together, so it is loaded once."""
    pairs = [(j, i) for j, job in enumerate(jobs) for i in range(len(job.cells))]
    return sorted(pairs, key=lambda t: (_load_spec(jobs[t[0]]), t))


def _load_spec(job: Job) -> tuple[str, str, str]:
    return job.model, job.dtype, job.quant or ""


def _per_job(jobs: Sequence[Job], results: dict[tuple[int, int], dict]) -> list[list[dict]]:
    missing = [jobs[j].cell_label(i) for j, i in _tasks(jobs) if (j, i) not in results]
    if missing:  # never hand out (or write) a partial sweep
        raise SweepError(f"sweep incomplete: {len(missing)} of {len(_tasks(jobs))} cells missing "
                         f"(e.g. {missing[:3]})", done=[jobs[j].cell_label(i) for j, i in results])
    return [[results[(j, i)] for i in range(len(job.cells))] for j, job in enumerate(jobs)]


# ------------------------------------------------------------------------------------------------ local


class LocalExecutor:
    """Every cell in this process, through ``engine.atlas.run_cell`` (at most ``max_models`` models kept)."""

    name = "local"

    def __init__(self, progress: Callable[[CellEvent], None] | None = None, *, max_models: int = 1,
                 layers_per_cell: int | None = None):
        self.progress = progress
        self.max_models = max_models
        self.plan = {"by_family": False, "layer_chunk": layers_per_cell}

    def info(self) -> dict:
        return {}

    def run(self, jobs: Sequence[Job], *, cache: bool = False) -> list[list[dict]]:
        tasks = _tasks(jobs)
        results: dict[tuple[int, int], dict] = {}
        start = time.perf_counter()
        for j, i in tasks:
            t0 = time.perf_counter()
            results[(j, i)] = run_cell(jobs[j], i, cache, self.max_models)
            if self.progress is not None:
                self.progress(CellEvent(len(results), len(tasks), jobs[j].cell_label(i), "local", os.getpid(),
                                        time.perf_counter() - t0, elapsed=time.perf_counter() - start))
        return _per_job(jobs, results)


# ------------------------------------------------------------------------------------------------ ray


def estimate_memory(model: str, dtype: str = "fp32", quant: str | None = None) -> int | None:
    """Bytes an actor needs for ``model``: twice its weights (weights + activations and the loading copy) plus
    1 GiB for the process (torch, transformers); None when the registry does not give a parameter count."""
    from engine import models

    params = str(models.metadata(model)["params"]).strip().upper()
    scale = {"K": 1e3, "M": 1e6, "B": 1e9}.get(params[-1:])
    try:
        count = float(params[:-1]) * scale
    except (TypeError, ValueError):  # no count ("tiny", ""): no request
        return None
    per_param = models.QUANT_BYTES[quant] if quant else models.dtype_info(dtype).bytes
    return int(2 * count * per_param + 2**30)


def require_ray():
    """The ``ray`` module, or ``ExecutorError`` saying how to install it."""
    try:
        import ray
    except ImportError as exc:
        raise ExecutorError(f"the ray executor needs the optional dependency 'ray', which is not installed "
                            f"({exc}). Install it with: {RAY_INSTALL}; or use --executor local") from None
    return ray


RAY_CONNECT_TIMEOUT_S = 5.0  # a Ray head that does not accept a TCP connection within this is unreachable


def check_ray_address(address: str | None, timeout: float = RAY_CONNECT_TIMEOUT_S) -> None:
    """Fail fast, as one ``ExecutorError`` line, when the Ray cluster at ``address`` (None: ``$RAY_ADDRESS``) does
    not answer: ``ray.init`` itself retries an unreachable address for minutes. ``auto``, ``local`` and no address
    at all are left to ``ray.init`` (which fails fast when there is no cluster to find)."""
    where = "--ray-address" if address else "$RAY_ADDRESS"
    value = (address or os.environ.get("RAY_ADDRESS") or "").strip()
    if value in ("", "auto", "local"):
        return
    hostport = (value.split("://", 1)[1] if "://" in value else value).split("/", 1)[0]
    host, sep, port = hostport.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ExecutorError(f"{where} {value!r}: not HOST:PORT, ray://HOST:PORT, auto or local")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
        raise ExecutorError(f"{where} {value}: no Ray cluster answers there ({reason}); start one with "
                            "`ray start --head`, check the address, or use --executor local") from None


class _Worker:
    """A Ray actor: runs module-level functions in its own process, where loaded models stay
    (``engine.models.shared``, through ``engine.atlas.run_cell``)."""

    def __init__(self, name: str, num_cpus: float):
        import warnings

        import ray
        import torch

        self.name = name
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
    """Ray actors computing the cells of jobs; a context manager that connects (or starts) Ray.

    ``run(jobs)`` sends every cell to ``engine.atlas.run_cell`` on an actor (``run_tasks`` is the scheduler);
    ``plan`` splits layers only (all examples together), so an atlas merged from its cells is bit for bit the
    one computed in one process. ``progress`` receives a ``CellEvent`` per finished cell.
    """

    name = "ray"

    def __init__(self, options: RayOptions | None = None, progress: Callable[[CellEvent], None] | None = None):
        self.options = options or RayOptions()
        self.ray = require_ray()
        self.progress = progress
        self._started = False
        self.events: list[CellEvent] = []
        self.workers, self.num_gpus, self.memory = 0, 0.0, None

    @property
    def plan(self) -> dict:
        """``engine.atlas.plan_cells`` arguments for ``atlas(..., executor=self)``."""
        return {"by_family": False, "layer_chunk": self.options.layers_per_cell}

    def __enter__(self) -> RayExecutor:
        if not self.ray.is_initialized():
            check_ray_address(self.options.address)
            init = {"address": self.options.address, "include_dashboard": False, **self.options.init}
            try:
                self.ray.init(**init)
            except (ConnectionError, TimeoutError, RuntimeError, ValueError) as exc:
                text = " ".join(str(exc).split()) or type(exc).__name__
                raise ExecutorError(f"ray: cannot connect to or start a cluster (address "
                                    f"{self.options.address or os.environ.get('RAY_ADDRESS') or 'default'}): "
                                    f"{text[:300]}") from None
            self._started = True
        return self

    def __exit__(self, *exc) -> None:
        if self._started:
            self.ray.shutdown()
            self._started = False

    def info(self) -> dict:
        """What the last ``run`` used (the ``ray`` field of a sweep's JSON)."""
        o = self.options
        return {"ray": {"workers": self.workers, "num_cpus": o.num_cpus, "num_gpus": self.num_gpus,
                        "memory": self.memory, "max_restarts": o.max_restarts, "max_task_retries": o.max_task_retries,
                        "cells_on_restarted_workers": sum(e.restarted for e in self.events),
                        "pids": sorted({e.pid for e in self.events})}}

    def run(self, jobs: Sequence[Job], *, cache: bool = False) -> list[list[dict]]:
        """Every cell of ``jobs`` on actors -> ``[[run_cell output per cell] per job]``, or ``SweepError``."""
        self.events = []
        with self:
            refs = [self.ray.put(job) for job in jobs]  # a job's examples travel once per node, not once per cell
            order = _tasks(jobs)
            tasks = [(run_cell, (refs[j], i, cache, self.options.max_models), _load_spec(jobs[j]),
                      jobs[j].cell_label(i)) for j, i in order]
            outs = self.run_tasks(tasks, self.progress, sorted({_load_spec(job) for job in jobs}))
        return _per_job(jobs, dict(zip(order, outs)))

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

    def run_tasks(self, tasks: Sequence[tuple[Callable, tuple, Any, str]],
                  progress: Callable[[CellEvent], None] | None = None,
                  models: Sequence[tuple[str, str, str]] = ()) -> list:
        """Run ``(fn, args, affinity, label)`` tasks on actors; results in task order, or ``SweepError``.

        ``affinity`` (the model a task loads) steers a task to an actor that ran the same affinity last, so
        that a model is loaded once per actor. Top-level ``ObjectRef`` arguments are resolved on the worker.
        ``models`` ((key, dtype, quant) the tasks load) sizes ``memory="auto"``.
        """
        from ray.exceptions import RayActorError, RayTaskError

        ray, o = self.ray, self.options
        if not tasks:
            return []
        memory = o.memory
        if memory == "auto":
            sizes = [m for m in (estimate_memory(key, dtype, quant or None) for key, dtype, quant in models) if m]
            memory = max(sizes) if sizes else None
        n_workers, gpus = self._plan_workers(len(tasks), memory)
        actor_options = {"num_cpus": o.num_cpus, "num_gpus": gpus, "max_restarts": o.max_restarts,
                         "max_task_retries": o.max_task_retries}
        if memory:
            actor_options["memory"] = int(memory)
        self.memory = memory
        worker_cls = ray.remote(_Worker)
        actors = [worker_cls.options(**actor_options).remote(f"worker-{k}", o.num_cpus) for k in range(n_workers)]
        self.workers, self.num_gpus = n_workers, gpus
        queue = list(range(len(tasks)))
        holds: list[Any] = [None] * n_workers
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


# ------------------------------------------------------------------------------------------------ entry points


def get_executor(name: str, *, address: str | None = None, progress: Callable[[CellEvent], None] | None = None,
                 **options):
    """The ``executor=`` object of ``engine.atlas.atlas`` for ``--executor NAME``: None for ``local`` (the atlas
    is computed in this process, on the model already loaded), a ``RayExecutor`` for ``ray``."""
    if name == "local":
        if address:
            raise ExecutorError("--ray-address needs --executor ray")
        return None
    if name == "ray":
        executor = RayExecutor(RayOptions(address=address, **options), progress=progress or _print_event)
        check_ray_address(address)  # before any model is loaded: an unreachable cluster is one line, at once
        return executor
    raise ExecutorError(f"unknown executor {name!r}; choose from {', '.join(EXECUTORS)}")


def run_sweep(sweep: Sweep, executor: str = "local", *, cache: bool = False, ray_options: RayOptions | None = None,
              progress: Callable[[CellEvent], None] | None = None, out: str | Path | None = None) -> dict:
    """Run ``sweep`` with ``executor`` ("local" or "ray") and merge every job; write the sweep to ``out`` only
    once it is complete. The driver never loads a model: workers report what ``merge_job`` needs."""
    if executor == "local":
        if ray_options is not None and ray_options.address:
            raise ExecutorError("--ray-address needs --executor ray")
        runner: LocalExecutor | RayExecutor = LocalExecutor(progress)
    elif executor == "ray":
        runner = RayExecutor(ray_options, progress)
    else:
        raise ExecutorError(f"unknown executor {executor!r}; choose from {', '.join(EXECUTORS)}")
    start = time.perf_counter()
    outputs = runner.run(sweep.jobs, cache=cache)
    atlases = [merge_job(job, outs).to_json() for job, outs in zip(sweep.jobs, outputs)]
    result = {"kind": SWEEP_KIND, "format": SWEEP_FORMAT, "complete": True, "engine_version": ENGINE_VERSION,
              "executor": runner.name, "plan": {**sweep.plan, "n_cells": sweep.n_cells},
              "seconds": time.perf_counter() - start, "jobs": [job.describe() for job in sweep.jobs],
              "atlases": atlases, **runner.info()}
    if out is not None:
        write_sweep(result, out)
    return result


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


# ------------------------------------------------------------------------------------------------ measurements
#
# A claims run (``pytest claims --executor ray --ray-address ADDR``) hands its measurements to a Ray cluster one
# at a time per driver (each pytest process is sequential): the driver keys the content-addressed cache exactly
# as a local run does (``engine.cache.cached``) and, on a miss, sends the measurement's module-level function and
# its arguments (``Remote``) to its one actor, where models are loaded once (``engine.models.shared``) and the
# result is computed with the driver's torch thread count. The payload comes back and is stored in the driver's
# cache, so keys, records and reruns are those of a local run. A loaded model travels as a ``ModelRef`` (the
# ``models.shared`` call that loaded it, and its identity, re-checked on the worker); a model no load reproduces
# (an adapted or layer-skipped copy) is not sent: that measurement is computed in the driver.


@dataclass
class ModelRef:
    """A model as a worker loads it: the driver's ``models.shared(key_or_path, **load_kwargs)`` call (device and
    dtype pinned to the driver's) and its ``engine.provenance.model_identity``, which the worker's load must
    match (same weights, dtype, quantisation, libraries and device type), or the call fails."""

    key_or_path: str
    load_kwargs: dict
    identity: dict

    def load(self, max_models: int | None = None):
        from engine import models
        from engine.provenance import model_identity

        lm = models.shared(self.key_or_path, max_models=max_models, **self.load_kwargs)
        if model_identity(lm) != self.identity:
            theirs = {k: v for k, v in model_identity(lm).items() if self.identity.get(k) != v}
            raise ExecutorError(f"{self.key_or_path}: loads on this worker as {theirs}, the driver's model is "
                                f"{ {k: self.identity.get(k) for k in theirs} }: a result computed here would "
                                "not be the one its cache key names")
        return lm


def model_ref(lm) -> ModelRef | None:
    """The ``ModelRef`` of a model the driver holds in ``engine.models.shared``; None for any other model."""
    from engine.models import pool
    from engine.provenance import model_identity

    args = pool.load_args(lm)
    if args is None or getattr(lm, "model", None) is None:
        return None
    key_or_path, kwargs = args
    kwargs = {**kwargs, "device": str(lm.device), "dtype": lm.dtype}
    return ModelRef(key_or_path, kwargs, model_identity(lm))


@dataclass
class Remote:
    """A measurement as a worker computes it: ``fn(*args, **kwargs)`` (``fn`` module-level, arguments picklable,
    ``ModelRef`` arguments loaded on the worker); ``label`` names it in errors."""

    fn: Callable
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    label: str = ""

    def __call__(self) -> Any:
        """Compute it on the session's measurement executor."""
        executor = measurement_executor()
        if executor is None:
            raise ExecutorError("no measurement executor is set")
        return executor.call(self)


def remote(fn: Callable, *args, label: str = "", **kwargs) -> Remote | None:
    """A ``Remote`` for ``fn(*args, **kwargs)`` when the session hands measurements to an executor (else None: the
    caller computes in this process). Loaded-model arguments become ``ModelRef``; when one is not a model the
    driver can name (``model_ref`` is None), None: that measurement stays here."""
    if measurement_executor() is None:
        return None
    from engine.models import LoadedModel

    def ref(value):
        return model_ref(value) if isinstance(value, LoadedModel) else value

    args2, kwargs2 = tuple(ref(a) for a in args), {k: ref(v) for k, v in kwargs.items()}
    if any(r is None and isinstance(v, LoadedModel) for r, v in zip((*args2, *kwargs2.values()),
                                                                     (*args, *kwargs.values()))):
        return None
    return Remote(fn, args2, kwargs2, label or getattr(fn, "__name__", "measurement"))


def driver_identity() -> dict:
    """What a worker must share with the driver for its result to be the one the driver's cache key names: the
    engine's version and code fingerprint, the compute libraries' versions, and the torch thread count (float32
    reductions depend on it)."""
    import torch

    from engine.provenance import engine_identity, library_versions

    return {"engine": engine_identity(), "libraries": library_versions(), "threads": torch.get_num_threads()}


def compute_remote(driver: dict, max_models: int | None, task: Remote) -> Any:
    """Runs on the worker: check it is the driver's engine and libraries, use the driver's thread count, load the
    ``ModelRef`` arguments and compute."""
    import torch

    from engine.provenance import engine_identity, library_versions

    here = {"engine": engine_identity(), "libraries": library_versions()}
    for name, value in here.items():
        if driver[name] != value:
            raise ExecutorError(f"{task.label}: this Ray worker's {name} {value} is not the driver's {driver[name]} "
                                "(install the same engine and libraries on every node)")
    if torch.get_num_threads() != driver["threads"]:
        torch.set_num_threads(driver["threads"])

    def load(value):
        return value.load(max_models) if isinstance(value, ModelRef) else value

    return task.fn(*(load(a) for a in task.args), **{k: load(v) for k, v in task.kwargs.items()})


class RayMeasurements:
    """The measurement executor of a claims run on Ray: one actor per driver process (a pytest process measures
    one thing at a time), created at the first measurement with ``num_cpus`` = the driver's torch thread count,
    restarted and its call retried when lost (``max_restarts`` / ``max_task_retries``). Connects to ``address``
    (``ray.init``) unless Ray is already initialised in this process."""

    name = "ray"

    def __init__(self, address: str | None = None, *, max_models: int = 1, max_restarts: int = 3,
                 max_task_retries: int = 3, init: dict | None = None):
        self.ray = require_ray()
        self.address = address
        self.max_models = max_models
        self.max_restarts, self.max_task_retries = max_restarts, max_task_retries
        self.init = dict(init or {})
        self._actor = None
        self._threads = None
        self._started = False
        self.calls = 0
        self.seconds = 0.0
        self.pids: set[int] = set()

    def _connect(self) -> None:
        if self.ray.is_initialized():
            return
        check_ray_address(self.address)
        try:
            self.ray.init(address=self.address, include_dashboard=False, log_to_driver=False, **self.init)
        except (ConnectionError, TimeoutError, RuntimeError, ValueError) as exc:
            text = " ".join(str(exc).split()) or type(exc).__name__
            raise ExecutorError(f"ray: cannot connect to the cluster at {self.address or 'default'}: "
                                f"{text[:300]}") from None
        self._started = True

    def _worker(self, threads: int):
        if self._actor is not None and self._threads == threads:
            return self._actor
        self._connect()
        if self._actor is not None:
            self.ray.kill(self._actor, no_restart=True)
        cls = self.ray.remote(_Worker).options(num_cpus=threads, max_restarts=self.max_restarts,
                                               max_task_retries=self.max_task_retries)
        self._actor, self._threads = cls.remote(f"measure-{os.getpid()}", float(threads)), threads
        return self._actor

    def call(self, task: Remote) -> Any:
        """``task`` computed on this driver's actor (the worker's exception is raised here as it was there)."""
        driver = driver_identity()
        actor = self._worker(driver["threads"])
        start = time.perf_counter()
        from ray.exceptions import RayActorError

        try:
            out, info = self.ray.get(actor.run.remote(compute_remote, driver, self.max_models, task))
        except RayActorError as exc:
            raise ExecutorError(f"{task.label}: the Ray worker was lost more often than max_restarts="
                                f"{self.max_restarts} / max_task_retries={self.max_task_retries} allow: "
                                f"{' '.join(str(exc).split())[:300]}") from None
        self.calls += 1
        self.seconds += time.perf_counter() - start
        self.pids.add(info["pid"])
        return out

    def info(self) -> dict:
        return {"executor": self.name, "address": self.address, "calls": self.calls,
                "seconds": round(self.seconds, 1), "pids": sorted(self.pids)}

    def close(self) -> None:
        if self._actor is not None:
            try:
                self.ray.kill(self._actor, no_restart=True)
            except Exception:  # the cluster may already be gone at the session's end
                pass
            self._actor = None
        if self._started:
            self.ray.shutdown()
            self._started = False


_MEASUREMENTS: list = [None]  # this process's measurement executor (None: every measurement computed here)


def measurement_executor():
    """The executor this process hands its measurements' cache misses to (None: local)."""
    return _MEASUREMENTS[0]


def use_measurement_executor(executor) -> Any:
    """Set this process's measurement executor (None: local); returns the previous one."""
    previous, _MEASUREMENTS[0] = _MEASUREMENTS[0], executor
    return previous


def measurement_options(name: str, address: str | None) -> None:
    """Usage errors of ``--executor NAME --ray-address ADDR`` (one ``ExecutorError`` line each): an unknown
    executor, an address without ``ray``, ray not installed, an address where no cluster answers."""
    if name not in EXECUTORS:
        raise ExecutorError(f"unknown executor {name!r}; choose from {', '.join(EXECUTORS)}")
    if name == "local":
        if address:
            raise ExecutorError("--ray-address needs --executor ray")
        return
    try:
        import ray  # noqa: F401
    except ImportError:
        raise ExecutorError(f"--executor ray needs the optional dependency 'ray', which is not installed: "
                            f"{RAY_INSTALL}") from None
    check_ray_address(address)
