"""LoRA training: AdamW + warm-up schedule on prompt-masked targets, deterministic for a seed, cached by content.

The loop is deliberately plain (no Trainer): a seeded DataLoader that keeps the last partial batch and is
re-iterated (reshuffled) every epoch, AdamW over the LoRA parameters only, ``transformers.get_scheduler``
(linear by default: the seed's 10 warm-up steps then linear decay), gradient clipping, one loss value per step.
A non-finite loss stops the run with an error. Checkpoints (``save_pretrained``) are written at requested
fractions of the steps, so block G3 (lock-in) can reload them with ``PeftModel.from_pretrained``.

:func:`train_cached` stores a run (final adapter, checkpoints, loss curve, parameter counts) under
``MI_ATLAS_CACHE/lora/<key>`` where the key hashes everything the result depends on (model fingerprint,
examples, target, config, library versions and device: ``engine.provenance.compute_identity``, as in the atlas
key); claims that need the same adapter share it. Each stored run carries a ``manifest.json`` (the sha256 and size
of every file: run.json, the final adapter, the checkpoints) written with it; every read checks it, and an entry
that fails (bytes changed at the same size and mtime, a file missing, no manifest) is retrained, with one warning.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from engine import models, progress
from engine.files import PRIVATE, write_atomic
from engine.models import LoadedModel
from engine.models.integrity import sha256_file
from engine.provenance import code_fingerprint, compute_identity
from engine.tasks import Example, suite_hash

from .adapters import LoraError, LoraTarget, ParamCount, adapter_state, attached, count_parameters
from .data import make_loader, pad_id, with_padding_labels
from .evaluation import batch_loss

CACHE_FORMAT = 4  # 4: every stored run carries a manifest.json of its files' sha256s
MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = 1
SCHEDULES = ("linear", "constant_with_warmup", "cosine")


@dataclass(frozen=True)
class TrainConfig:
    """How an adapter is trained. Defaults are the seed's: AdamW lr 2e-4, linear schedule, 10 warm-up steps."""

    steps: int = 100
    batch_size: int = 8
    lr: float = 2e-4
    warmup_steps: int = 10
    schedule: str = "linear"
    weight_decay: float = 0.0
    max_grad_norm: float | None = 1.0
    seed: int = 0
    template: str = "auto"
    append_eos: bool = False
    max_len: int | None = None
    checkpoints: tuple[float, ...] = ()  # fractions of `steps` at which to save_pretrained (e.g. 0.1, 0.25, 0.5, 1)
    gradient_checkpointing: bool = False
    # the seed protocol's data: padding positions carry a loss too (the seed's labels were input_ids padded to
    # max_len with the pad token, unmasked); the prompt stays masked. False: loss on the target tokens only.
    pad_labels: bool = False

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise LoraError(f"TrainConfig: steps and batch_size must be >= 1 (got {self.steps}, {self.batch_size})")
        if self.schedule not in SCHEDULES:
            raise LoraError(f"TrainConfig: schedule {self.schedule!r} is not one of {', '.join(SCHEDULES)}")
        if not 0 <= self.warmup_steps <= self.steps:
            raise LoraError(f"TrainConfig: warmup_steps must be within 0..steps, got {self.warmup_steps}")
        bad = [f for f in self.checkpoints if not 0 < f <= 1]
        if bad:
            raise LoraError(f"TrainConfig: checkpoint fractions must be in (0, 1], got {bad}")
        object.__setattr__(self, "checkpoints", tuple(sorted(set(float(f) for f in self.checkpoints))))

    def checkpoint_steps(self) -> dict[float, int]:
        """Fraction -> step (at least 1) at which a checkpoint is saved."""
        return {f: max(1, round(f * self.steps)) for f in self.checkpoints}

    def to_dict(self) -> dict:
        data = asdict(self)
        data["checkpoints"] = list(self.checkpoints)
        return data


