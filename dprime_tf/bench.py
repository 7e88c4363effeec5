"""python -m dprime_tf.bench: speed and memory of the search supernet's steps.

Times the weight step and the alpha step (median of --steps timed steps after
a warm-up) at the given size (default: the paper's search network, batch 64,
C=16, 8 cells, 32x32), and prints img/s, analytic FLOPs per image, the
fraction of this machine's measured matmul FLOP/s achieved, peak RSS, and
the time to the first step (tracing + graph optimization).

    python -m dprime_tf.bench                          # the paper's search size
    python -m dprime_tf.bench --profile_dir=/tmp/prof  # + where the weight step's time goes, per op kind
    python -m dprime_tf.bench --precision=bf16 --xla   # the GPU fast paths (slower on CPUs)

The official code's step is timed the same way by benchmarks/official_step.py
(in a PyTorch environment); README "Speed" has both.
"""

from __future__ import annotations

from dprime_tf.cli import quiet_tensorflow, run_main
from dprime_tf.errors import UserError

quiet_tensorflow()

import os  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

from absl import flags  # noqa: E402

from dprime_tf import fast_paths  # noqa: E402

flags.DEFINE_integer("batch_size", 64, "Batch size.")
flags.DEFINE_integer("init_channels", 16, "C.")
flags.DEFINE_integer("layers", 8, "Cells.")
flags.DEFINE_integer("image_size", 32, "Input size.")
flags.DEFINE_integer("steps", 5, "Timed steps per kind (after one warm-up).")
flags.DEFINE_string("profile_dir", None, "Also trace --profile_steps weight steps with the TF profiler into this "
                    "directory (TensorBoard's profile tab reads it) and print op time per op kind.")
flags.DEFINE_integer("profile_steps", 2, "Weight steps to profile.")
flags.DEFINE_enum("kinds", "both", ("both", "weight", "alpha"), "Which steps to time.")
flags.DEFINE_integer("replicas", 1, "Replicas of a MirroredStrategy (the batch is the global batch, split among "
                     "them): that many GPUs, or logical CPU devices where no GPU is visible (on a CPU this measures "
                     "the multi-replica first step's tracing and graph optimization; the replicas share its cores).",
                     lower_bound=1)
fast_paths.define_flags(flags)
fast_paths.define_recompute_flag(flags)
flags.adopt_module_key_flags(fast_paths)  # listed in --help with the command's own flags
FLAGS = flags.FLAGS


def forward_macs(net) -> int:
    """Multiply-adds of one image's forward pass, counted from the layer shapes."""
    from dprime_tf.spaces.cnn.supernet import CONV_OPS
    size = net.image_size
    macs = 27 * net.stem_channels * size * size
    for cell, (s0, s1) in zip(net.cells, net._cell_shapes):
        c = cell.channels
        h = s1[1]
        macs += s0[-1] * c * h * h + s1[-1] * c * h * h  # preprocess 1x1 convs (FR: two halves at h)
        for group in cell.edges:
            n, ho = group.n_edges, h // group.stride
            for name, (k, _, separable) in CONV_OPS.items():
                macs += (k * k * c + c * c) * n * ho * ho * (2 if separable else 1)
            if group.stride == 2:
                macs += c * c * n * ho * ho
    return macs + net.final_channels * net.num_classes


def matmul_flops_per_second(n=2048, reps=5) -> float:
    import tensorflow as tf
    a = tf.random.normal((n, n))
    f = tf.function(lambda: tf.matmul(a, a))
    f()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        f().numpy()
        times.append(time.perf_counter() - t)
    return 2 * n ** 3 / statistics.median(times)


def replica_strategy(replicas: int):
    """The default strategy for one replica; else MirroredStrategy over that many
    GPUs, or, where no GPU is visible, over as many logical CPU devices (as the
    search's --strategy=mirrored --cpu_devices=N)."""
    import tensorflow as tf

    from dprime_tf.distribute import make_strategy
    if replicas == 1:
        return tf.distribute.get_strategy()
    gpus = len(tf.config.list_physical_devices("GPU"))
    if gpus >= replicas:
        return tf.distribute.MirroredStrategy([f"/gpu:{i}" for i in range(replicas)])
    if gpus:
        raise UserError(f"--replicas={replicas}: only {gpus} GPU(s) visible")
    return make_strategy("mirrored", cpu_devices=replicas)


def _wait(strategy, outputs):
    """Blocks until a step's outputs (every replica's) exist."""
    import tensorflow as tf
    for value in strategy.experimental_local_results(outputs):
        tf.nest.map_structure(lambda x: x.numpy(), value)


