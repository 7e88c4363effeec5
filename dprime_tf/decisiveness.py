"""How far the search, not the random initial alphas, decided a genotype.

A genotype keeps, per edge, the op with the largest mixing weight. Right after
initialisation (alpha = 1e-3 * N(0, 1)) every edge already has a winner, by
noise; a short search can leave the weights there. The measure compares, over
every edge of every cell, the margin between the winning op's weight and the
runner-up's (softmax weights, `none` excluded as the genotype rule excludes
it) with the same margin of the initial alphas:

    margin_ratio = median(margin now) / median(margin at initialisation)

and counts the share of edges whose winner changed since initialisation.
A ratio below NOISE_RATIO means the genotype is within initialisation noise;
from DECIDED_RATIO on the search decided it.
"""

from __future__ import annotations

import numpy as np

NOISE_RATIO = 3.0
DECIDED_RATIO = 10.0


def op_margins(weights, none_index: int = 0):
    """(margin, winner) per edge of a (edges, ops) weight matrix, `none` excluded."""
    w = np.delete(np.asarray(weights, np.float64), none_index, axis=-1)
    order = np.sort(w, axis=-1)
    return order[:, -1] - order[:, -2], np.argmax(w, axis=-1)


def decisiveness(weights: dict, initial_weights: dict, none_index: int = 0) -> dict:
    """The measure (see the module docstring) of mixing weights {kind: (edges, ops)}
    against the same at initialisation."""
    now = [op_margins(weights[k], none_index) for k in sorted(weights)]
    init = [op_margins(initial_weights[k], none_index) for k in sorted(weights)]
    margin = float(np.median(np.concatenate([m for m, _ in now])))
    initial = float(np.median(np.concatenate([m for m, _ in init])))
    changed = float(np.mean(np.concatenate([a != b for (_, a), (_, b) in zip(now, init)])))
    ratio = margin / initial if initial > 0 else float("inf")
    return {"margin_ratio": ratio, "median_margin": margin, "initial_median_margin": initial,
            "choices_changed": changed, "verdict": verdict(ratio)}


def verdict(ratio: float) -> str:
    if ratio < NOISE_RATIO:
        return "within initialisation noise"
    if ratio < DECIDED_RATIO:
        return "weakly settled"
    return "decided by the search"


def advice(result: dict) -> str:
    """One plain sentence for the end of a search."""
    text = (f"genotype {result['verdict']}: the winning ops lead their runners-up by "
            f"{result['margin_ratio']:.1f}x the initial alphas' margin; "
            f"{100 * result['choices_changed']:.0f}% of the edges changed their op since initialisation")
    if result["margin_ratio"] < DECIDED_RATIO:
        text += " (raise --epochs or --arch_learning_rate for a search that decides it)"
    return text
