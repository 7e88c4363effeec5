"""Optimizers with the reference's (PyTorch) semantics, on Keras' fast path.

Keras' SGD/Adam `weight_decay` is decoupled (AdamW-style) and Keras' Adam
adds epsilon after the bias correction; the reference adds the L2 term to the
gradient and uses PyTorch's Adam. These subclasses reproduce the reference
update exactly:

    SGD:  g += wd * w;  v = momentum * v + g;  w -= lr * v
    Adam: g += wd * w;  m, v EWMAs;  w -= lr / bc1 * m / (sqrt(v) / sqrt(bc2) + eps)

Gradient clipping is not done here: the search step clips after it has
measured the gradient information (FI) of the unclipped gradients.

`gradients_are_reduced=True` tells the optimizer that the caller already
all-reduced the gradients across replicas (the search step does, once, so
that FI and the clipping see global gradients); Keras would otherwise reduce
them a second time.
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import ops

from dprime_tf import prime
from dprime_tf.graph_constants import shared_constant


class _CoupledDecayMixin:
    def _all_reduce_sum_gradients(self, grads_and_vars):
        if self.gradients_are_reduced:
            return grads_and_vars
        return super()._all_reduce_sum_gradients(grads_and_vars)


@keras.saving.register_keras_serializable("dprime_tf")
class CoupledSGD(_CoupledDecayMixin, keras.optimizers.Optimizer):
    """Momentum SGD with L2 added to the gradient (torch.optim.SGD)."""

    def __init__(self, learning_rate=0.025, momentum=0.9, l2=3e-4,
                 gradients_are_reduced=False, name="coupled_sgd", **kwargs):
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        self.momentum = float(momentum)
        self.l2 = float(l2)
        self.gradients_are_reduced = bool(gradients_are_reduced)

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self.momentums = self.add_optimizer_variables(variables, "momentum")

    def update_step(self, gradient, variable, learning_rate):
        lr = ops.cast(learning_rate, variable.dtype)
        g = ops.cast(gradient, variable.dtype)
        if self.l2:
            g = g + shared_constant(self.l2, variable.dtype) * variable
        v = self.momentums[self._get_variable_index(variable)]
        if isinstance(variable, tf.Variable) and isinstance(v.value, tf.Variable):
            # One fused kernel (accum = momentum * accum + g; var -= lr * accum):
            # exactly torch.optim.SGD's update, with ~5x fewer graph nodes.
            tf.raw_ops.ResourceApplyMomentum(var=variable.handle, accum=v.value.handle, lr=lr, grad=g,
                                             momentum=shared_constant(self.momentum, variable.dtype))
            return
        self.assign(v, self.momentum * v + g)
        self.assign_sub(variable, lr * v)

    def get_config(self):
        config = super().get_config()
        config.update(momentum=self.momentum, l2=self.l2,
                      gradients_are_reduced=self.gradients_are_reduced)
        return config


@keras.saving.register_keras_serializable("dprime_tf")
class CoupledAdam(_CoupledDecayMixin, keras.optimizers.Optimizer):
    """Adam with L2 added to the gradient (torch.optim.Adam's weight_decay)."""

    def __init__(self, learning_rate=3e-4, beta_1=0.5, beta_2=0.999, epsilon=1e-8, l2=1e-3,
                 gradients_are_reduced=False, name="coupled_adam", **kwargs):
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        self.beta_1, self.beta_2 = float(beta_1), float(beta_2)
        self.epsilon = float(epsilon)
        self.l2 = float(l2)
        self.gradients_are_reduced = bool(gradients_are_reduced)

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self.m = self.add_optimizer_variables(variables, "m")
        self.v = self.add_optimizer_variables(variables, "v")

    def update_step(self, gradient, variable, learning_rate):
        lr = ops.cast(learning_rate, variable.dtype)
        g = ops.cast(gradient, variable.dtype)
        if self.l2:
            g = g + self.l2 * variable
        t = ops.cast(self.iterations + 1, variable.dtype)
        bc1 = 1.0 - ops.power(ops.cast(self.beta_1, variable.dtype), t)
        bc2 = 1.0 - ops.power(ops.cast(self.beta_2, variable.dtype), t)
        i = self._get_variable_index(variable)
        m, v = self.m[i], self.v[i]
        self.assign(m, self.beta_1 * m + (1.0 - self.beta_1) * g)
        self.assign(v, self.beta_2 * v + (1.0 - self.beta_2) * ops.square(g))
        denom = ops.sqrt(v) / ops.sqrt(bc2) + self.epsilon
        self.assign_sub(variable, (lr / bc1) * m / denom)

    def get_config(self):
        config = super().get_config()
        config.update(beta_1=self.beta_1, beta_2=self.beta_2, epsilon=self.epsilon, l2=self.l2,
                      gradients_are_reduced=self.gradients_are_reduced)
        return config


@keras.saving.register_keras_serializable("dprime_tf")
class EpochCosineDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Cosine annealing from lr_max to lr_min, constant within an epoch (the reference's)."""

    def __init__(self, lr_max, lr_min, steps_per_epoch, epochs):
        self.lr_max, self.lr_min = float(lr_max), float(lr_min)
        self.steps_per_epoch, self.epochs = int(steps_per_epoch), int(epochs)

    def __call__(self, step):
        return prime.epoch_cosine_lr(step, self.steps_per_epoch, self.epochs, self.lr_max, self.lr_min)

    def get_config(self):
        return dict(lr_max=self.lr_max, lr_min=self.lr_min,
                    steps_per_epoch=self.steps_per_epoch, epochs=self.epochs)
