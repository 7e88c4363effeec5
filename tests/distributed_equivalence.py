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
        search = BilevelSearch(net, steps_per_epoch=4, epochs=2, schedule=schedule, schedfreq=1,
                               regularizer=reg, learning_rate=0.1, arch_learning_rate=0.05)
    return net, search


def state(net, search):
    return [v.numpy() for v in net.weights] + [search.fi_ewma.numpy(), search.tau.numpy(),
                                               search.alpha_steps.numpy(), search.search_step.numpy()]


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
    diffs = [float(np.max(np.abs(a - b))) for a, b in zip(state(net1, s1), state(net2, s2))]
    names = [v.path for v in net1.weights] + ["fi_ewma", "tau", "alpha_steps", "search_step"]
    worst = sorted(zip(diffs, names), reverse=True)[:5]
    out["worst"] = [[n, d] for d, n in worst]
    moved = float(max(np.abs(a.numpy() - b).max() for a, b in zip(net1.alphas, [net2.alphas[0].numpy(), net2.alphas[1].numpy()])))
    out.update(max_diff=max(diffs), alpha_diff=moved,
               alpha_moved=float(np.abs(net1.alpha_normal.numpy()).max()))
    print(json.dumps(out))


if __name__ == "__main__":
    main(*sys.argv[1:3], int(sys.argv[3]) if len(sys.argv) > 3 else 2)
