"""The PRIME math against hand computations from SPEC sections 2-5."""

import math

import numpy as np
import pytest
import tensorflow as tf

from dprime_tf import prime


def random_weights(seed, edges=14, ops=8):
    return prime.softmax(np.random.default_rng(seed).normal(size=(edges, ops)))


def test_select_edges_hand_example():
    # node 0 has edges from inputs 0, 1; node 1 from 0, 1, 2 (rows 2..4).
    w = np.full((5, 3), 0.1)
    w[0] = [0.9, 0.05, 0.05]  # 'none' dominates but is ignored: strength 0.05
    w[1] = [0.1, 0.3, 0.6]
    w[2] = [0.1, 0.7, 0.2]
    w[3] = [0.1, 0.2, 0.1]
    w[4] = [0.0, 0.5, 0.5]   # tie between ops: first (op 1) wins
    sel = prime.select_edges(w, num_inputs=2, keep=2, none_index=0)
    assert sel == [[(1, 2), (0, 1)], [(0, 1), (2, 1)]]


def test_select_edges_ties_prefer_lower_input():
    w = np.zeros((5, 3))
    w[:, 1] = 0.5
    assert prime.select_edges(w)[1] == [(0, 1), (1, 1)]


@pytest.mark.parametrize("seed", range(5))
def test_discretize_matches_select_edges(seed):
    w = random_weights(seed)
    z = prime.discretize(tf.constant(w, tf.float32)).numpy()
    expected = np.zeros_like(w)
    row = 0
    for i, node in enumerate(prime.select_edges(w)):
        for inp, op in node:
            expected[row + inp, op] = 1
        row += 2 + i
    np.testing.assert_array_equal(z, expected)
    assert z.sum() == 8 and z[:, 0].sum() == 0


def test_discretize_recurrent_rule_one_predecessor():
    w = random_weights(3, edges=36, ops=5)  # 8 nodes, 1 input
    z = prime.discretize(tf.constant(w, tf.float32), num_inputs=1, keep=1).numpy()
    assert z.sum() == 8
    sel = prime.select_edges(w, num_inputs=1, keep=1)
    assert [len(node) for node in sel] == [1] * 8


def test_proximity_penalty_formula_and_gradient():
    alpha = tf.constant(np.random.default_rng(0).normal(size=(14, 8)), tf.float32)
    p = tf.nn.softmax(alpha).numpy()
    z = prime.discretize(tf.constant(p)).numpy()
    expected = 0.3 * 0.1 / 2 * np.sqrt(((p - z) ** 2).sum())
    with tf.GradientTape() as tape:
        tape.watch(alpha)
        value = prime.proximity_penalty(alpha, 0.3, rho=0.1)
    np.testing.assert_allclose(value.numpy(), expected, rtol=1e-5)
    # z is a constant: the gradient is that of 0.015 * ||softmax(a) - z|| with z fixed.
    g = tape.gradient(value, alpha).numpy()
    zc = tf.constant(z)
    with tf.GradientTape() as tape2:
        tape2.watch(alpha)
        ref = 0.3 * 0.05 * tf.norm(tf.nn.softmax(alpha) - zc)
    np.testing.assert_allclose(g, tape2.gradient(ref, alpha).numpy(), rtol=1e-4, atol=1e-7)


def test_proximity_penalty_is_zero_at_start():
    alpha = tf.random.normal((14, 8))
    assert float(prime.proximity_penalty(alpha, 0.0)) == 0.0


def test_admm_penalty_and_update():
    rng = np.random.default_rng(1)
    alpha = rng.normal(size=(14, 8)).astype(np.float32)
    u = rng.normal(size=(14, 8)).astype(np.float32) * 0.1
    z = alpha.copy()
    p = prime.softmax(alpha.astype(np.float64))
    expected = 0.1 / 2 * np.sqrt(((p - z + u) ** 2).sum())
    np.testing.assert_allclose(prime.admm_penalty(alpha, z, u, 0.1).numpy(), expected, rtol=1e-5)
    new_z, new_u = prime.admm_update(tf.constant(alpha), tf.constant(u), 0.2)
    z_ref = prime.discretize(tf.nn.softmax(alpha + u)).numpy()
    np.testing.assert_array_equal(new_z.numpy(), z_ref)
    np.testing.assert_allclose(new_u.numpy(), 0.2 * u + alpha - z_ref, rtol=1e-6)


def test_fixed_schedule():
    s = prime.FixedSchedule(schedfreq=3)
    taken = [bool(s.decide(step, 0.0, 1.0)[0]) for step in range(9)]
    assert taken == [False, False, True] * 3
    assert all(bool(prime.FixedSchedule(1).decide(step, 0.0, 1.0)[0]) for step in range(4))


def test_fixed_schedule_counts_steps_within_the_epoch():
    """The official loop's `step` restarts every epoch: with 5 steps per epoch and
    schedfreq 3 the alpha steps are at global steps 2, 7, 12 (not 2, 5, 8, 11)."""
    s = prime.FixedSchedule(schedfreq=3)
    taken = [k for k in range(15) if bool(s.decide(k % 5, 0.0, 1.0)[0])]
    assert taken == [2, 7, 12]


