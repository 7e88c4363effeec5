"""PNG plots of search and training runs: alpha weights (heatmaps and their
evolution), the schedule timeline, loss/accuracy (or perplexity) curves, the
learning rate, diagrams of cells, and tuning trials. Written atomically.

Matplotlib's object-oriented API with the Agg canvas (`Figure` +
`FigureCanvasAgg`): importing this module never changes the matplotlib backend
of the process (no `matplotlib.use`, no pyplot).
"""

from __future__ import annotations

import functools
import io

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.mathtext import MathTextParser
from matplotlib.ticker import MaxNLocator

from dprime_tf.atomic import atomic_write

DPI = 100


def _title(ax, text, **kwargs):
    """ax.set_title at a fixed height: with matplotlib's default (automatic placement)
    every axes measures its tick labels' extents to place its title, a third of the time
    of a many-panel figure; these plots have no decorations above the axes, so the pixels
    are the same (compared for every plot of a search's report)."""
    ax.set_title(text, y=1.0, **kwargs)


class _Canvas(FigureCanvasAgg):
    """The Agg canvas with one mathtext parser for every figure of the process.

    Agg gives each renderer its own parser, and a parser's cache of parsed labels is
    its own: every figure (twice with bbox_inches="tight", which draws at two sizes)
    parsed its "$c_{k-2}$ -> 0" labels again, a third of a heatmap's drawing time.
    Same pixels."""

    _mathtext = MathTextParser("path")

    def get_renderer(self):
        renderer = super().get_renderer()
        renderer.mathtext_parser = self._mathtext
        return renderer


def _figure(figsize, **kwargs) -> Figure:
    fig = Figure(figsize=figsize, **kwargs)
    _Canvas(fig)
    return fig


def png_bytes(fig, dpi=DPI) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return buf.getvalue()


def _save(fig, path, dpi=DPI):
    """Writes the figure as a PNG file (atomically); with path=None returns the PNG bytes."""
    data = png_bytes(fig, dpi)
    if path is None:
        return data
    atomic_write(path, data)
    return data


# -- names of cell inputs, nodes and edges (mathtext) -----------------------------
CNN_INPUTS = ("$c_{k-2}$", "$c_{k-1}$")


def node_name(index: int, num_inputs: int = 2) -> str:
    """A CNN cell's state `index`: the two inputs c_{k-2}, c_{k-1}, then nodes 0, 1, ..."""
    return CNN_INPUTS[index] if index < num_inputs else str(index - num_inputs)


def edge_labels(num_inputs=2, steps=4):
    """One label per alpha row of a CNN cell ("$c_{k-2}$ -> 0", ...), in DARTS's edge order."""
    return [f"{node_name(j, num_inputs)} → {i}" for i in range(steps) for j in range(num_inputs + i)]


def recurrent_edge_labels(steps=8):
    """One label per alpha row of the recurrent cell ("$s_0$ -> $s_1$", ...)."""
    return [f"$s_{{{j}}}$ → $s_{{{i}}}$" for i in range(1, steps + 1) for j in range(i)]


def alpha_edge_labels(edges: int) -> list[str]:
    if edges == 14:
        return edge_labels()
    if edges == 36:
        return recurrent_edge_labels()
    return [f"edge {e}" for e in range(edges)]


