"""Float32 accuracy of the search weight step, measured against the truth (issue 17).

The truth is the same single step (supernet_step.npz's weights, batch, alphas,
clip and SGD) computed by the official code in float64:
supernet_step_float64_update.npz, `u:<name>` = the update of every weight.
Per weight tensor, the error of an update is max|ours - truth| / max|truth|;
the official code's own float32 step scores a median 1.6e-4 (worst tensor
1.8%), ours did 1.6e-3 (3.8%) before the supernets' batch norm summed its
statistics level by level (dprime_tf.spaces.layers.precise_batch_norm).
The update file is DPRIME_REFERENCE_F64_NPZ when set, else the one beside the
single-step golden (DPRIME_REFERENCE_NPZ, else tests/data/supernet_step.npz).
"""

import os

import numpy as np
import pytest
import tensorflow as tf

from reference_weights import load_reference, nhwc, reference_path, reference_targets
from dprime_tf.searcher import BilevelSearch
from dprime_tf.spaces.cnn.supernet import SearchNetwork
from dprime_tf.spaces.layers import channel_sum, precise_batch_norm

F64_NAME = "supernet_step_float64_update.npz"


def onednn_enabled():
    try:
        from tensorflow.python.util import _pywrap_util_port
        return bool(_pywrap_util_port.IsMklEnabled())
    except (ImportError, AttributeError):
        return os.environ.get("TF_ENABLE_ONEDNN_OPTS", "1") != "0"


# Measured (BUILD.md, "Float32 accuracy of the search step"): median 9.6e-5, worst 0.33%
# with oneDNN's kernels (TensorFlow's default on x86); 5.3e-4, worst 0.61% without them
# (TF_ENABLE_ONEDNN_OPTS=0), where the 4e-4 is not reached (see BUILD.md).
MEDIAN_MAX, WORST_MAX = (4e-4, 0.025) if onednn_enabled() else (7e-4, 0.025)


def float64_update_path():
    """DPRIME_REFERENCE_F64_NPZ when set, else the float64 update beside the
    single-step golden (DPRIME_REFERENCE_NPZ, else the shipped
    tests/data/supernet_step.npz), which holds the weights it starts from."""
    path = os.environ.get("DPRIME_REFERENCE_F64_NPZ") or os.path.join(os.path.dirname(reference_path()), F64_NAME)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"float64 golden update {path} is missing (set DPRIME_REFERENCE_F64_NPZ)")
    return path


def relative_errors(update_of, truth):
    """{name: max|update - truth| / max|truth|} over the truth's tensors."""
    return {name: float(np.abs(update_of(name) - u).max() / np.abs(u).max()) for name, u in truth.items()}


def summary(rel):
    values = np.array(list(rel.values()))
    worst = max(rel, key=rel.get)
    return float(np.median(values)), float(values.max()), worst


@pytest.mark.golden
def test_weight_step_float32_accuracy_against_official_float64_step():
    data = np.load(reference_path())
    f64 = np.load(float64_update_path())
    names = [k[2:] for k in f64.files if k.startswith("u:")]
    assert sorted(names) == sorted(k[2:] for k in data.files if k.startswith("p:")), "float64 file does not match"
    # The official float32 step against the truth: also proves that the two files belong together.
    truth = {n: f64["u:" + n].astype(np.float64) for n in names}
    official = relative_errors(lambda n: data["q:" + n].astype(np.float64) - data["p:" + n], truth)
    off_median, off_worst, _ = summary(official)
    assert off_median < 1e-3 and off_worst < 0.05, ("the float64 update is not of this golden step",
                                                     off_median, off_worst)

    net = SearchNetwork(16, 8, 10)
    load_reference(net, data)
    search = BilevelSearch(net, steps_per_epoch=10, epochs=50, regularizer="none", learning_rate_min=0.025)
    before = reference_targets(net, "p:", data)
    ours_truth = dict(zip(names, (t[2] for t in reference_targets(net, "u:", f64))))  # our layouts
    p_names = [k[2:] for k in data.files if k.startswith("p:")]
    updates = {}
    search._replica_weight_step((nhwc(data["x"]), data["y"].astype(np.int32)))  # eager: the step's code path
    for name, (var, idx, p) in zip(p_names, before):
        now = var.numpy() if idx is None else var.numpy()[idx]
        updates[name] = now.astype(np.float64) - p.astype(np.float64)
    ours = relative_errors(updates.__getitem__, {n: u.astype(np.float64) for n, u in ours_truth.items()})
    median, worst, worst_name = summary(ours)
    report = (f"ours: median {median:.2e}, worst {worst:.2e} ({worst_name}); "
              f"official float32: median {off_median:.2e}, worst {off_worst:.2e}")
    print(report)
    assert median <= MEDIAN_MAX and worst <= WORST_MAX, report


def test_precise_batch_norm_matches_float64():
    """Forward and gradient of the supernets' training-mode BN against float64 autodiff,
    on activations whose mean is large against their spread (after a ReLU)."""
    rng = np.random.default_rng(0)
    x = (np.abs(rng.standard_normal((16, 32, 32, 8))) * 0.3 + 4.0).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)

    def reference(t):
        mean = tf.reduce_mean(t, [0, 1, 2])
        var = tf.reduce_mean(tf.square(t - mean), [0, 1, 2])
        return (t - mean) * tf.math.rsqrt(var + 1e-5), mean, var

    x64 = tf.constant(x, tf.float64)
    with tf.GradientTape() as tape:
        tape.watch(x64)
        y64, mean64, var64 = reference(x64)
        loss = tf.reduce_sum(y64 * dy)
    g64 = tape.gradient(loss, x64).numpy()
    x32 = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x32)
        y, mean, var, count = precise_batch_norm(x32)
        loss = tf.reduce_sum(y * dy)
    g = tape.gradient(loss, x32).numpy()
    assert float(count) == 16 * 32 * 32
    np.testing.assert_allclose(mean.numpy(), mean64.numpy(), rtol=1e-6)
    np.testing.assert_allclose(var.numpy(), var64.numpy(), rtol=1e-4)
    assert np.abs(y.numpy() - y64.numpy()).max() < 1e-5
    assert np.abs(g - g64).max() / np.abs(g64).max() < 1e-5
    # Level-by-level sums against a float64 sum.
    np.testing.assert_allclose(channel_sum(x32).numpy(), x.astype(np.float64).sum((0, 1, 2)), rtol=1e-6)
