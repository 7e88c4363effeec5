"""The DARTS CNN primitives as plain Keras layers, for final (evaluation) networks.

Unlike the search supernet (dprime_tf.spaces.cnn.supernet), every op here is an
ordinary stack of built-in layers (Conv2D, DepthwiseConv2D, affine
batch norm, ZeroPadding2D, pooling), so the networks export cleanly
to SavedModel / ONNX and follow a `keras.mixed_precision` policy. Custom
layers exist only where no built-in one does: `Subsample`,
`FactorizedReduce`, `DropPath`, and `BatchNorm` (PyTorch's running variance).

Padding follows the reference (symmetric k//2, times the dilation). TF's
'SAME' is symmetric only at stride 1 for odd kernels, so strided ops either
pad explicitly and use 'valid', or run at stride 1 and subsample:
- stride-2 pools: stride-1 'SAME' pool, then x[:, ::2, ::2]. PyTorch's
  window for output i is centred on input 2i, so this is exact, including
  count_include_pad=False for the average (TF's 'SAME' average ignores pads).
- stride-2 dilated depthwise convs (TF rejects stride 2 with dilation 2):
  output i reads input 2i + 2j - 2(k//2) = 2(i + j - k//2), so it is the
  undilated stride-1 'SAME' conv, with the same kernel, of x[:, ::2, ::2].
Convolutions have no bias and start from PyTorch's default initialization.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from dprime_tf.spaces.layers import torch_default_init

BN_MOMENTUM = 0.9  # Keras convention; PyTorch's momentum 0.1
BN_EPSILON = 1e-5

# name -> (kernel, dilation, separable)
CONV_OPS = {
    "sep_conv_3x3": (3, 1, True),
    "sep_conv_5x5": (5, 1, True),
    "dil_conv_3x3": (3, 2, False),
    "dil_conv_5x5": (5, 2, False),
}
POOL_OPS = {"max_pool_3x3": keras.layers.MaxPooling2D, "avg_pool_3x3": keras.layers.AveragePooling2D}
OPS = tuple(POOL_OPS) + ("skip_connect",) + tuple(CONV_OPS)


def torch_kernel_init():
    """PyTorch's default for conv and linear kernels, U(+-1/sqrt(fan_in)).

    A new instance per layer: a Keras initializer object reused across
    layers draws the same values for every layer.
    """
    return keras.initializers.VarianceScaling(scale=1.0 / 3.0, mode="fan_in", distribution="uniform")


@keras.saving.register_keras_serializable("dprime_tf")
class BatchNorm(keras.layers.BatchNormalization):
    """Keras' affine batch norm, except that in training the moving variance
    tracks the unbiased batch variance (times n/(n-1)), as PyTorch's does.

    Normalization itself uses the biased variance in both libraries; only the
    running statistic, and so every inference-mode output (evaluation, the
    exported SavedModel and ONNX files), differs. Keras' own layer makes
    running variances n/(n-1) too small, which matters on small feature maps
    and small per-replica batches. Inference is Keras' code path unchanged.
    """

    def call(self, inputs, training=None, mask=None):
        if not (training and self.trainable) or mask is not None or self.renorm:
            return super().call(inputs, training=training, mask=mask)
        x = tf.cast(inputs, tf.float32) if inputs.dtype in (tf.float16, tf.bfloat16) else inputs
        mean, variance = self._moments(x, None)
        count = tf.cast(tf.reduce_prod(tf.gather(tf.shape(x), self._reduction_axes)), x.dtype)
        unbiased = variance * count / tf.maximum(count - 1.0, 1.0)
        m = self.momentum
        self.moving_mean.assign(tf.cast(self.moving_mean, x.dtype) * m + mean * (1.0 - m))
        self.moving_variance.assign(tf.cast(self.moving_variance, x.dtype) * m + unbiased * (1.0 - m))
        gamma = tf.cast(self.gamma, x.dtype) if self.scale else None
        beta = tf.cast(self.beta, x.dtype) if self.center else None
        out = keras.ops.batch_normalization(x, mean, variance, axis=self.axis, offset=beta, scale=gamma,
                                            epsilon=self.epsilon)
        return tf.cast(out, self.compute_dtype)


def batch_norm(name=None):
    return BatchNorm(momentum=BN_MOMENTUM, epsilon=BN_EPSILON, name=name)


def conv2d(filters, kernel_size, strides=1, padding="valid", name=None):
    return keras.layers.Conv2D(filters, kernel_size, strides=strides, padding=padding, use_bias=False,
                               kernel_initializer=torch_kernel_init(), name=name)


def depthwise_conv2d(kernel_size, strides=1, padding="same", dilation_rate=1, name=None):
    # Keras' fan_in for a (k, k, C, 1) depthwise kernel would be C*k*k; PyTorch's is k*k.
    return keras.layers.DepthwiseConv2D(kernel_size, strides=strides, padding=padding,
                                        dilation_rate=dilation_rate, use_bias=False,
                                        depthwise_initializer=torch_default_init(kernel_size * kernel_size),
                                        name=name)


@keras.saving.register_keras_serializable("dprime_tf")
class Subsample(keras.layers.Layer):
    """x[:, ::2, ::2, :]: the even rows and columns (NHWC)."""

    def call(self, x):
        return x[:, ::2, ::2, :]

    def compute_output_shape(self, input_shape):
        b, h, w, c = input_shape
        return (b, None if h is None else (h + 1) // 2, None if w is None else (w + 1) // 2, c)


@keras.saving.register_keras_serializable("dprime_tf")
class FactorizedReduce(keras.layers.Layer):
    """ReLU, two 1x1 stride-2 convs (C/2 channels each; the second on the input
    shifted by one pixel, x[:, 1:, 1:]), concatenated, then affine BN.

    Halves an even height and width; skip_connect on stride-2 edges and the
    preprocessing of a cell that follows a reduction cell.
    """

    def __init__(self, channels, **kwargs):
        super().__init__(**kwargs)
        if channels % 2:
            raise ValueError(f"FactorizedReduce needs an even channel count, got {channels}")
        self.channels = int(channels)
        self.relu = keras.layers.ReLU(name="relu")
        self.conv_1 = conv2d(self.channels // 2, 1, strides=2, name="conv_1")
        self.conv_2 = conv2d(self.channels // 2, 1, strides=2, name="conv_2")
        self.bn = batch_norm(name="bn")

    def build(self, input_shape):
        self.conv_1.build(input_shape)
        self.conv_2.build(input_shape)
        self.bn.build(self.compute_output_shape(input_shape))

    def call(self, x, training=None):
        for axis in (1, 2):
            if x.shape[axis] is not None and x.shape[axis] % 2:
                raise ValueError(f"FactorizedReduce needs an even height and width, got shape {tuple(x.shape)}")
        x = self.relu(x)
        out = tf.concat([self.conv_1(x), self.conv_2(x[:, 1:, 1:, :])], axis=-1)
        return self.bn(out, training=training)

    def compute_output_shape(self, input_shape):
        b, h, w, _ = input_shape
        return (b, None if h is None else h // 2, None if w is None else w // 2, self.channels)

    def get_config(self):
        return {**super().get_config(), "channels": self.channels}


@keras.saving.register_keras_serializable("dprime_tf")
class DropPath(keras.layers.Layer):
    """DARTS's drop-path: in training, zero each sample's whole op output with
    probability `rate` and scale the kept ones by 1/(1 - rate); the identity
    in inference. `rate` is a call argument (a scalar tensor or variable), so
    the trainer can change it between epochs without retracing.
    """

    def call(self, x, rate, training=None):
        if not training:
            return x
        keep = 1.0 - tf.cast(rate, tf.float32)
        batch = tf.shape(x)[0]
        # floor(keep + U[0, 1)) is 1 with probability keep (and always 1 at rate 0).
        mask = tf.floor(keep + tf.random.uniform([batch, 1, 1, 1], dtype=tf.float32))
        return x * tf.cast(tf.math.divide_no_nan(mask, keep), x.dtype)

    def compute_output_shape(self, input_shape, rate_shape=None):
        return input_shape


def relu_conv_bn(channels, name=None):
    """ReLU, 1x1 conv, BN: the cell's input preprocessing."""
    return keras.Sequential([keras.layers.ReLU(), conv2d(channels, 1), batch_norm()], name=name)


