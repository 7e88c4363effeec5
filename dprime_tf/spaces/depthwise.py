"""Depthwise convolutions whose filter gradient takes TensorFlow's faster CPU
kernel.

On CPUs TensorFlow hands depthwise convs and their gradients to oneDNN.
oneDNN has a dedicated depthwise kernel for the filter gradient of 3x3
filters only; any other size (the search space's 5x5 ops) falls to its
generic grouped-conv kernel, which blocks 16 input by 16 output channels
per group of one: 7-8x the 3x3 time, against ~2.8x the arithmetic. The same
op with padding "EXPLICIT" is not handed to oneDNN (its rewrite skips it)
and runs TensorFlow's own kernel: at the paper's search sizes measured
2-3x faster for 5x5 filters (64x32x32x64, stride 1: 9.0 -> 4.7 ms;
stride 2: 3.9 -> 1.6 ms), and slower for 3x3 (1.2 -> 2.2 ms). So
`depthwise_conv2d` computes the filter gradient of a non-3x3 float32 filter
on a CPU with the same padding spelled out; elsewhere (GPUs, CPUs without
oneDNN, 3x3 filters, 16-bit types, dilations) it is TensorFlow's own
gradient. The forward and the input gradient are always TensorFlow's
(oneDNN's are fast for 5x5).
"""

from __future__ import annotations

import tensorflow as tf
from tensorflow.python.eager import record as _record

from dprime_tf.spaces.devices import onednn_enabled, runs_on_gpu

# False: always TensorFlow's own filter gradient (tests and benchmarks compare).
EXPLICIT_FILTER_GRADIENT = True


def explicit_paddings(input_shape, kernel_shape, strides, padding):
    """`padding` ("SAME" or "VALID") as the 8 explicit NHWC paddings
    TensorFlow's conv ops take, or None when the shapes are not static."""
    if padding == "VALID":
        return [0] * 8
    pads = [0, 0]
    for size, k, s in zip(input_shape[1:3], kernel_shape[:2], strides[1:3]):
        if size is None:
            return None
        total = max((-(-size // s) - 1) * s + k - size, 0)  # TensorFlow's SAME
        pads += [total // 2, total - total // 2]
    return pads + [0, 0]


def _explicit(x, kernel_shape, dilation) -> bool:
    """Whether the filter gradient is computed with explicit paddings (see the module)."""
    return (EXPLICIT_FILTER_GRADIENT and dilation == 1 and x.dtype == tf.float32
            and tuple(kernel_shape[:2]) != (3, 3) and not runs_on_gpu(x.device) and onednn_enabled())


def filter_gradient(x, kernel_shape, dz, strides, padding):
    """The gradient of depthwise_conv2d(x, kernel, strides, padding) with
    respect to the kernel, given dz (the gradient of its output)."""
    kernel_shape = list(kernel_shape)
    pads = explicit_paddings(x.shape, kernel_shape, strides, padding) if _explicit(x, kernel_shape, 1) else None
    if pads is None:
        return tf.raw_ops.DepthwiseConv2dNativeBackpropFilter(
            input=x, filter_sizes=kernel_shape, out_backprop=dz, strides=strides, padding=padding)
    return tf.raw_ops.DepthwiseConv2dNativeBackpropFilter(
        input=x, filter_sizes=kernel_shape, out_backprop=dz, strides=strides, padding="EXPLICIT",
        explicit_paddings=pads)


def depthwise_conv2d(x, kernel, stride=1, padding="SAME", dilation=1):
    """tf.nn.depthwise_conv2d(x, kernel, [1, s, s, 1], padding, dilations=[d, d])
    (NHWC), with the filter gradient of `filter_gradient`: one tape record
    whose gradient is TensorFlow's input gradient and that filter gradient.
    Differentiated symbolically (tf.gradients), it is the op's registered
    gradient."""
    strides = [1, stride, stride, 1]
    if not _explicit(x, kernel.shape, dilation):
        return tf.nn.depthwise_conv2d(x, kernel, strides, padding, dilations=[dilation, dilation])
    k = tf.convert_to_tensor(kernel)  # read on the tape: the kernel's gradient reaches the variable
    with _record.stop_recording():
        z = tf.nn.depthwise_conv2d(x, k, strides, padding)

    def grad(dz):
        dx = tf.raw_ops.DepthwiseConv2dNativeBackpropInput(
            input_sizes=tf.shape(x), filter=k, out_backprop=dz, strides=strides, padding=padding)
        return [dx, filter_gradient(x, k.shape, dz, strides, padding)]

    _record.record_operation("DepthwiseConv2d", [z], [x, k], grad)
    return z