# -- alphas --------------------------------------------------------------------
def plot_alpha_history(path, history: np.ndarray, primitives, title: str, x=None):
    """history: (T, edges, ops) softmax weights; one panel per edge, one line per op."""
    t, edges, ops = history.shape
    x = np.arange(t) if x is None else x
    cols = 5 if edges <= 20 else 6
    rows = -(-edges // cols)
    fig = _figure((3.2 * cols, 2.3 * rows))
    axes = fig.subplots(rows, cols, sharex=True, sharey=True, squeeze=False)
    labels = alpha_edge_labels(edges)
    for e in range(rows * cols):
        ax = axes[e // cols][e % cols]
        if e >= edges:
            ax.axis("off")
            continue
        for o in range(ops):
            ax.plot(x, history[:, e, o], label=primitives[o], lw=1.2, marker="o" if t < 12 else None, ms=2.5)
        _title(ax, labels[e], fontsize=9)
        ax.tick_params(labelsize=7)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.legend(*axes[0][0].get_legend_handles_labels(), loc="upper center", ncol=min(ops, 8), fontsize=8,
               bbox_to_anchor=(0.5, 1.0 - 0.02 / rows))
    fig.suptitle(title, y=1.0 + 0.04 / rows)
    fig.supxlabel("epoch")
    fig.supylabel("softmax(alpha)")
    _save(fig, path)


def _color_range(weights) -> tuple[float, float]:
    """The colour scale of a heatmap: the weights' own range (early in a search they all
    sit near 1/ops and a 0..1 scale would show one flat colour); the numbers are printed."""
    low, high = float(np.min(weights)), float(np.max(weights))
    if high - low < 1e-9:
        low, high = low - 1e-3, high + 1e-3
    return low, high


def _heatmap(ax, weights, primitives, labels, annotate=True, fontsize=7):
    edges, ops = weights.shape
    low, high = _color_range(weights)
    image = ax.imshow(weights, cmap="viridis", vmin=low, vmax=high, aspect="auto")
    ax.set_xticks(range(ops))
    ax.set_xticklabels(primitives, rotation=40, ha="right", fontsize=fontsize)
    ax.set_yticks(range(edges))
    ax.set_yticklabels(labels, fontsize=fontsize)
    if annotate:
        top = weights.max(axis=1)
        threshold = low + 0.6 * (high - low)
        digits = 2 if high - low > 0.05 else 3 if high - low > 0.005 else 4
        for e in range(edges):
            for o in range(ops):
                w = weights[e, o]
                ax.text(o, e, f"{w:.{digits}f}", ha="center", va="center", fontsize=fontsize - 1,
                        color="black" if w > threshold else "white",
                        fontweight="bold" if w == top[e] else "normal")
    return image


def plot_alpha_heatmap(path, weights: np.ndarray, primitives, title: str):
    """weights: (edges, ops) softmax(alpha); one row per edge, one column per op, the
    largest weight of each row in bold. path=None: returns the PNG bytes."""
    weights = np.asarray(weights, dtype=np.float64)
    png = _heatmap_png(title, tuple(primitives), weights.shape, weights.tobytes())
    if path is not None:
        atomic_write(path, png)
    return png


# The last few heatmaps drawn, by their inputs: a search draws each cell's heatmap for
# TensorBoard at every epoch end, and its report draws the last epoch's again.
@functools.lru_cache(maxsize=4)
def _heatmap_png(title, primitives, shape, data) -> bytes:
    weights = np.frombuffer(data, dtype=np.float64).reshape(shape)
    edges, ops = shape
    fig = _figure((1.0 + 0.85 * ops + 1.6, 0.8 + 0.32 * edges))
    ax = fig.subplots()
    image = _heatmap(ax, weights, primitives, alpha_edge_labels(edges), fontsize=8 if edges <= 20 else 7)
    fig.colorbar(image, ax=ax, fraction=0.04, pad=0.02, label="softmax(alpha)")
    _title(ax, title, fontsize=10)
    return png_bytes(fig)


def plot_alpha_evolution(path, history: np.ndarray, primitives, title: str, max_panels: int = 6):
    """Heatmaps of softmax(alpha) at up to `max_panels` epochs spread over the search
    (the first and the latest always), on one colour scale."""
    history = np.asarray(history, dtype=np.float64)
    t, edges, ops = history.shape
    picks = sorted(set(np.linspace(0, t - 1, min(t, max_panels)).round().astype(int).tolist()))
    fig = _figure((0.9 + (0.42 * ops + 0.3) * len(picks) + 1.0, 1.2 + 0.22 * edges))
    axes = fig.subplots(1, len(picks), sharey=True, squeeze=False)[0]
    low, high = _color_range(history[picks])
    labels = alpha_edge_labels(edges)
    image = None
    for ax, k in zip(axes, picks):
        image = ax.imshow(history[k], cmap="viridis", vmin=low, vmax=high, aspect="auto")
        ax.set_xticks(range(ops))
        ax.set_xticklabels(primitives, rotation=60, ha="right", fontsize=6)
        ax.set_yticks(range(edges))
        ax.set_yticklabels(labels, fontsize=6 if edges > 20 else 7)
        _title(ax, f"epoch {k + 1}", fontsize=9)
    fig.colorbar(image, ax=list(axes), fraction=0.03, pad=0.01)
    fig.suptitle(title, fontsize=10)
    _save(fig, path)


# -- the schedule and the curves -------------------------------------------------
def plot_schedule(path, history: dict):
    """FI, its EWMA and the threshold tau per step, with the alpha steps marked."""
    step = history["step"]
    fig = _figure((10, 6))
    ax1, ax2 = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax1.plot(step, history["fi"], lw=0.6, alpha=0.5, label="FI (trace of the empirical Fisher)")
    ax1.plot(step, history["fi_ewma"], lw=1.2, label="FI EWMA")
    ax1.plot(step, history["tau"], lw=1.2, label="threshold τ")
    positive = np.concatenate([np.asarray(history[k])[np.asarray(history[k]) > 0] for k in ("fi", "fi_ewma", "tau")])
    if len(positive):
        ax1.set_yscale("log")
    ax1.legend(fontsize=8)
    ax1.set_ylabel("gradient information")
    taken = step[history["alpha_step"] > 0]
    ax2.vlines(taken, 0, 1, lw=0.8, color="C3")
    ax2.set_yticks([])
    ax2.set_ylabel("alpha steps")
    ax2.set_xlabel("step")
    ax2.xaxis.set_major_locator(MaxNLocator(integer=True))
    rate = float(np.mean(history["alpha_step"])) if len(step) else 0.0
    _title(ax1, f"{len(taken)} alpha steps in {len(step)} steps ({rate:.3f} per step)")
    _save(fig, path)


def ewma(values, beta: float = 0.1):
    """An exponentially weighted moving average that skips NaNs (a smoothed curve)."""
    out = np.full(len(values), np.nan)
    state = np.nan
    for i, v in enumerate(np.asarray(values, dtype=np.float64)):
        if np.isfinite(v):
            state = v if not np.isfinite(state) else (1 - beta) * state + beta * v
        out[i] = state
    return out


def plot_curves(path, step, series: dict, epochs: list[dict] | None = None, title: str = ""):
    """One panel per entry of `series` ({panel title: {"values": per-step values,
    "val": key of the per-epoch validation value in `epochs`, "log": bool}}): the
    per-step values (faint), their moving average, and the validation values at
    each epoch's last step."""
    epochs = epochs or []
    panels = list(series.items())
    fig = _figure((10, 0.4 + 2.4 * len(panels)), layout="constrained")
    axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    for ax, (name, spec) in zip(axes, panels):
        values = np.asarray(spec["values"], dtype=np.float64)
        ok = np.isfinite(values)
        if ok.any():
            ax.plot(step[ok], values[ok], lw=0.6, alpha=0.35, color="C0", label="per step")
            ax.plot(step, ewma(values, spec.get("beta", 0.1)), lw=1.4, color="C0", label="moving average")
        val_key = spec.get("val")
        points = [(e["step"], e[val_key]) for e in epochs if val_key and e.get(val_key) is not None
                  and e.get("step") is not None and np.isfinite(e[val_key])]
        if points:
            xs, ys = zip(*points)
            ax.plot(xs, ys, "o-", color="C3", lw=1.2, ms=4, label="validation (epoch end)")
        if spec.get("log") and ok.any() and np.nanmin(values[ok]) > 0:
            ax.set_yscale("log")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        if ok.any() or points:
            ax.legend(fontsize=8, loc="best")
    axes[-1].set_xlabel("step")
    axes[-1].xaxis.set_major_locator(MaxNLocator(integer=True))
    if title:
        fig.suptitle(title)
    _save(fig, path)


def plot_lr(path, step, lr, extra: dict | None = None):
    """The learning rate per step (and any other per-step schedules in `extra`)."""
    extra = extra or {}
    fig = _figure((10, 2.6))
    ax = fig.subplots()
    ax.plot(step, lr, color="C2", lw=1.2, label="learning rate")
    ax.set_ylabel("learning rate")
    ax.set_xlabel("step")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    if extra:
        twin = ax.twinx()
        for k, (name, values) in enumerate(extra.items()):
            twin.plot(step, values, color=f"C{4 + k}", lw=1.0, ls="--", label=name)
        twin.legend(fontsize=8, loc="upper right")
    ax.legend(fontsize=8, loc="upper left")
    _save(fig, path)


# -- cells --------------------------------------------------------------------------
_BOX = dict(boxstyle="round,pad=0.35", ec="0.35")


def _row_edge(ax, x0, x1, op, rad=-0.45):
    """An arrow from x0 to x1 on the row y = 0 (an arc above it when it skips nodes),
    labelled with `op` at its apex."""
    far = x1 - x0 > 1.9  # skips at least one node
    ax.annotate("", xy=(x1, 0), xytext=(x0, 0),
                arrowprops=dict(arrowstyle="-|>", color="0.3", lw=1.1, shrinkA=14, shrinkB=14,
                                connectionstyle=f"arc3,rad={rad if far else 0.0}"))
    height = -0.5 * rad * (x1 - x0) if far else 0.1  # arc3's apex: half the control point's offset
    ax.text((x0 + x1) / 2, height, op, fontsize=8.5, ha="center", va="center" if far else "bottom", color="C0",
            zorder=3, bbox=dict(boxstyle="round,pad=0.12", fc="white", ec="none", alpha=0.9))
    return height


def plot_cell(path, gene, concat, title: str):
    """A CNN cell: the inputs c_{k-2}, c_{k-1} and the intermediate nodes 0, 1, ... in a
    row, one arrow per kept edge labelled with its op (an arc above the row when it skips
    nodes), and the output c_{k} (the concatenation of `concat`) below."""
    steps = len(gene) // 2
    gap = 1.9
    xs = {j: gap * j for j in range(2 + steps)}
    spans = [xs[2 + k // 2] - xs[src] for k, (_, src) in enumerate(gene)]
    top = max([0.3] + [0.225 * s for s in spans if s > 1.9])  # the highest arc's apex
    fig = _figure((1.6 + 1.45 * (2 + steps), 1.9 + 0.75 * top + 0.8))
    ax = fig.subplots()
    for k, (op, src) in enumerate(gene):
        _row_edge(ax, xs[src], xs[2 + k // 2], op)
    out = ((xs[2] + xs[1 + steps]) / 2, -1.5)
    for node in concat:
        ax.annotate("", xy=out, xytext=(xs[node], 0),
                    arrowprops=dict(arrowstyle="-|>", color="0.7", lw=0.9, shrinkA=13, shrinkB=15))
    for node, x in xs.items():
        ax.text(x, 0, node_name(node), ha="center", va="center", fontsize=12, zorder=4,
                bbox=dict(**_BOX, fc="#b9e4b0" if node < 2 else "#b8d4f0"))
    ax.text(*out, "$c_{k}$ (concat)", ha="center", va="center", fontsize=12, zorder=4,
            bbox=dict(**_BOX, fc="#f3e3a0"))
    ax.set_xlim(-0.8, xs[1 + steps] + 0.8)
    ax.set_ylim(-1.9, top + 0.35)
    ax.set_aspect("equal")  # arc3 bends in display space: equal scales put the labels on the arcs
    ax.axis("off")
    _title(ax, title, fontsize=12)
    _save(fig, path, dpi=110)


def plot_recurrent_cell(path, genotype, title: str):
    """A recurrent cell: x_t and h_{t-1} -> s_0, one labelled edge into each node s_i,
    the mean of the `concat` nodes -> h_t."""
    steps = len(genotype.recurrent)
    xs = {0: 0.0, **{i: 1.5 * i for i in range(1, steps + 1)}}
    span = max(d - s for d, (_, s) in enumerate(genotype.recurrent, 1))
    fig = _figure((2.6 + 1.3 * steps, 2.4 + 0.35 * span))
    ax = fig.subplots()
    for k, (op, src) in enumerate(genotype.recurrent):
        dst = k + 1
        rad = -0.5 if dst - src > 1 else 0.0
        ax.annotate("", xy=(xs[dst], 0), xytext=(xs[src], 0),
                    arrowprops=dict(arrowstyle="-|>", color="0.3", lw=1.1, shrinkA=13, shrinkB=13,
                                    connectionstyle=f"arc3,rad={rad}"))
        height = 0.5 * abs(rad) * (xs[dst] - xs[src]) if rad else 0.12  # the arc's apex
        ax.text((xs[src] + xs[dst]) / 2, height, op, fontsize=8.5, ha="center", va="bottom", color="C0", zorder=3,
                bbox=dict(boxstyle="round,pad=0.1", fc="white", ec="none", alpha=0.85))
    out = (xs[steps] / 2, -1.4)
    for node in genotype.concat:
        ax.annotate("", xy=out, xytext=(xs[node], 0), arrowprops=dict(arrowstyle="-|>", color="0.75", lw=0.8,
                                                                     shrinkA=12, shrinkB=14))
    for y in (0.5, -0.5):
        ax.annotate("", xy=(xs[0], 0), xytext=(-1.3, y), arrowprops=dict(arrowstyle="-|>", color="0.5", shrinkB=13))
    ax.text(-1.4, 0.5, "$x_t$", ha="right", va="center", fontsize=12, bbox=dict(**_BOX, fc="#b9e4b0"))
    ax.text(-1.4, -0.5, "$h_{t-1}$", ha="right", va="center", fontsize=12, bbox=dict(**_BOX, fc="#b9e4b0"))
    for node, x in xs.items():
        ax.text(x, 0, f"$s_{{{node}}}$", ha="center", va="center", fontsize=12, zorder=4,
                bbox=dict(**_BOX, fc="#b8d4f0"))
    ax.text(*out, "$h_t$ (mean)", ha="center", va="center", fontsize=12, bbox=dict(**_BOX, fc="#f3e3a0"))
    ax.set_xlim(-2.4, xs[steps] + 0.8)
    ax.set_ylim(-1.9, 0.45 + 0.25 * 1.5 * span)  # above the highest arc's apex
    ax.set_aspect("equal")  # arc3 bends in display space: equal scales put the labels on the arcs
    ax.axis("off")
    _title(ax, title, fontsize=12)
    _save(fig, path, dpi=110)


# -- tuning ------------------------------------------------------------------------
def plot_tuning(path, trials: list[dict], objective: str, direction: str, best: dict | None):
    """The objective of each completed trial (in trial order), the best so far, and the
    best trial's settings."""
    done = [t for t in trials if t.get("score") is not None and np.isfinite(t["score"])]
    fig = _figure((10, 4.2))
    ax = fig.subplots()
    if done:
        xs = np.arange(1, len(done) + 1)
        scores = np.array([t["score"] for t in done])
        ax.plot(xs, scores, "o", color="C0", label="trial")
        running = np.maximum.accumulate(scores) if direction == "max" else np.minimum.accumulate(scores)
        ax.step(xs, running, where="post", color="C1", lw=1.2, label=f"best so far ({direction})")
        ax.set_xticks(xs)
        ax.set_xticklabels([str(t["trial_id"]) for t in done], rotation=45, ha="right", fontsize=7)
        if best is not None:
            k = next((i for i, t in enumerate(done) if t["trial_id"] == best["trial_id"]), None)
            if k is not None:
                ax.plot(xs[k], scores[k], "*", ms=16, color="C3", label=f"best: trial {best['trial_id']}")
        ax.margins(x=0.08, y=0.15)
        ax.legend(fontsize=8, loc="best")
    else:
        ax.text(0.5, 0.5, "no completed trial", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("trial (in order of completion)")
    ax.set_ylabel(objective)
    ax.grid(alpha=0.3)
    if best is not None:
        text = "\n".join(f"{k} = {v:.4g}" if isinstance(v, float) else f"{k} = {v}"
                         for k, v in best.get("hyperparameters", {}).items())
        ax.text(1.02, 1.0, f"best trial {best['trial_id']}\n{objective} = {best['score']:.4f}\n\n{text}",
                transform=ax.transAxes, va="top", fontsize=8, family="monospace",
                bbox=dict(boxstyle="round", fc="#f6f6f6", ec="0.7"))
    _title(ax, f"{len(done)} of {len(trials)} trials completed")
    _save(fig, path)


def plot_per_method(path, values: dict, ylabel: str, title: str):
    """A box per method with every trial as a point (seeds side by side): a study's
    test error, alpha-step rate or search time."""
    names = [m for m, v in values.items()]
    fig = _figure((max(4.5, 1.3 * len(names) + 2), 3.8))
    ax = fig.subplots()
    data = [np.asarray(values[m], dtype=float) for m in names]
    if any(len(d) for d in data):
        positions = np.arange(1, len(names) + 1)
        boxes = [(p, d) for p, d in zip(positions, data) if len(d) > 1]
        if boxes:
            ax.boxplot([d for _, d in boxes], positions=[p for p, _ in boxes], widths=0.5, showfliers=False,
                       medianprops=dict(color="C1"))
        rng = np.random.default_rng(0)
        for k, (p, d) in enumerate(zip(positions, data)):
            if len(d):
                ax.plot(p + rng.uniform(-0.12, 0.12, len(d)), d, "o", color=f"C{k % 10}", alpha=0.8, ms=6)
        ax.set_xticks(positions)
        ax.set_xticklabels([f"{m}\n(n={len(d)})" for m, d in zip(names, data)])
        ax.set_xlim(0.4, len(names) + 0.6)
        ax.margins(y=0.15)
    else:
        ax.text(0.5, 0.5, "no finished trial yet", ha="center", va="center", transform=ax.transAxes)
        ax.set_xticks([])
    ax.set_ylabel(ylabel)
    _title(ax, title)
    ax.grid(axis="y", alpha=0.3)
    _save(fig, path)