@dataclass
class LoraRun:
    """A trained adapter: its target, config, parameter count, loss curve and weights (CPU tensors)."""

    target: LoraTarget
    config: TrainConfig
    params: ParamCount
    losses: list[float]  # training loss per step (token mean over the step's batch)
    lrs: list[float]
    state: dict[str, torch.Tensor] = field(repr=False)
    checkpoints: dict[float, Path] = field(default_factory=dict)  # fraction -> save_pretrained directory
    seconds: float = 0.0
    cpu_seconds: float = 0.0  # process CPU time of the training (all threads): comparable across loaded machines
    n_examples: int = 0
    families: tuple[str, ...] = ()
    tokens_per_step: float = 0.0  # mean target tokens per step
    mean_seq_len: float = 0.0  # mean sequence length (prompt + target) of the training examples
    adapter_dir: Path | None = None  # the final adapter (save_pretrained), when the run was stored

    def final_loss(self, window: int = 1) -> float:
        """Mean training loss of the last ``window`` steps."""
        tail = self.losses[-window:]
        return float(sum(tail) / len(tail))

    def summary(self) -> dict:
        return {"target": self.target.to_dict(), "config": self.config.to_dict(), "params": self.params.to_dict(),
                "losses": self.losses, "lrs": self.lrs, "seconds": self.seconds, "cpu_seconds": self.cpu_seconds,
                "n_examples": self.n_examples,
                "families": list(self.families), "tokens_per_step": self.tokens_per_step,
                "mean_seq_len": self.mean_seq_len,
                "checkpoints": {str(f): p.name for f, p in self.checkpoints.items()}}


def _scheduler(optimizer, config: TrainConfig):
    from transformers import get_scheduler

    return get_scheduler(config.schedule, optimizer, num_warmup_steps=config.warmup_steps,
                         num_training_steps=config.steps)


def train(lm: LoadedModel, examples: Sequence[Example], target: LoraTarget, config: TrainConfig = TrainConfig(), *,
          out_dir: str | Path | None = None) -> LoraRun:
    """Train a LoRA adapter for ``target`` on ``examples``; ``lm.model`` is left unchanged (adapter unloaded).

    Deterministic for ``config.seed`` on CPU: the seed fixes the LoRA initialisation and the data order.
    With ``out_dir``, checkpoints go to ``out_dir/step-XXXXX`` and the final adapter to ``out_dir/final``;
    checkpoints requested without ``out_dir`` go to a fresh temporary directory (the caller owns it).
    """
    loader = make_loader(lm.tokenizer, examples, batch_size=config.batch_size, shuffle=True, seed=config.seed,
                         template=config.template, append_eos=config.append_eos, max_len=config.max_len)
    encoded = loader.dataset
    save_at = {step: f for f, step in config.checkpoint_steps().items()}
    if out_dir is None and save_at:
        out_dir = tempfile.mkdtemp(prefix="mi-atlas-lora-")
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    start, cpu_start = time.perf_counter(), time.process_time()
    models.seed_everything(config.seed)
    losses: list[float] = []
    lrs: list[float] = []
    checkpoints: dict[float, Path] = {}
    tokens = 0
    with attached(lm, target, gradient_checkpointing=config.gradient_checkpointing) as alm:
        peft_model = alm.model
        params = count_parameters(alm, target)
        trainable = [p for p in peft_model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=config.lr, weight_decay=config.weight_decay)
        scheduler = _scheduler(optimizer, config)
        if config.gradient_checkpointing:
            peft_model.gradient_checkpointing_enable()
        peft_model.train()
        batches = _cycle(loader)
        for step in range(1, config.steps + 1):
            batch = next(batches)
            if config.pad_labels:
                batch = with_padding_labels(batch, pad_id(lm.tokenizer), config.max_len)
            batch = batch.to(lm.device)
            loss = batch_loss(peft_model, batch)
            if not torch.isfinite(loss):
                raise LoraError(f"{lm.key}: training loss is {loss.item()} at step {step} "
                                f"({target.label or target}); lower the learning rate or check the data")
            loss.backward()
            if config.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(trainable, config.max_grad_norm)
            lrs.append(float(scheduler.get_last_lr()[0]))
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
            tokens += batch.n_target_tokens
            if step in save_at:
                path = out / f"step-{step:05d}"
                peft_model.save_pretrained(str(path))
                checkpoints[save_at[step]] = path
        peft_model.eval()
        if config.gradient_checkpointing:
            peft_model.gradient_checkpointing_disable()
        state = adapter_state(alm)
        adapter_dir = None
        if out is not None:
            adapter_dir = out / "final"
            peft_model.save_pretrained(str(adapter_dir))
    return LoraRun(target=target, config=config, params=params, losses=losses, lrs=lrs, state=state,
                   checkpoints=checkpoints, seconds=time.perf_counter() - start,
                   cpu_seconds=time.process_time() - cpu_start, n_examples=len(encoded),
                   families=tuple(dict.fromkeys(e.family for e in encoded)), tokens_per_step=tokens / config.steps,
                   mean_seq_len=sum(len(e.input_ids) for e in encoded) / len(encoded), adapter_dir=adapter_dir)


