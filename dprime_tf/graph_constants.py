"""Constants shared by the ops of one traced graph (see shared_constant)."""

from __future__ import annotations

import threading
import weakref

import numpy as np
import tensorflow as tf

# Per graph: {(thread, device scope, dtype, shape, value bytes): the constant's op name}.
# Names, not tensors: a tensor refers to its graph, and would keep every traced graph alive.
_SHARED_CONSTANTS = weakref.WeakKeyDictionary()


def shared_constant(value, dtype):
    """tf.constant(value, dtype), made once per graph being traced, per thread and
    device scope, and reused: the supernets' hundreds of batch norms each asked for
    the same handful (reduction axes, element counts, zeros, the momentum), ~15 of
    a BN's ~45 graph nodes, and the optimizers two per weight, each node costing
    tracing and graph-optimizer time.

    The same values, so the same results. A constant is per thread and device
    scope because MirroredStrategy traces each replica in its own thread under
    its own device; inside a control-dependency or colocation scope (whose ops
    wait for or sit next to others) a constant is made as usual."""
    if tf.executing_eagerly():
        return tf.constant(value, dtype)
    graph = tf.compat.v1.get_default_graph()
    if graph._control_dependencies_stack or graph._colocation_stack:
        return tf.constant(value, dtype)
    array = np.asarray(value, dtype=tf.as_dtype(dtype).as_numpy_dtype)
    devices = tuple(spec.display_name for spec in graph._device_function_stack.peek_objs())
    key = (threading.get_ident(), devices, array.dtype.str, array.shape, array.tobytes())
    names = _SHARED_CONSTANTS.setdefault(graph, {})
    name = names.get(key)
    if name is not None:
        return graph.get_operation_by_name(name).outputs[0]
    constant = tf.constant(array, dtype)
    names[key] = constant.op.name
    return constant
