"""Run as a script: one search step on 2 logical CPU replicas vs one device.

Prints one JSON line with the largest differences. Logical devices must be
configured before TensorFlow starts, hence a separate process.
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

from dprime_tf.search_space.cnn import SearchNetwork  # noqa: E402
from dprime_tf.searcher import BilevelSearch  # noqa: E402


def make(strategy, schedule, reg):
    with strategy.scope():
        net = SearchNetwork(4, 3, 10, image_size=16)
        # m=4 and admm_freq=1: the dynamic schedule takes alpha steps within a few
        # steps, and every alpha step updates ADMM's Z and U.
        search = BilevelSearch(net, steps_per_epoch=4, epochs=2, schedule=schedule, schedfreq=1,
                               threshold_multiplier=4.0, admm_freq=1, regularizer=reg,
                               learning_rate=0.1, arch_learning_rate=0.05)
    return net, search


def state(search):
    """Everything the search owns: weights, BN statistics, alphas, schedule and ADMM state,
    and the optimizers' slots."""
    variables = search.weights + search.weight_optimizer.variables + search.alpha_optimizer.variables
    return {v.path: v.numpy() for v in variables}


def main(schedule="fixed", reg="prox", steps=2):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 16, 16, 3)).astype(np.float32)
    y = rng.integers(0, 10, 32).astype(np.int32)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(8, drop_remainder=True).repeat()
    alpha_ds = tf.data.Dataset.from_tensor_slices((x[::-1], y[::-1])).batch(8, drop_remainder=True).repeat()

    mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    net1, s1 = make(tf.distribute.get_strategy(), schedule, reg)
    net2, s2 = make(mirrored, schedule, reg)
    for a, b in zip(net1.weights, net2.weights):
        b.assign(a.numpy())
    out = {"replicas": mirrored.num_replicas_in_sync, "steps": steps}
    for search, strategy in ((s1, tf.distribute.get_strategy()), (s2, mirrored)):
        search.set_alpha_stream(alpha_ds)
        search.make_train_function()
        it = iter(strategy.experimental_distribute_dataset(ds))
        for _ in range(steps):
            logs = search.train_function(it)
        out.setdefault("alpha_steps", []).append(int(search.alpha_steps.numpy()))
        out.setdefault("loss", []).append(float(logs["batch_loss"]))
    a, b = state(s1), state(s2)
    assert a.keys() == b.keys() and len(a) > 100, (len(a), len(b))
    worst = sorted(((float(np.max(np.abs(a[k] - b[k]))), k) for k in a), reverse=True)[:5]
    diffs = [d for d, _ in worst]
    out["variables"] = len(a)
    out["worst"] = [[n, d] for d, n in worst]
    moved = float(max(np.abs(a.numpy() - b).max() for a, b in zip(net1.alphas, [net2.alphas[0].numpy(), net2.alphas[1].numpy()])))
    out.update(max_diff=max(diffs), alpha_diff=moved,
               alpha_moved=float(np.abs(net1.alpha_normal.numpy()).max()))
    print(json.dumps(out))


if __name__ == "__main__":
    main(*sys.argv[1:3], int(sys.argv[3]) if len(sys.argv) > 3 else 2)
