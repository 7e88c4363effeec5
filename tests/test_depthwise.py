"""spaces/depthwise.py: the depthwise conv whose filter gradient takes
TensorFlow's own CPU kernel for non-3x3 filters."""

import numpy as np
import pytest
import tensorflow as tf

from dprime_tf.spaces import depthwise
from dprime_tf.spaces.devices import onednn_enabled, runs_on_gpu


def test_explicit_paddings_are_tensorflows_same_and_valid():
    # SAME: out = ceil(in / s), total = (out - 1) s + k - in, the smaller half first.
    assert depthwise.explicit_paddings((8, 32, 32, 4), (5, 5, 4, 1), [1, 1, 1, 1], "SAME") == [0, 0, 2, 2, 2, 2, 0, 0]
    # 32 at stride 2, k=5: out 16, total 15*2 + 5 - 32 = 3 -> 1 before, 2 after
    assert depthwise.explicit_paddings((8, 32, 31, 4), (5, 3, 4, 1), [1, 2, 2, 1], "SAME") == [0, 0, 1, 2, 1, 1, 0, 0]
    assert depthwise.explicit_paddings((8, 32, 32, 4), (5, 5, 4, 1), [1, 2, 2, 1], "VALID") == [0] * 8
    assert depthwise.explicit_paddings((8, None, 32, 4), (5, 5, 4, 1), [1, 1, 1, 1], "SAME") is None


CASES = [  # (input shape, kernel size, stride, padding, dilation)
    ((3, 9, 8, 4), 5, 1, "SAME", 1),
    ((3, 12, 12, 4), 5, 2, "VALID", 1),
    ((3, 10, 9, 4), 5, 2, "SAME", 1),
    ((3, 9, 8, 4), 3, 1, "SAME", 1),
    ((3, 8, 8, 4), 5, 1, "SAME", 2),
]


@pytest.mark.parametrize("shape,k,stride,padding,dilation", CASES)
def test_gradients_are_tensorflows_and_the_float64_truth(shape, k, stride, padding, dilation):
    """Output and both gradients (tape, eager and traced, and tf.gradients) equal TensorFlow's
    depthwise conv's, and the float64 computation's."""
    rng = np.random.default_rng(k * 10 + stride)
    x64 = rng.standard_normal(shape)
    k64 = rng.standard_normal((k, k, shape[-1], 1))
    strides = [1, stride, stride, 1]
    out_shape = tf.nn.depthwise_conv2d(tf.constant(x64), tf.constant(k64), strides, padding,
                                       dilations=[dilation] * 2).shape
    w64 = rng.standard_normal(out_shape)

    def tf_grads(dtype, ours, symbolic=False):
        x, kernel, w = (tf.constant(a, dtype) for a in (x64, k64, w64))
        if symbolic:
            loss = tf.reduce_sum(depthwise.depthwise_conv2d(x, kernel, stride, padding, dilation) * w)
            return [loss, *tf.gradients(loss, [x, kernel])]
        with tf.GradientTape() as tape:
            tape.watch([x, kernel])
            z = (depthwise.depthwise_conv2d(x, kernel, stride, padding, dilation) if ours else
                 tf.nn.depthwise_conv2d(x, kernel, strides, padding, dilations=[dilation] * 2))
            loss = tf.reduce_sum(z * w)
        return [loss, *tape.gradient(loss, [x, kernel])]

    truth = [t.numpy() for t in tf_grads(tf.float64, False)]
    theirs = [t.numpy() for t in tf_grads(tf.float32, False)]
    runs = (lambda: tf_grads(tf.float32, True), tf.function(lambda: tf_grads(tf.float32, True), autograph=False),
            tf.function(lambda: tf_grads(tf.float32, True, symbolic=True), autograph=False))
    for run in runs:
        got = [t.numpy() for t in run()]
        for a, b, c in zip(got, theirs, truth):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4)
            np.testing.assert_allclose(a, c, rtol=1e-5, atol=1e-4)


def _filter_gradient_paddings(k, stride, padding, dilation=1):
    shape = (2, 8, 8, 4)

    def step(x, kernel):
        with tf.GradientTape() as tape:
            tape.watch(kernel)
            loss = tf.reduce_sum(depthwise.depthwise_conv2d(x, kernel, stride, padding, dilation))
        return tape.gradient(loss, kernel)
    graph = tf.function(step, autograph=False).get_concrete_function(
        tf.TensorSpec(shape, tf.float32), tf.TensorSpec((k, k, 4, 1), tf.float32)).graph
    return [op.get_attr("padding").decode() for op in graph.get_operations()
            if op.type == "DepthwiseConv2dNativeBackpropFilter"]


@pytest.mark.skipif(runs_on_gpu() or not onednn_enabled(), reason="the rerouted path is for CPUs with oneDNN")
def test_only_non_3x3_filters_take_the_explicit_padding_kernel(monkeypatch):
    assert _filter_gradient_paddings(5, 1, "SAME") == ["EXPLICIT"]
    assert _filter_gradient_paddings(5, 2, "VALID") == ["EXPLICIT"]
    assert _filter_gradient_paddings(3, 1, "SAME") == ["SAME"]
    assert _filter_gradient_paddings(5, 1, "SAME", dilation=2) != ["EXPLICIT"]
    monkeypatch.setattr(depthwise, "EXPLICIT_FILTER_GRADIENT", False)
    assert _filter_gradient_paddings(5, 1, "SAME") == ["SAME"]