def _cycle(loader):
    """Batches forever: each pass over the loader is one epoch (reshuffled by the loader's generator)."""
    while True:
        produced = False
        for batch in loader:
            produced = True
            yield batch
        if not produced:
            raise LoraError("the training DataLoader produced no batch")


# ------------------------------------------------------------------------------------------------ cache


def cache_key(lm: LoadedModel, examples: Sequence[Example], target: LoraTarget, config: TrainConfig) -> str:
    """Content hash of everything a trained adapter depends on."""
    payload = {
        "format": CACHE_FORMAT, "model": lm.fingerprint, "dtype": str(lm.dtype), "quant": lm.quant,
        "examples": suite_hash(examples),
        "target": {k: v for k, v in target.to_dict().items() if k != "label"},  # the label is only a name
        "config": config.to_dict(), **compute_identity(lm.device),  # torch / transformers / peft, device
        "engine_code": code_fingerprint(),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:20]


def lora_cache_dir() -> Path:
    return models.cache_root() / "lora"


def _manifest_files(directory: Path) -> dict[str, dict]:
    """``{relative path: {"sha256", "bytes"}}`` of every file under ``directory`` but the manifest itself."""
    files = {}
    for path in sorted(directory.rglob("*")):
        relative = path.relative_to(directory).as_posix()
        if relative == MANIFEST_NAME or path.is_dir():
            continue
        files[relative] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
    return files


def write_manifest(directory: str | Path, key: str) -> dict:
    """Write ``directory/manifest.json``: the sha256 and size of every file of a stored run (run.json, the final
    adapter, the checkpoints), written atomically into the staging directory before it is renamed into place, so
    an entry appears with its manifest or not at all."""
    directory = Path(directory)
    manifest = {"format": MANIFEST_FORMAT, "key": key, "files": _manifest_files(directory)}
    write_atomic(directory / MANIFEST_NAME, json.dumps(manifest, indent=1, sort_keys=True), mode=PRIVATE)
    return manifest