def main(argv):
    import numpy as np
    import tensorflow as tf

    from dprime_tf.spaces.cnn.supernet import SearchNetwork
    from dprime_tf.searcher import BilevelSearch

    b, size = FLAGS.batch_size, FLAGS.image_size
    if b % FLAGS.replicas:
        raise UserError(f"--batch_size={b} does not split evenly among --replicas={FLAGS.replicas}")
    strategy = replica_strategy(FLAGS.replicas)
    grappler = fast_paths.configure_graph_optimizer()
    t0 = time.perf_counter()
    with fast_paths.policy(FLAGS.precision), strategy.scope():
        net = SearchNetwork(FLAGS.init_channels, FLAGS.layers, 10, image_size=size, recompute=FLAGS.recompute)
        search = BilevelSearch(net, steps_per_epoch=1000, epochs=50,
                               loss_scale=fast_paths.loss_scaling(FLAGS.precision), jit_compile=FLAGS.xla)
    build_s = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    images = rng.standard_normal((b, size, size, 3), dtype=np.float32)
    labels = rng.integers(0, 10, b, dtype=np.int32)
    share = b // FLAGS.replicas
    batch = strategy.experimental_distribute_values_from_function(  # each replica's slice of the global batch
        lambda ctx: tuple(tf.constant(a[ctx.replica_id_in_sync_group * share:][:share]) for a in (images, labels)))
    progress = tf.constant(0.5)
    weight_step = tf.function(lambda: strategy.run(search._weight_step_fn, args=(batch,)), autograph=False)
    alpha_step = tf.function(lambda: strategy.run(search._alpha_step_fn, args=(batch, progress)), autograph=False)
    kinds = [("weight step", weight_step), ("alpha step", alpha_step)]
    kinds = [k for k in kinds if FLAGS.kinds in ("both", k[0].split()[0])]
    results, starts = {}, {}
    for name, fn in kinds:
        t = time.perf_counter()
        fn.get_concrete_function()
        traced = time.perf_counter() - t
        cpu = os.times()
        _wait(strategy, fn())
        first = time.perf_counter() - t
        starts[name] = (traced, os.times().system - cpu.system)
        times = []
        for _ in range(FLAGS.steps):
            t = time.perf_counter()
            _wait(strategy, fn())
            times.append(time.perf_counter() - t)
        results[name] = (first, statistics.median(times), min(times), max(times))
    profile_lines = []
    if FLAGS.profile_dir and FLAGS.kinds != "alpha":
        from dprime_tf import op_profile
        trace = op_profile.profile(weight_step, FLAGS.profile_steps, FLAGS.profile_dir)
        profile_lines = [f"weight step profile ({trace}):",
                         *op_profile.report_lines(op_profile.op_times(trace), FLAGS.profile_steps)]
    macs = forward_macs(net)
    peak = matmul_flops_per_second()
    rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2
    print(f"supernet C={FLAGS.init_channels} L={FLAGS.layers} {size}x{size} batch {b}, precision {FLAGS.precision}"
          f"{', XLA' if FLAGS.xla else ''}{', recompute' if FLAGS.recompute else ''}"
          f"{f', {FLAGS.replicas} replicas' if FLAGS.replicas > 1 else ''}, Grappler {'on' if grappler else 'off'}: "
          f"{sum(int(np.prod(w.shape)) for w in net.trainable_weights):,} weights; built in {build_s:.1f} s")
    print(f"forward: {macs / 1e6:.1f} M multiply-adds per image ({2 * macs / 1e9:.3f} GFLOP); "
          f"a step (forward + backward) is about 3x that")
    print(f"machine: 2048x2048 fp32 matmul {peak / 1e9:.1f} GFLOP/s")
    for name, (first, med, lo, hi) in results.items():
        step_flops = 3 * 2 * macs * b
        print(f"{name:11s}: first step (trace + optimize + run) {first:6.1f} s | median {med:6.3f} s "
              f"[{lo:.3f}-{hi:.3f}] | {b / med:6.1f} img/s | {step_flops / med / 1e9:6.1f} GFLOP/s "
              f"= {step_flops / med / peak:5.1%} of matmul peak")
    for name, (traced, system) in starts.items():
        print(f"{name:11s}: first step = trace {traced:.1f} s, then optimize + run with {system:.1f} s of kernel "
              f"CPU time (mostly memory touched for the first time; BUILD.md, Speed notes)")
    if len(results) == 2:
        print(f"alpha step / weight step: {results['alpha step'][1] / results['weight step'][1]:.2f}")
    print(f"peak RSS: {rss_gb:.2f} GB")
    for line in profile_lines:
        print(line)


def console_main():
    """The `dprime-bench` console script: `python -m dprime_tf.bench`."""
    run_main(main)


if __name__ == "__main__":
    run_main(main)
