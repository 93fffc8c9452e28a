"""xdist worker -> GPU assignment (engine/devices.py) with fake device lists, and the pytest hooks end to end.

The unit tests need no GPU: the device lists are data. The last test runs a real ``pytest -n 2 --dist loadgroup``
in a temporary directory with the two hooks the MI-Atlas plugin uses, and checks that each worker was pinned to
its own device of an outer ``CUDA_VISIBLE_DEVICES="3,5"`` and that grouped tests shared a worker.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from engine import devices
from engine.devices import CUDA_ENV, XDIST_WORKER_ENV, DeviceError

WORKERS = [f"gw{i}" for i in range(8)]


@pytest.mark.parametrize("n_devices", [1, 2, 4])
def test_eight_workers_round_robin_over_physical_devices(n_devices):
    visible = devices.parse_visible(None, n_devices)
    assert visible == tuple(str(i) for i in range(n_devices))
    got = [devices.assign(w, visible) for w in WORKERS]
    assert [a.device for a in got] == [str(i % n_devices) for i in range(8)]
    assert all(a.env == {CUDA_ENV: a.device} for a in got)
    assert all(a.torch_device == "cuda:0" for a in got)
    # every device gets the same number of workers (8 is a multiple of 1, 2, 4): no GPU idles, none is doubled up
    assert set(Counter(a.device for a in got).values()) == {8 // n_devices}


@pytest.mark.parametrize("n_workers", [1, 2, 3])
def test_fewer_workers_than_devices_each_get_their_own(n_workers):
    visible = devices.parse_visible(None, 4)
    chosen = [devices.assign(f"gw{i}", visible).device for i in range(n_workers)]
    assert len(set(chosen)) == n_workers


def test_outer_cuda_visible_devices_is_respected():
    env = {CUDA_ENV: "3,5"}
    got = {w: devices.assignment_for({**env, XDIST_WORKER_ENV: w}, n_physical=8) for w in WORKERS}
    assert [got[w].device for w in WORKERS] == ["3", "5"] * 4
    assert all(a.visible == ("3", "5") for a in got.values())
    # never a device outside the allocation, even though the machine has 8
    assert {a.env[CUDA_ENV] for a in got.values()} == {"3", "5"}


def test_outer_value_with_unknown_physical_count_and_uuids():
    assert devices.parse_visible("3,5", 0) == ("3", "5")  # count unknown: trust the allocation
    uuids = "GPU-aaaa,GPU-bbbb"
    assert devices.assign("gw1", devices.parse_visible(uuids, 2)).device == "GPU-bbbb"
    assert devices.parse_visible("MIG-1,MIG-2", 1) == ("MIG-1", "MIG-2")


@pytest.mark.parametrize("value, n_physical, expected", [
    ("", 4, ()),            # explicitly hidden
    ("-1", 4, ()),          # CUDA stops at the first invalid entry
    ("0,-1,1", 4, ("0",)),
    ("1, 2", 4, ("1", "2")),
    ("2,7", 4, ("2",)),     # 7 does not exist on a 4-GPU machine
    ("1,bogus,2", 4, ("1",)),
])
def test_parse_visible_follows_cuda_rules(value, n_physical, expected):
    assert devices.parse_visible(value, n_physical) == expected


def test_duplicate_devices_are_an_error():
    with pytest.raises(DeviceError, match="listed twice"):
        devices.parse_visible("1,1", 4)


@pytest.mark.parametrize("env", [{}, {CUDA_ENV: ""}, {CUDA_ENV: "-1"}])
def test_no_devices_means_cpu_and_environment_untouched(env):
    for worker in WORKERS:
        chosen = devices.assignment_for({**env, XDIST_WORKER_ENV: worker}, n_physical=0)
        assert chosen.device is None and chosen.env == {} and chosen.torch_device == "cpu"
    mutable = {**env, XDIST_WORKER_ENV: "gw3"}
    devices.pin_worker(mutable, n_physical=0)
    assert mutable == {**env, XDIST_WORKER_ENV: "gw3"}


def test_outside_xdist_nothing_is_pinned():
    for worker in (None, "", "master"):
        chosen = devices.assign(worker, ("0", "1"))
        assert chosen.worker is None and chosen.env == {} and chosen.torch_device == "cuda"
    assert devices.assign(None, ()).torch_device == "cpu"


def test_pin_worker_sets_the_variable_in_the_given_environment():
    env = {XDIST_WORKER_ENV: "gw5", CUDA_ENV: "3,5"}
    chosen = devices.pin_worker(env, n_physical=8)
    assert env[CUDA_ENV] == "5" and chosen.device == "5"
    assert "GPU 5" in chosen.describe()


def test_bad_worker_id_is_a_clear_error():
    with pytest.raises(DeviceError, match="PYTEST_XDIST_WORKER='worker-1'"):
        devices.worker_index("worker-1")


def test_loadgroup_suffix_mirrors_xdist():
    assert devices.loadgroup_suffix([]) == ""
    assert devices.loadgroup_suffix(["b/atlas", "a/atlas", "b/atlas"]) == "@a/atlas_b/atlas"


def test_claim_groups():
    assert devices.claim_group("smollm2-135m", "atlas") != devices.claim_group("smollm2-135m", "lora")
    assert devices.claim_group("smollm2-135m", "atlas", ("atlas", "lora")) == devices.claim_group("smollm2-135m", "lora",
                                                                                               ("atlas", "lora"))
    assert devices.claim_group("smollm2-135m", "atlas") != devices.claim_group("gemma3-270m", "atlas")
    assert devices.claim_group("smollm2-135m", "steer") != devices.claim_group("smollm2-135m", "atlas")
    assert devices.claim_group("a+b", "atlas") not in {devices.claim_group("a", "atlas"),
                                                       devices.claim_group("b", "atlas")}
    assert devices.claim_group("a+b", "steer") == devices.claim_group("a", "steer")  # after its source's study
    with pytest.raises(DeviceError):
        devices.claim_group("", "atlas")


def test_physical_gpu_count_is_a_non_negative_int_without_cuda_init():
    count = devices.physical_gpu_count()
    assert isinstance(count, int) and count >= 0
    assert not devices.cuda_initialised()


# ------------------------------------------------------------------------------------------ end to end (xdist)

# A throw-away project that uses the real plugins (claims.plugin + claims.xdist_groups, as the root conftest.py
# does). Its claim tests only log where they ran and return UNTESTED; a setup wrapper logs every test before the
# claims plugin can skip it (e.g. when a model's weights are absent).
CONFTEST = """
import json, os
from pathlib import Path
import pytest

