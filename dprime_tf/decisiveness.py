"""How far the search, not the random initial alphas, decided a genotype.

A genotype keeps, per edge, the op with the largest mixing weight. Right after
initialisation (alpha = 1e-3 * N(0, 1)) every edge already has a winner, by
noise; a short search can leave the weights there. The measure compares, over
every edge of every cell, the margin between the winning op's weight and the
runner-up's (softmax weights, `none` excluded as the genotype rule excludes
it) with the same margin of the initial alphas:

    margin_ratio = median(margin now) / median(margin at initialisation)

and counts the share of edges whose winner changed since initialisation.
The same is measured for the edge choice: per node, the margin between the
weakest kept incoming edge and the strongest dropped one (an edge's strength
is its best non-`none` weight, as in the genotype rule). The verdict follows
the smaller of the two ratios: below NOISE_RATIO the genotype is within
initialisation noise; from DECIDED_RATIO on the search decided it.
"""

from __future__ import annotations

import numpy as np

NOISE_RATIO = 3.0
DECIDED_RATIO = 10.0
# The numbers a search adds to each epoch's logs (epochs.json, TensorBoard, the report's epoch table).
LOGGED = ("margin_ratio", "edge_margin_ratio", "choices_changed")


def op_margins(weights, none_index: int = 0):
    """(margin, winner) per edge of a (edges, ops) weight matrix, `none` excluded."""
    w = np.delete(np.asarray(weights, np.float64), none_index, axis=-1)
    order = np.sort(w, axis=-1)
    return order[:, -1] - order[:, -2], np.argmax(w, axis=-1)


def edge_margins(weights, num_inputs: int = 2, keep: int = 2, none_index: int = 0):
    """Per node with more incoming edges than it keeps: the weakest kept edge's strength
    minus the strongest dropped edge's (edges in the genotype rule's order)."""
    w = np.delete(np.asarray(weights, np.float64), none_index, axis=-1).max(axis=-1)
    margins, start, node = [], 0, 0
    while start < len(w):
        incoming = np.sort(w[start:start + num_inputs + node])[::-1]
        if len(incoming) > keep:
            margins.append(incoming[keep - 1] - incoming[keep])
        start += num_inputs + node
        node += 1
    return np.array(margins)


def _ratio(now, initial):
    return now / initial if initial > 0 else float("inf")


def decisiveness(weights: dict, initial_weights: dict, none_index: int = 0, num_inputs: int = 2,
                 keep: int = 2) -> dict:
    """The measure (see the module docstring) of mixing weights {kind: (edges, ops)}
    against the same at initialisation; num_inputs/keep as the space's genotype rule."""
    kinds = sorted(weights)
    now = [op_margins(weights[k], none_index) for k in kinds]
    init = [op_margins(initial_weights[k], none_index) for k in kinds]
    margin = float(np.median(np.concatenate([m for m, _ in now])))
    initial = float(np.median(np.concatenate([m for m, _ in init])))
    changed = float(np.mean(np.concatenate([a != b for (_, a), (_, b) in zip(now, init)])))
    result = {"margin_ratio": _ratio(margin, initial), "median_margin": margin, "initial_median_margin": initial,
              "choices_changed": changed}
    edges_now = np.concatenate([edge_margins(weights[k], num_inputs, keep, none_index) for k in kinds])
    if len(edges_now):
        edges_init = np.concatenate([edge_margins(initial_weights[k], num_inputs, keep, none_index)
                                     for k in kinds])
        result["edge_margin_ratio"] = _ratio(float(np.median(edges_now)), float(np.median(edges_init)))
    result["verdict"] = verdict(min(result["margin_ratio"], result.get("edge_margin_ratio", float("inf"))))
    return result


def describe(measure: dict) -> str:
    """The measure in a few words for the epoch line: both ratios, the share changed, the verdict."""
    edges = measure.get("edge_margin_ratio")
    return (f"margin ops {measure['margin_ratio']:.1f}x" + (f", edges {edges:.1f}x" if edges is not None else "")
            + f" initial, {100 * measure['choices_changed']:.0f}% ops changed ({measure['verdict']})")


def verdict(ratio: float) -> str:
    if ratio < NOISE_RATIO:
        return "within initialisation noise"
    if ratio < DECIDED_RATIO:
        return "weakly settled"
    return "decided by the search"


def advice(result: dict) -> str:
    """One plain sentence for the end of a search."""
    edges = (f", the kept edges lead the dropped ones by {result['edge_margin_ratio']:.1f}x"
             if "edge_margin_ratio" in result else "")
    text = (f"genotype {result['verdict']}: the winning ops lead their runners-up by "
            f"{result['margin_ratio']:.1f}x the initial alphas' margin{edges}; "
            f"{100 * result['choices_changed']:.0f}% of the edges changed their op since initialisation")
    if result["verdict"] != verdict(DECIDED_RATIO):
        text += " (raise --epochs or --arch_learning_rate for a search that decides it)"
    return text
