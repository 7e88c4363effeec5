"""Inference throughput of an export: SavedModel (TensorFlow) vs ONNX (onnxruntime), on this CPU.

    python -m export.bench --export_dir=exports/cifar/1 --onnx=exports/cifar-1.onnx [--batch_sizes=1,8,64]

For each batch size: random uint8 images, warm-up calls, then `--runs`
timed calls of each runtime (alternating, so both see the same machine
load); prints the median images/second (and min-max of the runs). Both
runtimes use their default thread pools (all cores) unless --threads.
Not a test: the figures depend on the machine and its load.
"""

from __future__ import annotations

import os
import statistics
import time

import numpy as np
from absl import flags

FLAGS = flags.FLAGS
flags.DEFINE_string("export_dir", None, "SavedModel version directory (<base>/<name>/<N>).")
flags.DEFINE_string("onnx", None, "ONNX file of the same export (optional).")
flags.DEFINE_list("batch_sizes", ["1", "8", "64"], "Batch sizes to time.")
flags.DEFINE_integer("runs", 7, "Timed runs per runtime and batch size (median reported; at least 5).")
flags.DEFINE_integer("warmup", 3, "Untimed runs first.")
flags.DEFINE_integer("threads", 0, "Intra-op threads for both runtimes (0: their defaults).")
flags.DEFINE_integer("seed", 0, "Seed of the random images.")


def _time(run, images, runs):
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        run(images)
        times.append(time.perf_counter() - start)
    return times


def benchmark(export_dir, onnx_path=None, batch_sizes=(1, 8, 64), runs=7, warmup=3, threads=0, seed=0,
              log=print) -> list[dict]:
    """Rows {"batch", "runtime", "median_img_s", "min_img_s", "max_img_s", "median_ms"}."""
    import tensorflow as tf

    from . import onnx as onnx_export
    from . import saved_model

    if threads:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
    signature = tf.saved_model.load(export_dir).signatures[saved_model.SIGNATURE]
    spec = signature.structured_input_signature[1][saved_model.INPUT]
    height, width = spec.shape[1], spec.shape[2]
    runtimes = {"SavedModel": lambda x: signature(images=tf.constant(x))["logits"].numpy()}
    if onnx_path:
        sess = onnx_export.session(onnx_path, threads or None)
        runtimes["onnxruntime"] = lambda x: sess.run(["logits"], {"images": x})[0]
    rng = np.random.default_rng(seed)
    rows = []
    for batch in batch_sizes:
        images = rng.integers(0, 256, (batch, height, width, 3), dtype=np.uint8)
        for run in runtimes.values():
            _time(run, images, warmup)
        times = {name: [] for name in runtimes}
        for _ in range(runs):  # alternate the runtimes run by run
            for name, run in runtimes.items():
                times[name] += _time(run, images, 1)
        for name, ts in times.items():
            med = statistics.median(ts)
            rows.append({"batch": batch, "runtime": name, "median_img_s": batch / med, "min_img_s": batch / max(ts),
                         "max_img_s": batch / min(ts), "median_ms": 1000 * med})
            log(f"  batch {batch:>4} {name:<12} {batch / med:10.1f} img/s  ({1000 * med:.2f} ms/batch)")
    return rows


def table(rows) -> str:
    lines = [f"{'batch':>5}  {'runtime':<12} {'img/s (median)':>14} {'min-max img/s':>19} {'ms/batch':>9}"]
    for r in rows:
        lines.append(f"{r['batch']:>5}  {r['runtime']:<12} {r['median_img_s']:>14.1f} "
                     f"{r['min_img_s']:>9.1f}-{r['max_img_s']:<9.1f} {r['median_ms']:>9.2f}")
    return "\n".join(lines)


def main(argv):
    from dprime_tf.cli import no_positional_arguments
    from dprime_tf.errors import UserError

    no_positional_arguments(argv)
    if not FLAGS.export_dir:
        raise UserError("--export_dir is required (a SavedModel version directory)")
    try:
        sizes = [int(b) for b in FLAGS.batch_sizes]
    except ValueError:
        raise UserError(f"--batch_sizes must be integers, got {','.join(FLAGS.batch_sizes)}") from None
    if not sizes or min(sizes) < 1:
        raise UserError("--batch_sizes must be positive")
    if FLAGS.runs < 5:
        raise UserError("--runs must be at least 5")
    for path in (FLAGS.export_dir, FLAGS.onnx):
        if path and not os.path.exists(path):
            raise UserError(f"{path} does not exist")
    rows = benchmark(FLAGS.export_dir, FLAGS.onnx, sizes, FLAGS.runs, FLAGS.warmup, FLAGS.threads, FLAGS.seed)
    print(f"\n{FLAGS.export_dir}" + (f" vs {FLAGS.onnx}" if FLAGS.onnx else "")
          + f": median of {FLAGS.runs} runs after {FLAGS.warmup} warm-up runs")
    print(table(rows))


def console_main():
    from dprime_tf.cli import run_main
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    run_main(main)


if __name__ == "__main__":
    console_main()
