"""Figures of atlas results: the layers x families effect heatmap (matplotlib, headless).

``atlas_heatmap(data, path)`` draws one atlas (an ``engine.atlas.Atlas`` or its JSON) as a heatmap a paper can
use: one row per family plus the mean over families (separated by a rule), one column per layer, colour =
KL(clean || ablated) in nats on a shared scale. Each family's argmax layer is marked with a dot, the hub (when
the bootstrap CI of its gap to the runner-up excludes 0) with a box on the mean row; the title states the
model, component, method, number of examples and the hub reading (or "no hub" for a tie).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _as_json(data) -> dict:
    return data.to_json() if hasattr(data, "to_json") else dict(data)


def atlas_heatmap(data, path: str | Path, *, dpi: int = 200, cmap: str = "magma", log: bool | None = None) -> Path:
    """Write the heatmap of one atlas to ``path`` (PNG, PDF or SVG by extension) and return the path.

    ``log``: logarithmic colour scale (default: when the positive effects span more than three decades)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm, Normalize

    d = _as_json(data)
    families = list(d["families"])
    effects = np.array([np.asarray(d["effects"][f], dtype=float) for f in families])
    mean = np.asarray(d["mean_effect"], dtype=float)
    if effects.ndim == 3:  # head / module atlas: the largest unit per layer
        effects, mean = effects.max(-1), mean.max(-1)
    layers = list(d.get("layers") or range(d["n_layers"]))
    grid = np.vstack([effects, mean[None, :]])
    labels = [f.replace("_", " ") for f in families] + ["mean over families"]

    positive = grid[grid > 0]
    if log is None:
        log = positive.size > 0 and positive.max() / max(positive.min(), 1e-12) > 1e3
    if log and positive.size:
        norm = LogNorm(vmin=max(positive.min(), positive.max() * 1e-4), vmax=positive.max())
        shown = np.where(grid > 0, grid, norm.vmin)
    else:
        norm, shown = Normalize(vmin=0.0, vmax=max(float(grid.max()), 1e-12)), grid

    n_rows, n_cols = grid.shape
    width = min(12.0, 2.6 + 0.28 * n_cols)
    height = 1.2 + 0.32 * n_rows
    fig, ax = plt.subplots(figsize=(width, height), layout="constrained")
    image = ax.imshow(shown, aspect="auto", cmap=cmap, norm=norm, interpolation="nearest")
    ax.axhline(n_rows - 1.5, color="white", linewidth=2.0)
    step = 1 if n_cols <= 24 else 2
    ax.set_xticks(range(0, n_cols, step), [str(layers[i]) for i in range(0, n_cols, step)], fontsize=7)
    ax.set_yticks(range(n_rows), labels, fontsize=8)
    ax.set_xlabel("layer ablated")
    ax.tick_params(length=2)
    family_argmax = d.get("family_argmax") or {}
    col = {l: i for i, l in enumerate(layers)}
    for r, fam in enumerate(families):
        if fam in family_argmax and family_argmax[fam] in col:
            ax.plot(col[family_argmax[fam]], r, marker="o", markersize=3.2, color="cyan", markeredgewidth=0)
    hub = d.get("hub")
    argmax = d.get("argmax_layer", int(np.argmax(mean)))
    if hub is not None and hub in col:
        ax.add_patch(plt.Rectangle((col[hub] - 0.5, n_rows - 1.5), 1, 1, fill=False, edgecolor="cyan", linewidth=1.8))
    elif argmax in col:
        ax.plot(col[argmax], n_rows - 1, marker="x", markersize=5, color="cyan")
    bar = fig.colorbar(image, ax=ax, pad=0.01, fraction=0.04)
    where = "answer position" if d.get("measure", "answer") == "answer" else "all positions (mean)"
    bar.set_label(f"KL(clean ‖ ablated), nats\n{where}", fontsize=8)
    bar.ax.tick_params(labelsize=7)
    gap = d.get("gap") or {}
    if hub is not None:
        reading = (f"hub L{hub} (depth {d.get('hub_depth', 0):.2f}); gap to L{d.get('runner_up')} "
                   f"{gap.get('estimate', float('nan')):.3g} [{gap.get('low', float('nan')):.3g}, "
                   f"{gap.get('high', float('nan')):.3g}]")
    else:
        reading = (f"no separated hub (argmax L{argmax}, gap to L{d.get('runner_up')} CI "
                   f"[{gap.get('low', float('nan')):.3g}, {gap.get('high', float('nan')):.3g}] includes 0)")
    positions = d.get("positions", "all")
    ax.set_title(f"{d['model']}: {d['component']} ablation ({d['method']}, positions {positions}), "
                 f"{d['n_examples']} prompts, {len(families)} families\n{reading}; "
                 "dots: per-family argmax", fontsize=9)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path