pytest_plugins = ["claims.plugin", "claims.xdist_groups"]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item):
    out = Path(os.environ["DEVICES_LOG"]) / (item.name.replace("/", "_") + ".json")
    mark = item.get_closest_marker("claim")
    out.write_text(json.dumps({"worker": os.environ.get("PYTEST_XDIST_WORKER"),
                               "cuda": os.environ.get("CUDA_VISIBLE_DEVICES"),
                               "claim": mark.args[0], "model": mark.kwargs["model"]}))
    return (yield)
"""

CLAIM_TESTS = """
import pytest

CASES = [(claim, model) for claim in ("HUB-SMOL", "HUB-SEEDS", "LORA-LATE", "STEER-ALL")
         for model in ("smollm2-135m", "gemma3-270m")]


@pytest.mark.parametrize("case", [pytest.param(c, marks=pytest.mark.claim(c[0], model=c[1]), id="-".join(c))
                                  for c in CASES])
def test_fake_claim(claim, case):
    claim.untested("fake claim test of the xdist grouping")
"""


def test_xdist_workers_are_pinned_and_claims_sharing_a_model_share_a_worker(tmp_path):
    (tmp_path / "conftest.py").write_text(CONFTEST)
    (tmp_path / "test_fake_claims.py").write_text(CLAIM_TESTS)
    log = tmp_path / "log"
    log.mkdir()
    env = {**os.environ, CUDA_ENV: "3,5", "DEVICES_LOG": str(log),
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")])}
    env.pop(XDIST_WORKER_ENV, None)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-n", "2", "--dist", "loadgroup", "-p", "no:cacheprovider",
         "--rootdir", str(tmp_path), "--claims-results", str(tmp_path / "results"), str(tmp_path)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    runs = [json.loads(p.read_text()) for p in log.glob("*.json")]
    assert len(runs) == 8
    # each worker saw exactly its own device of the outer allocation
    for run in runs:
        assert run["worker"] in ("gw0", "gw1")
        assert run["cuda"] == {"gw0": "3", "gw1": "5"}[run["worker"]]
    # a model's claims of one group ran on one worker: atlas claims, lora claims, steer claims (three groups each)
    where = {}
    block = {"HUB-SMOL": "atlas", "HUB-SEEDS": "atlas", "LORA-LATE": "lora", "STEER-ALL": "steer"}
    for run in runs:
        group = devices.claim_group(run["model"], block[run["claim"]])
        where.setdefault(group, set()).add(run["worker"])
    assert len(where) == 6 and all(len(workers) == 1 for workers in where.values()), where