def make_op(op, channels, stride, name=None):
    """The final-network layer for primitive `op` on `channels` channels (kept)."""
    if stride not in (1, 2):
        raise ValueError(f"stride must be 1 or 2, got {stride}")
    if op == "skip_connect":
        return keras.layers.Identity(name=name) if stride == 1 else FactorizedReduce(channels, name=name)
    if op in POOL_OPS:
        layers = [POOL_OPS[op](3, strides=1, padding="same")]
        if stride == 2:
            layers.append(Subsample())
        return keras.Sequential(layers, name=name)
    if op not in CONV_OPS:
        raise ValueError(f"unknown op '{op}' (use one of: {', '.join(OPS)})")
    k, dilation, separable = CONV_OPS[op]
    if stride == 1:
        first = [depthwise_conv2d(k, dilation_rate=dilation)]
    elif dilation == 1:
        first = [keras.layers.ZeroPadding2D(k // 2), depthwise_conv2d(k, strides=2, padding="valid")]
    else:
        first = [Subsample(), depthwise_conv2d(k)]  # see the module docstring
    layers = [keras.layers.ReLU(), *first, conv2d(channels, 1), batch_norm()]
    if separable:
        layers += [keras.layers.ReLU(), depthwise_conv2d(k), conv2d(channels, 1), batch_norm()]
    return keras.Sequential(layers, name=name)
