"""Building blocks shared by the search supernets: batch norm with the
reference's semantics (and synchronized across replicas), and weight
initializers matching PyTorch's defaults."""

from __future__ import annotations

import math

import keras
import tensorflow as tf

BN_EPS = 1e-5
BN_MOMENTUM = 0.1  # PyTorch convention: running = (1 - m) * running + m * batch


def torch_default_init(fan_in: int):
    """PyTorch's default conv/linear init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(max(fan_in, 1))
    return keras.initializers.RandomUniform(-bound, bound)


def batch_moments(x, axes):
    """Mean, biased variance and element count per channel over `axes`.

    Under tf.distribute with several replicas the statistics are those of the
    global batch (an all-reduce of sum, sum of squares and count), so a
    distributed step computes exactly what one device computes on the same
    global batch.
    """
    ctx = tf.distribute.get_replica_context()
    local_count = tf.cast(tf.reduce_prod(tf.gather(tf.shape(x), axes)), x.dtype)
    if ctx is None or ctx.num_replicas_in_sync == 1:
        mean, var = tf.nn.moments(x, axes)
        return mean, var, local_count
    s = tf.reduce_sum(x, axes)
    ss = tf.reduce_sum(tf.square(x), axes)
    s, ss, count = ctx.all_reduce(tf.distribute.ReduceOp.SUM, [s, ss, local_count])
    mean = s / count
    return mean, tf.maximum(ss / count - tf.square(mean), 0.0), count


class StatefulLayer(keras.layers.Layer):
    """A layer that owns batch-norm running statistics, created in build()."""

    def add_bn(self, name, shape, affine=False):
        stats = {
            "mean": self.add_weight(shape=shape, initializer="zeros", trainable=False,
                                    name=f"{name}_moving_mean", aggregation="mean"),
            "var": self.add_weight(shape=shape, initializer="ones", trainable=False,
                                   name=f"{name}_moving_var", aggregation="mean"),
        }
        if affine:
            stats["gamma"] = self.add_weight(shape=shape, initializer="ones", name=f"{name}_gamma")
            stats["beta"] = self.add_weight(shape=shape, initializer="zeros", name=f"{name}_beta")
        return stats

    @staticmethod
    def batch_norm(x, stats, training):
        """BN over all axes but the trailing channel axes of `stats` (PyTorch semantics:
        normalize with the biased batch variance, track the unbiased one)."""
        channel_rank = len(stats["mean"].shape)
        axes = list(range(len(x.shape) - channel_rank))
        if training:
            mean, var, count = batch_moments(x, axes)
            unbiased = var * count / tf.maximum(count - 1.0, 1.0)
            stats["mean"].assign((1.0 - BN_MOMENTUM) * stats["mean"] + BN_MOMENTUM * mean)
            stats["var"].assign((1.0 - BN_MOMENTUM) * stats["var"] + BN_MOMENTUM * unbiased)
        else:
            mean, var = stats["mean"].value, stats["var"].value
        inv = tf.math.rsqrt(var + BN_EPS)
        if "gamma" in stats:
            inv = inv * stats["gamma"]
        y = (x - mean) * inv
        if "beta" in stats:
            y = y + stats["beta"]
        return y
