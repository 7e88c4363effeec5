"""The decisiveness measure (dprime_tf/decisiveness.py) against hand computations."""

import numpy as np
import pytest

from dprime_tf.decisiveness import advice, decisiveness, edge_margins, op_margins


def test_margins_exclude_none_and_compare_winner_with_runner_up():
    w = np.array([[0.9, 0.05, 0.03, 0.02],    # none wins overall; among the ops 0.05 - 0.03
                  [0.1, 0.2, 0.6, 0.1]])       # 0.6 - 0.2
    margin, winner = op_margins(w, none_index=0)
    np.testing.assert_allclose(margin, [0.02, 0.4])
    assert winner.tolist() == [0, 1]  # op positions after dropping `none`


def test_ratio_changed_share_and_verdicts():
    init = {"normal": np.array([[0.0, 0.26, 0.25, 0.49 - 0.0], [0.0, 0.5, 0.3, 0.2]]),
            "reduce": np.array([[0.0, 0.3, 0.32, 0.38], [0.0, 0.2, 0.41, 0.39]])}
    # initial margins: 0.23, 0.2, 0.06, 0.02 -> median 0.13
    now = {"normal": np.array([[0.0, 0.9, 0.05, 0.05], [0.0, 0.05, 0.9, 0.05]]),
           "reduce": np.array([[0.0, 0.05, 0.05, 0.9], [0.0, 0.05, 0.9, 0.05]])}
    result = decisiveness(now, init, num_inputs=2, keep=2)  # one node of two inputs: no edge choice
    assert "edge_margin_ratio" not in result
    assert result["initial_median_margin"] == pytest.approx(0.13)
    assert result["median_margin"] == pytest.approx(0.85)
    assert result["margin_ratio"] == pytest.approx(0.85 / 0.13)
    # winners: normal 2 (3rd op) -> 0, 0 -> 1; reduce 2 -> 2, 1 -> 1: two of four changed
    assert result["choices_changed"] == 0.5
    assert result["verdict"] == "weakly settled"
    assert "raise --epochs or --arch_learning_rate" in advice(result)
    assert decisiveness(init, init)["verdict"] == "within initialisation noise"
    sharp = {k: np.where(v == v.max(-1, keepdims=True), 0.99, 0.001) for k, v in now.items()}
    near_uniform = {k: np.array([[0.0, 0.34, 0.33, 0.33]] * 2) for k in now}  # margins 0.01
    assert decisiveness(sharp, init)["margin_ratio"] == pytest.approx(0.989 / 0.13)  # < 10: weakly settled
    decided = decisiveness(sharp, near_uniform)
    assert decided["margin_ratio"] == pytest.approx(98.9)
    assert decided["verdict"] == "decided by the search" and "raise" not in advice(decided)


def test_edge_margins_follow_the_genotype_rule():
    # 2 inputs, keep 2: node 0 has edges 0-1 (nothing dropped), node 1 edges 2-4.
    w = np.array([[0.0, 0.5, 0.5], [0.0, 0.5, 0.5],
                  [0.9, 0.1, 0.0],      # strength 0.1 (none excluded)
                  [0.0, 0.3, 0.7],      # 0.7
                  [0.0, 0.6, 0.4]])     # 0.6: kept 0.7, 0.6; dropped 0.1
    np.testing.assert_allclose(edge_margins(w, num_inputs=2, keep=2), [0.5])
    # recurrent rule (1 input, keep 1): node 0 has one edge, node 1 two
    r = np.array([[0.0, 1.0], [0.0, 0.2], [0.0, 0.35]])
    np.testing.assert_allclose(edge_margins(r, num_inputs=1, keep=1), [0.15])
    # the verdict follows the weaker of the op and the edge ratios
    init = {"normal": np.array([[0.0, 0.5, 0.5]] * 2 + [[0.0, 0.34, 0.33], [0.0, 0.33, 0.34], [0.0, 0.335, 0.33]])}
    sharp_ops_tied_edges = {"normal": np.array([[0.0, 0.99, 0.01]] * 5)}
    result = decisiveness(sharp_ops_tied_edges, init, num_inputs=2, keep=2)
    assert result["edge_margin_ratio"] == 0.0 and result["verdict"] == "within initialisation noise"
