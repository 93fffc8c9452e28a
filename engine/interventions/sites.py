"""Sites: where an activation lives, and the one lookup from a ``Site`` to the module and hook that reach it.

``resolve(lm, site)`` is shared by edits (``hooks.install``) and reads (``capture.capture``); it goes through the
model's ``ArchAdapter`` (no attribute names here). A resolved site (``SiteHook``) is one of three hook kinds:

* ``"layer"``  (components ``layer``, ``resid``): a forward hook on the decoder layer; the callback sees the
  layer's input and output hidden states. The site's value is the output (``resid``) or the contribution
  ``output - input`` (``layer``).
* ``"slice"``  (component ``head``): a forward pre-hook on the attention output projection; the callback sees
  the head's slice ``[..., lo:hi]`` of its input.
* ``"output"`` (components ``attn``, ``mlp``, ``module``): a forward hook on the block / projection; the
  callback sees its output.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import Tensor, nn

from .batch import Batch
from .errors import InterventionError

COMPONENTS = ("layer", "resid", "attn", "mlp", "head", "module")
MODULE_NAMES = ("q", "k", "v", "o", "gate", "up", "down")
HOOK_KINDS = ("layer", "slice", "output")


@dataclass(frozen=True)
class Site:
    """Where an activation lives: a component at a layer (with head / module where relevant)."""

    component: str
    layer: int
    head: int | None = None
    module: str | None = None

    def label(self) -> str:
        extra = f".h{self.head}" if self.head is not None else (f".{self.module}" if self.module else "")
        return f"L{self.layer}.{self.component}{extra}"


@dataclass
class Captured:
    """Activations of one site over a batch: ``values`` [n, T, d] with the batch they came from."""

    site: Site
    values: Tensor
    batch: Batch


def hidden_in(args, kwargs) -> Tensor:
    """A decoder layer's input hidden state, from its hook's (args, kwargs)."""
    return args[0] if args else kwargs["hidden_states"]


def split_output(output):
    """(tensor, rebuild) for a module output that is a tensor or a tuple whose first item is the tensor."""
    if isinstance(output, Tensor):
        return output, lambda t: t
    if isinstance(output, tuple):
        return output[0], lambda t: (t, *output[1:])
    if hasattr(output, "__getitem__"):  # ModelOutput-like
        first = output[0]

        def rebuild(t):
            output[0] = t
            return output
        return first, rebuild
    raise InterventionError(f"unexpected module output type {type(output).__name__}")


@dataclass(frozen=True, eq=False)
class SiteHook:
    """A resolved site: the ``module`` to hook and the hook ``kind`` (module doc); ``lo:hi`` is a head's slice."""

    site: Site
    module: nn.Module
    kind: str
    lo: int = 0
    hi: int = 0

    def value(self, *seen: Tensor) -> Tensor:
        """The site's activation from what a callback sees: (input, output) for ``"layer"``, else the tensor."""
        if self.kind == "layer":
            inp, out = seen
            return out - inp if self.site.component == "layer" else out
        return seen[0]

    def attach(self, fn: Callable[..., Tensor | None]):
        """Register the hook; returns its handle.

        ``fn(input, output)`` for kind ``"layer"``, ``fn(x)`` otherwise; it returns the tensor that replaces the
        output (``"layer"``, ``"output"``) or the head's slice (``"slice"``), or None to leave it unchanged.
        """
        if self.kind == "layer":
            def layer_hook(module, args, kwargs, output):
                out, rebuild = split_output(output)
                new = fn(hidden_in(args, kwargs), out)
                return None if new is None else rebuild(new)
            return self.module.register_forward_hook(layer_hook, with_kwargs=True)
        if self.kind == "slice":
            lo, hi = self.lo, self.hi

            def slice_hook(module, args):
                x = args[0]
                part = fn(x[..., lo:hi])
                if part is None:
                    return None
                new = x.clone()
                new[..., lo:hi] = part
                return (new, *args[1:])
            return self.module.register_forward_pre_hook(slice_hook)

        def output_hook(module, args, output):
            out, rebuild = split_output(output)
            new = fn(out)
            return None if new is None else rebuild(new)
        return self.module.register_forward_hook(output_hook)


def resolve(lm, site: Site, who: str | None = None) -> SiteHook:
    """The module and hook kind of ``site`` on ``lm``; ``who`` names the caller in errors (default the label)."""
    who = who or site.label()
    layers = lm.adapter.layers(lm.model)
    if not 0 <= site.layer < len(layers):
        raise InterventionError(f"{who}: layer {site.layer} out of range (model has {len(layers)})")
    layer = layers[site.layer]
    comp = site.component
    if comp in ("layer", "resid"):
        return SiteHook(site, layer, "layer")
    if comp == "head":
        proj = lm.adapter.attn_out_proj(layer)
        n_heads, hd = lm.adapter.n_heads(lm.model), lm.adapter.head_dim(lm.model)
        if not 0 <= site.head < n_heads:
            raise InterventionError(f"{who}: head {site.head} out of range ({n_heads} heads)")
        return SiteHook(site, proj, "slice", site.head * hd, (site.head + 1) * hd)
    if comp == "attn":
        return SiteHook(site, lm.adapter.attn(layer), "output")
    if comp == "mlp":
        return SiteHook(site, lm.adapter.mlp(layer), "output")
    if comp == "module":
        return SiteHook(site, lm.adapter.module(layer, site.module), "output")
    raise InterventionError(f"{who}: unknown component {comp!r}; choose from {COMPONENTS}")
