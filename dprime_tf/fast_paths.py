"""GPU fast paths of search and training: mixed precision and XLA.

Both are off by default. On this project's CPUs they are slower (no bf16/fp16
units; XLA compiles for minutes), on GPUs they are the usual speed-ups; see
BUILD.md "Fast paths on GPUs".

- `--precision=float32|bf16|fp16`: Keras' "float32", "mixed_bfloat16" or
  "mixed_float16" policy while the network is built. Weights, optimizer
  state, batch-norm statistics, the loss, FI and the alphas stay float32;
  convolutions and activations run in the 16-bit type. fp16 adds dynamic
  loss scaling (Keras' LossScaleOptimizer): a step whose gradients overflow
  is skipped and the scale halved.
- `--xla`: each replica's step is compiled with XLA (`jit_compile=True`).

Imports no TensorFlow at module level, so command lines can validate first.
"""

from __future__ import annotations

import contextlib

PRECISIONS = ("float32", "bf16", "fp16")
POLICIES = {"float32": "float32", "bf16": "mixed_bfloat16", "fp16": "mixed_float16"}

PRECISION_HELP = ("Numeric precision: float32 (default), bf16 (mixed bfloat16: Ampere+ GPUs, TPUs) or fp16 "
                  "(mixed float16 with dynamic loss scaling: older GPUs). Weights, optimizer state, loss and FI "
                  "stay float32. Slower on CPUs without 16-bit units; see BUILD.md.")
XLA_HELP = "Compile each replica's step with XLA (jit_compile). For GPUs: on CPUs it compiles for minutes and " \
           "runs slower; see BUILD.md."


def define_flags(flags):
    """--precision and --xla on an absl flags module (search and train share them)."""
    flags.DEFINE_enum("precision", "float32", PRECISIONS, PRECISION_HELP)
    flags.DEFINE_bool("xla", False, XLA_HELP)


def checks(cfg) -> list[tuple[bool, str]]:
    precision = getattr(cfg, "precision", "float32")
    return [(precision in PRECISIONS, f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}"),
            (not (getattr(cfg, "xla", False) and getattr(cfg, "deterministic", False)),
             "--xla and --deterministic do not go together: XLA has no deterministic max-pool gradient "
             "(drop one of them)")]


def loss_scaling(precision: str) -> bool:
    """fp16 needs loss scaling (its smallest normal is 6e-5); bf16 has float32's range."""
    return precision == "fp16"


@contextlib.contextmanager
def policy(precision: str):
    """Keras' global dtype policy for `precision` while the block builds layers;
    the previous policy afterwards (a layer keeps the policy it was built with)."""
    import keras
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(POLICIES[precision])
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


def configure_graph_optimizer() -> bool:
    """Grappler (TensorFlow's graph optimizer) on, unless DPRIME_GRAPPLER=0;
    returns whether it is on. When on, it makes one pass over a step's graph
    instead of TensorFlow's default two, and skips the layout optimizer where
    no GPU is visible (it only rewrites GPU layouts).

    Measured at the paper's search size on a 2-core CPU (dprime-bench, two
    interleaved rounds): Grappler takes 11 s of the first step's 31 s
    (tracing + optimization) and buys 7-8% of every step's time (2.70-2.84 s
    vs 2.90-3.07 s) and 0.7 GB of peak memory; in a process that traces many
    tiny searches (a test worker) memory grew 2.9x without it (1.9 GB after
    tests/test_reliability.py with it, 5.6 GB without). So it stays on;
    DPRIME_GRAPPLER=0 trades step time and memory for start-up. Its second
    pass took 4.6 s of the 12 and changed ~2,000 of 22,500 nodes (duplicate
    subgraphs the first pass' rewrites exposed), with no measurable step time
    or memory: see BUILD.md. Process-wide (the pass count: for the calling
    thread, which is the one that runs Keras' fit); call before the first step
    is traced.
    """
    import os

    import tensorflow as tf
    keep = os.environ.get("DPRIME_GRAPPLER", "1") != "0"
    options = {"disable_meta_optimizer": not keep}
    if keep and not tf.config.list_physical_devices("GPU"):
        options["layout_optimizer"] = False
    tf.config.optimizer.set_experimental_options(options)
    if keep:
        _one_optimizer_pass()
    return keep


def _one_optimizer_pass():
    """Function calls made from this thread run Grappler's meta-optimizer once.

    `tf.config.optimizer` has no setting for the iteration count, so the
    context's ConfigProto (the one every tf.function call passes to the
    runtime) gets it directly.
    """
    from tensorflow.core.protobuf import rewriter_config_pb2
    from tensorflow.python.eager import context
    ctx = context.context()
    config = ctx.config
    config.graph_options.rewrite_options.meta_optimizer_iterations = rewriter_config_pb2.RewriterConfig.ONE
    ctx.function_call_options = context.FunctionCallOptions(config_proto=config)


def compile_step(fn, xla: bool):
    """`fn` as an XLA-compiled tf.function when `xla`, else `fn` itself (traced
    into the caller's graph)."""
    if not xla:
        return fn
    import tensorflow as tf
    from tensorflow.python.framework import config
    if config.is_op_determinism_enabled():
        raise ValueError("XLA cannot compile the step with op determinism enabled (no deterministic max-pool "
                         "gradient): drop --xla or --deterministic")
    return tf.function(fn, jit_compile=True, autograph=False)
