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
RECOMPUTE_HELP = ("Image searches: keep only each cell's inputs for the backward pass and compute the cell again "
                  "there (gradient checkpointing). The same results; at the paper's search size 2.5 GB instead of "
                  "4.8 GB of memory and a ~35% slower step. For a GPU that is short of memory or a bigger batch.")
XLA_HELP = "Compile each replica's step with XLA (jit_compile). For GPUs: on CPUs it compiles for minutes and " \
           "runs slower; see BUILD.md."


def define_flags(flags):
    """--precision and --xla on an absl flags module (search and train share them)."""
    flags.DEFINE_enum("precision", "float32", PRECISIONS, PRECISION_HELP)
    flags.DEFINE_bool("xla", False, XLA_HELP)


def define_recompute_flag(flags):
    """--recompute on an absl flags module (search and bench: the image supernet has it)."""
    flags.DEFINE_bool("recompute", False, RECOMPUTE_HELP)


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


# Grappler passes skipped where no GPU is visible. Per-pass times at the
# paper's search size on a 2-core CPU (TF_CPP_VMODULE=meta_optimizer=1), and
# what each did: the layout optimizer only rewrites GPU layouts (0.7 s, no
# change); the memory optimizer swaps GPU tensors to host memory (2.0 s, no
# step-time or memory gain); the remapper (0.7 s) fused one node; the loop
# optimizer (0.2 s) changed none. Step time and memory stayed the same, and
# the final network's train step (C=36, 20 cells) did not change either.
# Constant folding (0.8 s) stays: without it the golden trajectory's first
# FI varied between runs of the same step by up to 2.7e-4 (relative; the
# test holds it to 1e-4); with it, seven runs gave the same FI to the four
# printed digits (tests/test_golden_trajectory.py caught it).
CPU_SKIPPED_OPTIMIZERS = ("layout_optimizer", "remapping", "loop_optimization")


def configure_graph_optimizer() -> bool:
    """Grappler (TensorFlow's graph optimizer) on, unless DPRIME_GRAPPLER=0;
    returns whether it is on. When on, it makes one pass over a step's graph
    instead of TensorFlow's default two, without its TFG passes, and where
    no GPU is visible it skips the passes that buy a CPU nothing
    (CPU_SKIPPED_OPTIMIZERS and the memory optimizer); with a GPU those stay
    as TensorFlow sets them.

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
    gpu = bool(tf.config.list_physical_devices("GPU"))
    if keep and not gpu:
        options.update({name: False for name in CPU_SKIPPED_OPTIMIZERS})
    tf.config.optimizer.set_experimental_options(options)
    if keep:
        _set_context_rewrite_options(memory_optimizer=gpu)
    return keep


def _set_context_rewrite_options(memory_optimizer: bool):
    """Function calls made from this thread run Grappler's meta-optimizer once,
    without its TFG passes, and without its memory optimizer unless
    `memory_optimizer`.

    `tf.config.optimizer` has no setting for any of them, so the context's
    ConfigProto (the one every tf.function call passes to the runtime) gets
    them directly. On CPUs the memory optimizer took 2.0 s of the paper-size
    first step for nothing (steps 2.70 / 2.71 s without it vs 2.86 / 2.77 s
    with, peak RSS 6.81 vs 6.91 GB, first step 19.6 s vs 21.5-22.7 s).
    """
    from tensorflow.core.protobuf import rewriter_config_pb2
    from tensorflow.python.eager import context
    ctx = context.context()
    config = ctx.config
    rewrite = config.graph_options.rewrite_options
    rewrite.meta_optimizer_iterations = rewriter_config_pb2.RewriterConfig.ONE
    # Grappler's TFG (MLIR) passes: a shape-inference round trip before the
    # classic passes, a functional <-> region control-flow round trip after
    # them (its one rewrite, control-flow sinking, TensorFlow leaves off). They
    # changed no node of a step's graph and took 0.83 s of the paper-size first
    # weight step and 0.63 s of the first alpha step (BUILD.md).
    rewrite.disable_tfg_optimizer = True
    if not memory_optimizer:
        rewrite.memory_optimization = rewriter_config_pb2.RewriterConfig.NO_MEM_OPT
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
