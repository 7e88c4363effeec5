"""Choosing the tf.distribute strategy from a flag."""

from __future__ import annotations

import tensorflow as tf

from dprime_tf.errors import UserError

STRATEGIES = ("auto", "default", "mirrored", "multi_worker")


def make_strategy(name: str, cpu_devices: int = 0) -> tf.distribute.Strategy:
    """auto: MirroredStrategy when several GPUs are visible, else the default (one device).

    `cpu_devices` > 1 splits the CPU into that many logical devices (to run
    the multi-replica code path on a CPU-only machine; must be called before
    TensorFlow initializes its devices).
    """
    if name == "multi_worker":
        # Must exist before any other op ("collective ops must be configured at program startup").
        return tf.distribute.MultiWorkerMirroredStrategy()
    if cpu_devices > 1:
        cpus = tf.config.list_physical_devices("CPU")
        try:
            tf.config.set_logical_device_configuration(
                cpus[0], [tf.config.LogicalDeviceConfiguration()] * cpu_devices)
        except RuntimeError as e:
            raise UserError(f"--cpu_devices must be set before TensorFlow starts: {e}") from None
    gpus = tf.config.list_logical_devices("GPU")
    if name == "mirrored" or (name == "auto" and len(gpus) > 1):
        devices = [d.name for d in gpus] or [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices)
    if name in ("auto", "default"):
        return tf.distribute.get_strategy()
    raise UserError(f"unknown --strategy '{name}' (use one of {', '.join(STRATEGIES)})")


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not getattr(resolver, "task_type", None):
        return True
    return resolver.task_type == "chief" or (resolver.task_type == "worker" and resolver.task_id == 0
                                            and "chief" not in resolver.cluster_spec().as_dict())
