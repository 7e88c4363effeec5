"""PNG plots of a search: alpha weights over time, the schedule timeline,
and diagrams of the discovered cells. Written atomically."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from dprime_tf.runs import atomic_write  # noqa: E402


def _save(fig, path):
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    atomic_write(path, buf.getvalue())


def edge_labels(num_inputs=2, steps=4):
    return [f"{('c_{k-2}', 'c_{k-1}')[j] if j < num_inputs else f'n{j - num_inputs}'} -> n{i}"
            for i in range(steps) for j in range(num_inputs + i)]


def plot_alpha_history(path, history: np.ndarray, primitives, title: str, x=None):
    """history: (T, edges, ops) softmax weights; one panel per edge, one line per op."""
    t, edges, ops = history.shape
    x = np.arange(t) if x is None else x
    cols = 5
    rows = -(-edges // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.3 * rows), sharex=True, sharey=True, squeeze=False)
    labels = edge_labels() if edges == 14 else [f"edge {e}" for e in range(edges)]
    for e in range(rows * cols):
        ax = axes[e // cols][e % cols]
        if e >= edges:
            ax.axis("off")
            continue
        for o in range(ops):
            ax.plot(x, history[:, e, o], label=primitives[o], lw=1.2)
        ax.set_title(labels[e], fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0][0].legend(fontsize=6, loc="upper left")
    fig.suptitle(title)
    fig.supxlabel("epoch")
    fig.supylabel("softmax(alpha)")
    _save(fig, path)


def plot_schedule(path, history: dict):
    """FI, its EWMA and the threshold tau per step, with the alpha steps marked."""
    step = history["step"]
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(10, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax1.plot(step, history["fi"], lw=0.6, alpha=0.5, label="FI (trace of empirical Fisher)")
    ax1.plot(step, history["fi_ewma"], lw=1.2, label="FI EWMA")
    ax1.plot(step, history["tau"], lw=1.2, label="threshold tau")
    ax1.set_yscale("log")
    ax1.legend(fontsize=8)
    ax1.set_ylabel("gradient information")
    taken = step[history["alpha_step"] > 0]
    ax2.vlines(taken, 0, 1, lw=0.8, color="C3")
    ax2.set_yticks([])
    ax2.set_ylabel("alpha steps")
    ax2.set_xlabel("step")
    rate = float(np.mean(history["alpha_step"])) if len(step) else 0.0
    ax1.set_title(f"{len(taken)} alpha steps in {len(step)} steps ({rate:.3f} per step)")
    _save(fig, path)


def plot_cell(path, gene, concat, title: str):
    """A cell diagram: inputs, 4 intermediate nodes, output, edges labelled with ops."""
    pos = {0: (0.0, 1.0), 1: (0.0, -1.0)}
    steps = len(gene) // 2
    for i in range(steps):
        pos[2 + i] = (1.5 + 1.6 * i, 1.2 if i % 2 == 0 else -1.2)
    out = (1.5 + 1.6 * steps, 0.0)
    fig, ax = plt.subplots(figsize=(2.2 + 1.7 * steps, 4))
    names = {0: "c_{k-2}", 1: "c_{k-1}", **{2 + i: str(i) for i in range(steps)}}
    for k, (op, src) in enumerate(gene):
        dst = 2 + k // 2
        (x0, y0), (x1, y1) = pos[src], pos[dst]
        ax.annotate("", xy=(x1, y1), xytext=(x0, y0),
                    arrowprops=dict(arrowstyle="->", color="0.3", shrinkA=14, shrinkB=14,
                                    connectionstyle=f"arc3,rad={0.15 if k % 2 else -0.15}"))
        ax.text((x0 + x1) / 2, (y0 + y1) / 2 + (0.12 if k % 2 else -0.12), op, fontsize=7,
                ha="center", va="center", color="C0")
    for node in concat:
        (x0, y0) = pos[node]
        ax.annotate("", xy=out, xytext=(x0, y0), arrowprops=dict(arrowstyle="->", color="0.7",
                                                                 shrinkA=14, shrinkB=14))
    for node, (x, y) in pos.items():
        ax.text(x, y, names[node], ha="center", va="center", fontsize=9,
                bbox=dict(boxstyle="round", fc="lightgreen" if node < 2 else "lightblue"))
    ax.text(*out, "c_{k}", ha="center", va="center", fontsize=9, bbox=dict(boxstyle="round", fc="khaki"))
    ax.set_xlim(-0.7, out[0] + 0.7)
    ax.set_ylim(-1.8, 1.8)
    ax.axis("off")
    ax.set_title(title)
    _save(fig, path)


def plot_recurrent_cell(path, genotype, title: str):
    """A recurrent cell diagram: x_t and h_{t-1} -> s0, one labelled edge into each node, mean -> h_t."""
    steps = len(genotype.recurrent)
    xs = {0: 0.0, **{i: 1.4 * i for i in range(1, steps + 1)}}
    fig, ax = plt.subplots(figsize=(2.0 + 1.2 * steps, 3.6))
    for k, (op, src) in enumerate(genotype.recurrent):
        dst = k + 1
        rad = -0.5 if dst - src > 1 else 0.0
        ax.annotate("", xy=(xs[dst], 0), xytext=(xs[src], 0),
                    arrowprops=dict(arrowstyle="->", color="0.3", shrinkA=12, shrinkB=12,
                                    connectionstyle=f"arc3,rad={rad}"))
        height = 0.35 * (dst - src) + 0.02 if rad else 0.1  # the arc's apex: rad * length / 2
        ax.text((xs[src] + xs[dst]) / 2, height, op, fontsize=7, ha="center", va="bottom", color="C0")
    out = (xs[steps] / 2, -1.3)
    for node in genotype.concat:
        ax.annotate("", xy=out, xytext=(xs[node], 0), arrowprops=dict(arrowstyle="->", color="0.75",
                                                                     shrinkA=12, shrinkB=12))
    ax.annotate("", xy=(xs[0], 0), xytext=(-1.3, 0.5), arrowprops=dict(arrowstyle="->", color="0.5", shrinkB=12))
    ax.annotate("", xy=(xs[0], 0), xytext=(-1.3, -0.5), arrowprops=dict(arrowstyle="->", color="0.5", shrinkB=12))
    ax.text(-1.4, 0.5, "x_t", ha="right", va="center", fontsize=9, bbox=dict(boxstyle="round", fc="lightgreen"))
    ax.text(-1.4, -0.5, "h_{t-1}", ha="right", va="center", fontsize=9, bbox=dict(boxstyle="round", fc="lightgreen"))
    for node, x in xs.items():
        ax.text(x, 0, "s0" if node == 0 else str(node), ha="center", va="center", fontsize=9,
                bbox=dict(boxstyle="round", fc="lightblue"))
    ax.text(*out, "h_t (mean)", ha="center", va="center", fontsize=9, bbox=dict(boxstyle="round", fc="khaki"))
    ax.set_xlim(-2.3, xs[steps] + 0.7)
    ax.set_ylim(-1.7, 0.5 + 0.35 * max(d - s for d, (_, s) in enumerate(genotype.recurrent, 1)))
    ax.axis("off")
    ax.set_title(title)
    _save(fig, path)
