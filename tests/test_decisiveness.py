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


# -- the measure on real searches (issue: decided by the search or by initial noise) ----------
def _quick_flags(**overrides):
    """configs/quick.flags as a SearchConfig (its flags are plain --name=value lines)."""
    import dataclasses
    import os

    from dprime_tf.search_job import SearchConfig
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "quick.flags")
    fields = {f.name for f in dataclasses.fields(SearchConfig)}
    values = {}
    for line in open(path):
        if line.startswith("--"):
            name, _, value = line[2:].strip().partition("=")
            assert name in fields, name
            for kind in (int, float, str):
                try:
                    values[name] = kind(value)
                    break
                except ValueError:
                    pass
    return SearchConfig(**{**values, **overrides})


@pytest.mark.slow
def test_quick_settings_decide_the_genotype_and_a_frozen_alpha_does_not(tmp_path):
    from dprime_tf.search_job import run_search
    # quick.flags as shipped, stopped after 2 of its 4 epochs (the schedules still span 4):
    # its first alpha steps come in epoch 2 (tau must first grow to FI's EWMA)
    quick = _quick_flags(output_dir=str(tmp_path / "quick"), until_epoch=2, verbose=0)
    assert quick.arch_learning_rate == 1e-2 and quick.epochs == 4
    summary = run_search(quick)
    assert summary["alpha_steps"] >= 2
    measure = summary["decisiveness"]
    assert measure["verdict"] == "decided by the search", measure
    assert min(measure["margin_ratio"], measure["edge_margin_ratio"]) >= 10
    # a search whose alphas are frozen (alpha lr 0) keeps the initial winners, however many alpha
    # steps it takes (here one after every weight step, on a tiny network): undecided
    frozen = run_search(_quick_flags(output_dir=str(tmp_path / "frozen"), until_epoch=0, epochs=1,
                                     steps_per_epoch=12, schedule="fixed", schedfreq=1, image_size=16, layers=3,
                                     init_channels=4, val_steps=1, verbose=0, arch_learning_rate=0.0))
    assert frozen["alpha_steps"] == 12
    assert frozen["decisiveness"]["verdict"] == "within initialisation noise"
    assert frozen["decisiveness"]["margin_ratio"] == pytest.approx(1.0, abs=1e-3)
    assert frozen["decisiveness"]["choices_changed"] == 0.0
