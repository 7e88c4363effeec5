"""Run as a script: `layers.replica_sum` under MirroredStrategy on 2 logical CPUs
against the public `ReplicaContext.all_reduce` and a NumPy sum; the batch
norm's running statistics (one per replica, equal) and the checkpoint's
finiteness check (`runs.FiniteWeights`) on the replicas' copies. Prints one
JSON line. Logical devices must be configured before TensorFlow starts,
hence a separate process (tests/test_supernet.py runs it)."""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

from dprime_tf.spaces.layers import batch_moments, replica_sum  # noqa: E402

SUM = tf.distribute.ReduceOp.SUM


MERGES = []  # one entry per merge_call (a hand-off between the replicas' tracing threads)
_merge_call = tf.distribute.ReplicaContext.merge_call


def _counted_merge_call(self, *args, **kwargs):
    MERGES.append(1)
    return _merge_call(self, *args, **kwargs)


tf.distribute.ReplicaContext.merge_call = _counted_merge_call


def main():
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    rng = np.random.default_rng(0)
    # per replica: a scalar, a vector, a matrix; and a batch for batch_moments
    values = [[rng.normal(size=s).astype(np.float32) for s in ((), (3,), (2, 4))] for _ in range(2)]
    batch = rng.normal(loc=3.0, size=(2, 5, 4)).astype(np.float32)

    def replica_fn():
        ctx = tf.distribute.get_replica_context()
        r = ctx.replica_id_in_sync_group
        xs = [tf.gather(tf.constant(np.stack([values[0][i], values[1][i]])), r) for i in range(3)]
        x = tf.gather(tf.constant(batch), r)
        before = len(MERGES)
        with tf.GradientTape() as tape:
            tape.watch(xs)
            ours = replica_sum(xs)
            loss = tf.add_n([tf.reduce_sum(o * (k + 1.0)) for k, o in enumerate(ours)])
        grads = tape.gradient(loss, xs)
        mean, var, count = batch_moments(x, [0])
        # symbolic differentiation (tf.gradients, as for a tf.cond branch) through the global mean:
        # both replicas' sum_c w_c mean_c: each x gets 2 w_c / global count (the all-sum convention)
        symbolic, = tf.gradients(tf.reduce_sum(mean * tf.range(1.0, 5.0)), x)
        merges["ours"] += len(MERGES) - before
        before = len(MERGES)
        public = ctx.all_reduce(SUM, xs)
        # a dynamic leading dimension: the public path
        dynamic = tf.reshape(xs[2], [-1, tf.shape(xs[2])[-1]])
        dynamic.set_shape([None, 4])
        fallback, = replica_sum([dynamic])
        merges["public"] += len(MERGES) - before
        return ours, grads, public, fallback, mean, var, count, symbolic

    merges = {"ours": 0, "public": 0}
    step = tf.function(lambda: strategy.run(replica_fn))
    ours, grads, public, fallback, mean, var, count, symbolic = step()
    local = lambda v: [t.numpy() for t in strategy.experimental_local_results(v)]  # noqa: E731
    graph = step.get_concrete_function().graph.as_graph_def()
    ops = [n.op for n in graph.node] + [n.op for f in graph.library.function for n in f.node_def]
    expected = [values[0][i] + values[1][i] for i in range(3)]
    out = {
        "sum_diff": max(float(np.abs(r - expected[i]).max()) for i in range(3) for r in local(ours[i])),
        "public_diff": max(float(np.abs(a - b).max()) for i in range(3) for a, b in zip(local(ours[i]), local(public[i]))),
        # d/dx_r of sum_k (k+1) * sum(all_sum(x_k)) = (k+1) summed over both replicas = 2 (k+1)
        "grad_diff": max(float(np.abs(g - 2.0 * (i + 1)).max()) for i in range(3) for g in local(grads[i])),
        "fallback_diff": max(float(np.abs(f - expected[2]).max()) for f in local(fallback)),
        "mean_diff": max(float(np.abs(m - batch.reshape(10, 4).mean(0)).max()) for m in local(mean)),
        "var_diff": max(float(np.abs(v - batch.reshape(10, 4).var(0)).max()) for v in local(var)),
        "count": [float(c) for c in local(count)],
        "symbolic_diff": max(float(np.abs(g - 2 * np.arange(1.0, 5.0) / 10).max()) for g in local(symbolic)),
        "shapes": [list(t.shape) for t in strategy.experimental_local_results(ours[0]) + strategy.experimental_local_results(ours[2])],
        "collectives": ops.count("CollectiveReduceV2"),
        "merge_calls": merges,
        **running_statistics(strategy, rng),
    }
    print(json.dumps(out))


def running_statistics(strategy, rng):
    """A training-mode batch norm on two replicas' different batches: both copies of its running
    statistics take the global batch's (PyTorch's momentum 0.1, unbiased variance), a cross-replica
    read is the first copy, and FiniteWeights finds an inf in the second copy only."""
    import keras

    from dprime_tf.runs import FiniteWeights
    from dprime_tf.spaces.layers import StatefulLayer

    class Norm(StatefulLayer):
        def build(self, shape):
            self.stats = self.add_bn("bn", (shape[-1],))

        def call(self, x, training=False):
            return self.batch_norm(x, self.stats, training)

    batch = rng.normal(loc=2.0, size=(2, 6, 3)).astype(np.float32)
    with strategy.scope():
        model = keras.Sequential([keras.Input((3,)), Norm()])
    tf.function(lambda: strategy.run(lambda: model(tf.gather(tf.constant(batch), tf.distribute.get_replica_context()
                                                              .replica_id_in_sync_group), training=True)))()
    flat = batch.reshape(12, 3)
    expected = {"mean": 0.1 * flat.mean(0), "var": 0.9 + 0.1 * flat.var(0, ddof=1)}
    stats_diff = max(float(np.abs(c.numpy() - expected[k]).max()) for k in ("mean", "var")
                     for c in strategy.experimental_local_results(model.layers[0].stats[k].value))
    finite = FiniteWeights(model)
    before = finite.non_finite()
    moving_var = model.layers[0].stats["var"]
    copies = strategy.experimental_local_results(moving_var.value)
    copies[1].assign(copies[1] + 1.0)  # the copies differ: a read is the first one's
    read_is_first_copy = bool(np.array_equal(moving_var.numpy(), copies[0].numpy()))
    copies[1].assign(tf.fill([3], float("inf")))
    return {"stats_diff": stats_diff, "read_is_first_copy": read_is_first_copy,
            "non_finite": [before, finite.non_finite(), moving_var.path]}


if __name__ == "__main__":
    main()