def check_manifest(entry: str | Path, key: str | None = None) -> str | None:
    """Why the stored run ``entry`` must not be served (None: every file is exactly as its manifest says).

    Checked: the manifest is readable and of this format, names ``key`` (when given), and lists exactly the files
    present, each with its size and sha256 (a file edited in place with its size and mtime kept is caught: the
    bytes are hashed on every read, never trusted from a stat)."""
    entry = Path(entry)
    path = entry / MANIFEST_NAME
    if not path.is_file():
        return f"it has no {MANIFEST_NAME} (stored by an older mi-atlas, or torn)"
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        fmt, stored_key, files = manifest["format"], manifest["key"], manifest["files"]
        expected = {str(name): (str(f["sha256"]), int(f["bytes"])) for name, f in files.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
        return f"its {MANIFEST_NAME} is unreadable ({type(exc).__name__})"
    if fmt != MANIFEST_FORMAT:
        return f"its {MANIFEST_NAME} has format {fmt!r}, this mi-atlas reads {MANIFEST_FORMAT}"
    if key is not None and stored_key != key:
        return f"its {MANIFEST_NAME} is for key {stored_key!r}, not {key!r}"
    try:
        found = {name: (f["sha256"], f["bytes"]) for name, f in _manifest_files(entry).items()}
    except OSError as exc:
        return f"its files cannot be read ({exc.strerror or exc})"
    if sorted(found) != sorted(expected):
        extra, missing = sorted(set(found) - set(expected)), sorted(set(expected) - set(found))
        return f"its files differ from the manifest (missing {missing[:3]}, unlisted {extra[:3]})"
    changed = [name for name in sorted(expected) if found[name] != expected[name]]
    if changed:
        return f"{', '.join(changed[:3])} {'does' if len(changed) == 1 else 'do'} not match the manifest's sha256"
    return None


_UNWRITABLE: set[str] = set()


def _warn_unwritable(root: Path, exc: OSError) -> None:
    """One line per LoRA cache root and process: adapters are trained and used, not stored."""
    if str(root) in _UNWRITABLE:
        return
    _UNWRITABLE.add(str(root))
    print(f"mi-atlas cache: cannot write the LoRA adapter cache {root} ({type(exc).__name__}: "
          f"{exc.strerror or exc}); adapters are trained but not stored. Set MI_ATLAS_CACHE to a writable "
          "directory.", file=sys.stderr, flush=True)


def _served(entry: Path, key: str, what: str):
    """The stored run at ``entry`` if its manifest checks (a cache hit, reported), else None after one
    ``CacheWarning`` naming what is wrong (the caller retrains)."""
    run, problem = _serve(entry, key)
    if run is not None:
        progress.hit(what, key)
        return run
    _warn_corrupt(entry, problem)
    return None


def _serve(entry: Path, key: str) -> tuple[LoraRun | None, str | None]:
    """(the stored run, None) when ``entry`` passes its manifest and loads; (None, why not) otherwise."""
    problem = check_manifest(entry, key)
    if problem is None:
        try:
            return load_run(entry, verify=False), None
        except LoraError as exc:
            problem = str(exc)
    return None, problem


def train_cached(lm: LoadedModel, examples: Sequence[Example], target: LoraTarget,
                 config: TrainConfig = TrainConfig(), *, cache_dir: str | Path | None = None) -> LoraRun:
    """:func:`train`, or the stored result of the identical run (locked, so parallel workers train once).

    Every read checks the entry's manifest (:func:`check_manifest`): an entry that fails it (bytes changed, a
    file missing or added, no manifest) is not served; it is retrained and replaced, with one
    :class:`~engine.cache.CacheWarning`. A cache that cannot be written degrades with one line on stderr: a
    verified entry is still served, anything else is trained and returned without being stored.
    """
    from filelock import FileLock

    root = Path(cache_dir) if cache_dir is not None else lora_cache_dir()
    key = cache_key(lm, examples, target, config)
    entry = root / f"{lm.key}-{key}"
    what = {"kind": "lora-train", "model": lm.key, "n_examples": len(examples)}  # the ledger's description
    try:
        root.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(entry) + ".lock")
        lock.acquire()
    except OSError as exc:
        _warn_unwritable(root, exc)
        run = _served(entry, key, what) if entry.is_dir() else None
        if run is not None:
            return run
        with progress.computing(what, key):
            return train(lm, examples, target, config)
    try:
        run = _served(entry, key, what) if entry.exists() else None
        if run is not None:
            return run
        try:
            staging = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", dir=root))
        except OSError as exc:
            _warn_unwritable(root, exc)
            with progress.computing(what, key):
                return train(lm, examples, target, config)
        keep = False
        try:
            with progress.computing(what, key):
                remote = _remote_training(lm, examples, target, config)
                if remote is None:
                    run = train(lm, examples, target, config, out_dir=staging)
                else:  # a claims run on Ray: the run's files (checkpoints, adapter, run.json) trained there
                    _unpack(remote(), staging)
                    run = None
            try:
                if run is not None:
                    (staging / "run.json").write_text(json.dumps(run.summary(), indent=1))
                write_manifest(staging, key)
                _replace(entry, staging)
            except OSError as exc:  # the trained run is returned all the same; its checkpoints stay in staging
                keep = True
                _warn_unwritable(root, exc)
                return run if run is not None else load_run(staging, verify=False)
        finally:
            if not keep and staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
        return load_run(entry, verify=False)
    finally:
        lock.release()


