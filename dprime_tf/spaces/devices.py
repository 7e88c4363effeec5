"""Which kernels an op gets where it runs: a GPU's (cuDNN) or a CPU's, with
or without oneDNN. Some ops take a different path by device (see their
callers)."""

from __future__ import annotations

import tensorflow as tf


def runs_on_gpu(device: str = "") -> bool:
    """Whether an op on `device` (a tensor's or op's device, "" if unplaced)
    runs on a GPU: one is named, or none is and a GPU is visible (the placer
    then puts ops that have GPU kernels there)."""
    if "GPU" in device.upper():
        return True
    return not device and bool(tf.config.list_logical_devices("GPU"))


def onednn_enabled() -> bool:
    """Whether TensorFlow hands CPU ops to oneDNN (off with
    TF_ENABLE_ONEDNN_OPTS=0, which --deterministic sets)."""
    try:
        from tensorflow.python.util import _pywrap_util_port
        return bool(_pywrap_util_port.IsMklEnabled())
    except (ImportError, AttributeError):  # a TensorFlow build without the query: the safe path
        return False
