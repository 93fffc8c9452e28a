"""Which GPU a pytest-xdist worker uses, and which worker a claim runs on (pure functions, no CUDA calls).

On one multi-GPU machine the suite runs as ``pytest -n <workers> --dist loadgroup``. Each xdist worker is a
separate process; it must see exactly one GPU, chosen from its worker id (``gw0``, ``gw1``, ...) and the devices
visible to the whole run, *before* torch initialises CUDA (CUDA reads ``CUDA_VISIBLE_DEVICES`` once, at
initialisation; torch also caches its device count). An outer ``CUDA_VISIBLE_DEVICES`` (a scheduler's
allocation, e.g. ``"3,5"``) is respected: workers are spread over those devices only, never over the machine's
other GPUs. With more workers than devices, workers share devices round-robin; with no device every worker
runs on CPU and the environment is left untouched.

Grouping: claims that share a model and its atlas should run on the same worker, so the model is loaded once
there and the atlas is read from the content-addressed cache it computed (the cache's file lock already makes
a second worker wait instead of recomputing; grouping avoids the wait and the second model load).
``claim_group`` gives the ``xdist_group`` name; ``--dist loadgroup`` keeps each group on one worker.

Everything here is a pure function of its arguments except ``physical_gpu_count`` (reads the driver's
device list, without touching CUDA) and ``pin_worker`` (sets the environment variable), which the pytest
plugin calls from ``pytest_configure``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, MutableMapping, Sequence

CUDA_ENV = "CUDA_VISIBLE_DEVICES"
XDIST_WORKER_ENV = "PYTEST_XDIST_WORKER"
# Blocks whose claims read a model's atlas: grouped together per model ("<model>/atlas"). The LoRA block reads its
# own atlas (the LoRA plan's atlas_per_family sample), so it groups apart ("<model>/lora") and runs beside the atlas
# claims on another worker: under `--plan full` a model's atlas and LoRA blocks are ~2,800 core-s each (#30)
ATLAS_BLOCKS: tuple[str, ...] = ("atlas",)
GROUP_JOIN = "/"

_WORKER_RE = re.compile(r"^gw(\d+)$")


class DeviceError(RuntimeError):
    """A device assignment is impossible or would be silently ignored (e.g. CUDA already initialised)."""


@dataclass(frozen=True)
class Assignment:
    """One process's device choice.

    ``worker``: the xdist worker id (None outside xdist, e.g. the controller or a plain run); ``index``: its
    number (gw3 -> 3); ``visible``: the devices the run may use (outer ``CUDA_VISIBLE_DEVICES`` entries, or
    physical indices); ``device``: the entry this worker gets (None = CPU, or "leave as is" outside xdist);
    ``env``: the environment variables to set before CUDA initialises (empty = change nothing);
    ``torch_device``: the device string the worker's code should use.
    """

    worker: str | None
    index: int | None
    visible: tuple[str, ...]
    device: str | None
    env: Mapping[str, str] = field(default_factory=dict)

    @property
    def torch_device(self) -> str:
        if self.worker is None:  # not pinned: whatever the process sees
            return "cuda" if self.visible else "cpu"
        return "cuda:0" if self.device is not None else "cpu"

    def describe(self) -> str:
        who = self.worker or "main process"
        if self.device is None:
            return f"{who}: cpu" if self.worker else f"{who}: {len(self.visible)} visible device(s), not pinned"
        return f"{who}: GPU {self.device} (of {','.join(self.visible)}) as cuda:0"


def worker_index(worker_id: str | None) -> int | None:
    """``"gw3"`` -> 3; None, ``""`` or ``"master"`` (no xdist worker) -> None; anything else is an error."""
    if worker_id in (None, "", "master"):
        return None
    match = _WORKER_RE.match(worker_id)
    if not match:
        raise DeviceError(f"{XDIST_WORKER_ENV}={worker_id!r}: expected an xdist worker id like 'gw0'")
    return int(match.group(1))


def parse_visible(value: str | None, n_physical: int) -> tuple[str, ...]:
    """The devices a process may use, as CUDA would enumerate them.

    ``value`` is ``CUDA_VISIBLE_DEVICES`` (None when unset): unset -> every physical device ``0..n-1``;
    ``""`` -> none; otherwise the comma-separated entries (indices or ``GPU-``/``MIG-`` UUIDs) up to the first
    invalid one, as CUDA does (``"-1"`` hides everything; ``"0,-1,1"`` is just ``0``). Numeric entries at or
    beyond ``n_physical`` are invalid too when ``n_physical`` is known (> 0). Duplicates are an error (CUDA
    rejects them).
    """
    if value is None:
        return tuple(str(i) for i in range(max(n_physical, 0)))
    entries: list[str] = []
    for raw in value.split(","):
        entry = raw.strip()
        if not entry:
            break
        if entry.lstrip("-").isdigit():
            number = int(entry)
            if number < 0 or (n_physical > 0 and number >= n_physical):
                break
            entry = str(number)
        elif not entry.startswith(("GPU-", "MIG-")):
            break
        if entry in entries:
            raise DeviceError(f"{CUDA_ENV}={value!r}: device {entry} is listed twice")
        entries.append(entry)
    return tuple(entries)


def assign(worker_id: str | None, visible: Sequence[str]) -> Assignment:
    """The device of xdist worker ``worker_id`` given the run's visible devices (round-robin).

    Outside xdist (``worker_id`` None/"master") nothing is pinned and the environment is left alone. With no
    visible device the worker runs on CPU; the environment is left alone as well (there is nothing to hide).
    """
    visible = tuple(visible)
    index = worker_index(worker_id)
    if index is None:
        return Assignment(None, None, visible, None, {})
    if not visible:
        return Assignment(worker_id, index, visible, None, {})
    device = visible[index % len(visible)]
    return Assignment(worker_id, index, visible, device, {CUDA_ENV: device})


def assignment_for(env: Mapping[str, str], n_physical: int) -> Assignment:
    """``assign`` from an environment (``PYTEST_XDIST_WORKER``, ``CUDA_VISIBLE_DEVICES``) and the GPU count."""
    return assign(env.get(XDIST_WORKER_ENV), parse_visible(env.get(CUDA_ENV), n_physical))


def physical_gpu_count() -> int:
    """NVIDIA GPUs on this machine, read without initialising CUDA (torch caches its count at first use).

    Reads the driver's ``/proc/driver/nvidia/gpus`` (Linux), else ``nvidia-smi -L``; 0 when neither exists.
    """
    proc = Path("/proc/driver/nvidia/gpus")
    if proc.is_dir():
        return sum(1 for _ in proc.iterdir())
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return 0
    result = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        return 0
    return sum(1 for line in result.stdout.splitlines() if line.startswith("GPU "))


def cuda_initialised() -> bool:
    """Whether this process has already initialised CUDA through torch (then pinning would be ignored)."""
    torch = sys.modules.get("torch")
    return bool(torch is not None and torch.cuda.is_initialized())


def pin_worker(env: MutableMapping[str, str] | None = None, n_physical: int | None = None) -> Assignment:
    """Pin this xdist worker to its device: set ``CUDA_VISIBLE_DEVICES`` in ``env`` (default ``os.environ``).

    Call it before anything initialises CUDA (``pytest_configure`` of the plugin). Raises ``DeviceError`` if
    torch has already initialised CUDA in this process, because the new value would then be ignored silently.
    """
    env = os.environ if env is None else env
    if n_physical is None:
        n_physical = physical_gpu_count()
    chosen = assignment_for(env, n_physical)
    if chosen.env:
        if env is os.environ and cuda_initialised():
            raise DeviceError(f"{chosen.worker}: CUDA was initialised before the worker was pinned to GPU "
                              f"{chosen.device}; {CUDA_ENV} must be set before torch touches CUDA")
        env.update(chosen.env)
        if env is os.environ:
            _check_driver_sees_one(chosen)
    return chosen


def _check_driver_sees_one(chosen: Assignment) -> None:
    """After pinning, the CUDA runtime must see exactly one device.

    ``torch.cuda.is_available()`` (unlike ``device_count``) calls ``cudaGetDeviceCount``, which initialises the
    driver; the driver reads ``CUDA_VISIBLE_DEVICES`` once, then. If some import did that before the worker was
    pinned, the new value is ignored and every worker would share GPU 0: fail loudly instead.
    """
    import torch

    if not torch.cuda._is_compiled():
        return
    seen = int(torch._C._cuda_getDeviceCount())
    if seen != 1:
        raise DeviceError(f"{chosen.worker}: pinned to GPU {chosen.device} but CUDA sees {seen} device(s): the "
                          f"driver was initialised before pinning (e.g. torch.cuda.is_available() at import "
                          f"time in a conftest or plugin); pin in pytest_configure before any CUDA call")


# ------------------------------------------------------------------------------------------------ grouping


def claim_group(model: str, block: str, atlas_blocks: Sequence[str] = ATLAS_BLOCKS) -> str:
    """The ``xdist_group`` of a claim test on ``model`` (a registry key or a "+"-joined group) in ``block``.

    Claims of the blocks that read the model's atlas (``atlas_blocks``) share ``"<model>/atlas"``; the others
    group per model and block (``"<model>/steer"``), so they load the model once per worker but need not
    queue behind the atlas claims. A multi-model claim of the atlas blocks is its own group: its atlases come
    from the shared cache, computed once by whichever worker gets there first. One of the other blocks joins its
    first model's group: STEER-TRANSFER reads its source's steering study, so it runs after it on that worker
    (as its own group it was handed out last and waited for the study while the other worker idled: run
    20261205T073516Z-ebf1900c7749's last ~100 s).
    """
    if not model or not block:
        raise DeviceError(f"claim_group: model and block must be non-empty (got {model!r}, {block!r})")
    if block not in atlas_blocks:
        return f"{model.split('+')[0]}{GROUP_JOIN}{block}"
    return f"{model}{GROUP_JOIN}atlas"


def loadgroup_suffix(group_names: Sequence[str]) -> str:
    """The ``@<group>`` suffix xdist's ``--dist loadgroup`` puts on a grouped test's node id ("" if ungrouped).

    Mirrors ``xdist.remote.WorkerInteractor.pytest_collection_modifyitems`` (several groups join, sorted, with
    "_"). pytest >= 9.2 keeps node ids in a structured ``_id`` and ignores xdist 3.8's write to ``_nodeid``, so
    grouping silently stops (pytest-dev/pytest-xdist#1386); the plugin re-applies the suffix with this.
    """
    names = sorted({str(name) for name in group_names})
    return f"@{'_'.join(names)}" if names else ""