def test_dynamic_schedule_hand_trace():
    s = prime.DynamicSchedule(schedfreq=10, m=1.05, beta=0.2)
    # Unset EWMA: no alpha step, tau grows by m.
    take, tau = s.decide(0, 0.0, 1.0)
    assert not bool(take) and math.isclose(float(tau), 1.05, rel_tol=1e-6)
    # The first two FIs each set the EWMA (the official aliasing); later ones blend with beta.
    ewma = float(s.observe(2.0, 0.0, observed=0))
    assert ewma == 2.0
    ewma = float(s.observe(5.0, ewma, observed=1))
    assert ewma == 5.0
    assert math.isclose(float(s.observe(1.0, ewma, observed=2)), 0.2 * 1.0 + 0.8 * 5.0, rel_tol=1e-6)
    # EWMA below tau: alpha step and tau shrinks by m^-10.
    take, tau = s.decide(5, 1.5, 2.0)
    assert bool(take) and math.isclose(float(tau), 2.0 * 1.05 ** -10, rel_tol=1e-5)
    take, tau = s.decide(6, 2.5, 2.0)
    assert not bool(take) and math.isclose(float(tau), 2.1, rel_tol=1e-6)


def test_dynamic_schedule_rate_with_constant_fi():
    # With a steady FI, tau oscillates around it: one alpha step per schedfreq + 1 steps.
    s = prime.DynamicSchedule(schedfreq=10)
    ewma, tau, steps = 0.0, 1.0, 0
    for step in range(2200):
        take, tau = s.decide(step, ewma, tau)
        steps += int(take)
        ewma = s.observe(3.0, ewma, step)
    assert abs(steps / 2200 - 1 / 11) < 0.01


def test_weight_portion():
    assert prime.weight_portion("half") == 0.5
    assert math.isclose(prime.weight_portion("dynamic", 10), 10 / 11)
    with pytest.raises(ValueError):
        prime.weight_portion("thirds")


def test_fisher_trace():
    grads = [tf.constant([1.0, -2.0]), None, tf.constant([[3.0]])]
    assert float(prime.fisher_trace(grads)) == 14.0


def test_epoch_cosine_lr_matches_pytorch_formula():
    """The official scripts step CosineAnnealingLR at the top of each epoch, so epoch e
    trains at cosine(e + 1): 4 epochs give 0.02149, 0.0130, 0.00451, 0.001."""
    for step, expect in ((0, 0.0214852814), (9, 0.0214852814), (10, 0.013), (25, 0.0045147186), (39, 0.001)):
        lr = float(prime.epoch_cosine_lr(step, 10, 4, 0.025, 0.001))
        assert math.isclose(lr, expect, rel_tol=1e-6), (step, lr)
    # by the formula: lr_min + (lr_max - lr_min) (1 + cos(pi (e + 1) / E)) / 2
    for step, epoch in ((0, 0), (10, 1), (25, 2)):
        ref = 0.001 + (0.025 - 0.001) * (1 + math.cos(math.pi * (epoch + 1) / 4)) / 2
        assert math.isclose(float(prime.epoch_cosine_lr(step, 10, 4, 0.025, 0.001)), ref, rel_tol=1e-6)


def test_progress_ticks_before_the_step():
    """t = (k + 1) / steps_per_epoch epochs at step k: 0.1, 0.2, ... for 10 steps per epoch."""
    assert [round(float(prime.progress(k, 10, 4)) * 4, 6) for k in (0, 1, 9, 39)] == [0.1, 0.2, 1.0, 4.0]


def test_admm_due_every_freq_minus_one_alpha_steps():
    """The official rule after each weight step: (alpha_counter + 1) % admm_freq == 0, then reset.
    With admm_freq 10 and an alpha step every other weight step, Z/U move after alpha steps 9, 18."""
    counter, updates, alpha_steps = 0, [], 0
    for k in range(40):
        took = k % 2 == 1
        alpha_steps += took
        due, counter = prime.admm_due(counter + int(took), 10)
        if bool(due):
            updates.append(alpha_steps)
        counter = int(counter)
    assert updates == [9, 18]
    assert prime.ZU_EWMA == 1.0  # the script never passes zu_ewma: U = U + (alpha - Z)


def test_init_alpha_threshold_sets_when_the_first_alpha_step_comes():
    """tau starts at --init_alpha_threshold and grows by m per step until FI's EWMA is below it:
    with a steady FI of 3 the first alpha step is at the first k with tau_0 * 1.05^k > 3."""
    def first_alpha_step(tau):
        s = prime.DynamicSchedule(schedfreq=10, m=1.05)
        ewma = 0.0
        for step in range(200):
            take, tau = s.decide(step, ewma, tau)
            if bool(take):
                return step
            ewma = s.observe(3.0, ewma, step)

    assert first_alpha_step(1.0) == math.ceil(math.log(3.0) / math.log(1.05)) == 23
    assert first_alpha_step(2.0) == math.ceil(math.log(1.5) / math.log(1.05)) == 9
    assert first_alpha_step(4.0) == 1  # EWMA (3) is unset at step 0, below tau at step 1


def test_fi_ewma_beta_defaults_per_space():
    """The official CNN search smooths FI with beta 0.2; its recurrent search passes 1.0 (raw FI)."""
    from dprime_tf import spaces
    from dprime_tf.search_job import SearchConfig
    cnn = spaces.get("cnn").resolve_search_config(SearchConfig(dataset="sample", fi_ewma_beta=None))
    rnn = spaces.get("rnn").resolve_search_config(SearchConfig(dataset="ptb_sample", fi_ewma_beta=None))
    assert (cnn.fi_ewma_beta, rnn.fi_ewma_beta) == (0.2, 1.0)
    assert spaces.get("rnn").resolve_search_config(SearchConfig(dataset="ptb_sample", fi_ewma_beta=0.5)).fi_ewma_beta == 0.5