def _remote_training(lm: LoadedModel, examples: Sequence[Example], target: LoraTarget, config: TrainConfig):
    """The training as an ``engine.executors.Remote`` when the session hands measurements to an executor (None:
    train here)."""
    from engine import executors

    return executors.remote(train_files, lm, list(examples), target, config, label=f"lora-train {lm.key}")


def train_files(lm: LoadedModel, examples: Sequence[Example], target: LoraTarget, config: TrainConfig) -> dict:
    """What :func:`train_cached` stores for a run, computed in this process: ``{relative path: bytes}`` of the
    run's directory (checkpoints, ``final`` adapter, ``run.json``), as a measurement executor's worker returns it."""
    with tempfile.TemporaryDirectory(prefix="mi-atlas-lora-") as tmp:
        out = Path(tmp)
        run = train(lm, examples, target, config, out_dir=out)
        (out / "run.json").write_text(json.dumps(run.summary(), indent=1))
        return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def _unpack(files: dict, directory: Path) -> None:
    for name, data in files.items():
        path = directory / name
        if path.resolve().parent != directory.resolve() and directory.resolve() not in path.resolve().parents:
            raise LoraError(f"a remote LoRA run returned a file outside its directory: {name!r}")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def _warn_corrupt(entry: Path, problem: str | None) -> None:
    from engine.cache import CacheWarning

    warnings.warn(CacheWarning(f"mi-atlas cache: stored LoRA run {entry} is not served: {problem}; retraining it"),
                  stacklevel=3)


def _replace(entry: Path, staging: Path) -> None:
    """Move ``staging`` to ``entry``; a previous ``entry`` is moved aside first and removed after."""
    old = None
    if entry.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{entry.name}.old.", dir=entry.parent))
        entry.rename(old / "entry")
    staging.rename(entry)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def load_run(entry: str | Path, *, verify: bool = True) -> LoraRun:
    """A run stored by :func:`train_cached` (weights read from its ``final`` adapter directory).

    ``verify``: check the entry's manifest first (:func:`check_manifest`) and refuse an entry that fails it."""
    from safetensors.torch import load_file

    entry = Path(entry)
    if verify:
        problem = check_manifest(entry)
        if problem is not None:
            raise LoraError(f"{entry}: stored LoRA run fails its integrity check: {problem}; delete the directory "
                            "to retrain")
    try:
        data = json.loads((entry / "run.json").read_text())
        state = load_file(str(entry / "final" / "adapter_model.safetensors"))
    except (OSError, ValueError, RecursionError) as exc:
        raise LoraError(f"{entry}: stored LoRA run is unreadable ({type(exc).__name__}: {exc}); delete the "
                        "directory to retrain") from exc
    try:
        return _run_from(entry, data, state)
    except (KeyError, TypeError, ValueError, AttributeError, LoraError) as exc:
        raise LoraError(f"{entry}: stored LoRA run is malformed ({type(exc).__name__}: {exc}); delete the "
                        "directory to retrain") from exc


def _run_from(entry: Path, data: dict, state: dict) -> LoraRun:
    target = LoraTarget(**{**data["target"], "layers": tuple(data["target"]["layers"]),
                           "modules": tuple(data["target"]["modules"])})
    config = TrainConfig(**{"pad_labels": False, **data["config"], "checkpoints": tuple(data["config"]["checkpoints"])})
    params = ParamCount(**{k: v for k, v in data["params"].items() if k != "percent"})
    checkpoints = {float(f): entry / name for f, name in data["checkpoints"].items()}
    return LoraRun(target=target, config=config, params=params, losses=data["losses"], lrs=data["lrs"], state=state,
                   checkpoints=checkpoints, seconds=data["seconds"], cpu_seconds=data.get("cpu_seconds", 0.0),
                   n_examples=data["n_examples"],
                   families=tuple(data["families"]), tokens_per_step=data["tokens_per_step"],
                   mean_seq_len=data["mean_seq_len"], adapter_dir=entry / "final")
