"""What a process keeps: the one per-process model cache (``shared`` / ``release``) and a model's metadata read
without loading its weights (``metadata``).

``shared(key, **load_kwargs)`` loads a model the first time a (key, load arguments) pair is asked for and
returns the same ``LoadedModel`` afterwards. It is what executor workers, the atlas job runner
(``engine.atlas.run_cell``) and the claims' ``load_model`` fixture use, so a process loads each model once.
``max_models`` bounds the cache for that call (least recently used entries are dropped first: the cache lets
go of them, and their memory returns once no caller holds them; ``None``: no bound). ``release(key)`` frees
every cached load of ``key`` (``models.free``: the caller asserts nobody uses it any more); ``release()``
frees them all.
"""

from __future__ import annotations

import gc
from collections import OrderedDict

import torch

from .loaded import LoadedModel, free
from .loading import dtype_info, load
from .registry import spec_for

_CACHE: OrderedDict[tuple, LoadedModel] = OrderedDict()
_ARGS: dict[tuple, tuple[str, dict]] = {}  # cache key -> the (key_or_path, load_kwargs) it was loaded with


def _cache_key(key_or_path: str, load_kwargs: dict) -> tuple:
    # one load however it is spelled: quant=None is no quant, "fp32" / "float32" / torch.float32 are one dtype
    kwargs = {k: v for k, v in load_kwargs.items() if not (v is None and k in ("dtype", "device", "quant"))}
    if "dtype" in kwargs:
        kwargs["dtype"] = dtype_info(kwargs["dtype"]).name
    return key_or_path, tuple(sorted((name, repr(value)) for name, value in kwargs.items()))


def shared(key_or_path: str, *, max_models: int | None = None, **load_kwargs) -> LoadedModel:
    """``load(key_or_path, **load_kwargs)``, once per process: later calls return the same object.

    ``max_models``: keep at most this many models cached (the least recently used are dropped before a new
    one is loaded); None keeps every model until ``release``."""
    key = _cache_key(key_or_path, load_kwargs)
    if key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key]
    if max_models is not None and len(_CACHE) >= max(1, max_models):
        while len(_CACHE) >= max(1, max_models):
            _CACHE.popitem(last=False)
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    lm = load(key_or_path, **load_kwargs)
    _CACHE[key] = lm
    _ARGS[key] = (key_or_path, dict(load_kwargs))
    return lm


def load_args(lm: LoadedModel) -> tuple[str, dict] | None:
    """``(key_or_path, load_kwargs)`` of the ``shared`` call that returned ``lm`` (this very object, still cached),
    so that another process can load the same model (``engine.executors.model_ref``); None for a model this
    cache does not hold (e.g. an adapted or layer-skipped copy, which no load reproduces)."""
    for key, held in _CACHE.items():
        if held is lm:
            return _ARGS.get(key)
    return None


def release(key_or_path: str | None = None) -> None:
    """Free every cached load of ``key_or_path`` (None: of every model); a later ``shared`` loads it again."""
    for key in [k for k in _CACHE if key_or_path is None or k[0] == key_or_path]:
        free(_CACHE.pop(key))


def holds(key_or_path: str, **load_kwargs) -> bool:
    """Whether ``shared(key_or_path, **load_kwargs)`` would return a model already loaded (no load)."""
    return _cache_key(key_or_path, load_kwargs) in _CACHE


def metadata(key_or_path: str) -> dict:
    """What a driver needs to plan work on a model, without loading (or fetching) its weights: ``model`` (the key
    a loaded model reports), ``arch``, ``n_layers``, ``d_model``, ``params``, ``source`` and ``path``. Registry
    keys are answered from the registry, local directories from their ``config.json``."""
    spec = spec_for(key_or_path)
    return {"model": spec.key, "arch": spec.arch, "n_layers": int(spec.n_layers), "d_model": spec.d_model,
            "params": spec.params, "source": spec.source, "path": spec.path}
