"""Where a step's time goes: TensorFlow profiler traces summed per op kind.

`profile(fn, steps, logdir)` traces `steps` calls of a compiled step with
`tf.profiler`, and `summarize(logdir)` reads the trace (the host plane's
XPlane: one event per executed op, named "<node name>:<op type>") and sums
op time per category (depthwise convs, pointwise/stem convs, batch norm,
data movement, pooling, the optimizer, FI, the rest) and per op type.
Times are summed over the executor's threads, so they add up to more than
the wall time when ops run in parallel; shares are what to compare.
"""

from __future__ import annotations

import collections
import glob
import os

# (category, test on (node name, op type)), first match wins; the scopes are
# the ones the supernet and the search step name (batch_norm, fisher_information).
CATEGORIES = (
    ("optimizer", lambda name, op: "ResourceApply" in op or "coupled_sgd" in name or "coupled_adam" in name
     or "alpha_adam" in name),
    ("FI (gradient information)", lambda name, op: "fisher_information" in name),
    ("depthwise convs", lambda name, op: "DepthwiseConv2d" in op),
    ("pointwise and stem convs", lambda name, op: "Conv2D" in op or op in ("MatMul", "_MklMatMul")),
    ("batch norm", lambda name, op: "BatchNorm" in op or "batch_norm" in name),
    ("pooling", lambda name, op: "Pool" in op),
    ("concat, split, tile, slices", lambda name, op: op in (
        "ConcatV2", "Split", "SplitV", "Tile", "Slice", "StridedSlice", "StridedSliceGrad", "Pack", "Unpack",
        "Pad", "PadV2", "Transpose", "Reshape", "GatherV2", "BroadcastTo", "Identity", "_MklTranspose")),
    ("mixing and activations (elementwise)", lambda name, op: op in (
        "Mul", "AddN", "AddV2", "Add", "Sub", "Relu", "ReluGrad", "_MklRelu", "_MklReluGrad", "BiasAdd",
        "Neg", "Square", "Softmax", "Sum", "Mean", "_FusedMulAdd", "_FusedAddN")),
)


def profile(fn, steps: int, logdir: str):
    """Runs `fn` (already traced once) `steps` times under the TF profiler; returns the trace file."""
    import tensorflow as tf
    tf.profiler.experimental.start(logdir)
    try:
        for _ in range(steps):
            tf.nest.map_structure(lambda x: x.numpy(), fn())
    finally:
        tf.profiler.experimental.stop()
    found = sorted(glob.glob(os.path.join(logdir, "plugins", "profile", "*", "*.xplane.pb")), key=os.path.getmtime)
    if not found:
        raise RuntimeError(f"the profiler wrote no trace under {logdir}")
    return found[-1]


def op_times(xplane_path: str) -> dict:
    """{(node name, op type): summed seconds} of the executed ops in a trace."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2
    space = xplane_pb2.XSpace()
    with open(xplane_path, "rb") as f:
        space.ParseFromString(f.read())
    out = collections.Counter()
    for plane in space.planes:
        if not plane.name.startswith("/host:"):
            continue
        for line in plane.lines:
            if not line.name.startswith("tf_Compute") and "Eigen" not in line.name:
                continue
            for event in line.events:
                label = plane.event_metadata[event.metadata_id].name
                if ":" not in label or label.startswith(("ExecutorState", "ThreadpoolListener")):
                    continue
                name, op = label.rsplit(":", 1)
                out[(name, op)] += event.duration_ps * 1e-12
    return dict(out)


def categorize(times: dict) -> tuple[dict, dict]:
    """({category: seconds}, {op type: seconds}) of `op_times`."""
    by_category, by_op = collections.Counter(), collections.Counter()
    for (name, op), seconds in times.items():
        by_op[op] += seconds
        category = next((c for c, test in CATEGORIES if test(name, op)), "other")
        by_category[category] += seconds
    return dict(by_category), dict(by_op)


def report_lines(times: dict, steps: int, top: int = 12) -> list[str]:
    by_category, by_op = categorize(times)
    total = sum(by_category.values()) or 1.0
    lines = [f"op time per step, summed over threads: {total / steps:.3f} s"]
    for name, seconds in sorted(by_category.items(), key=lambda kv: -kv[1]):
        lines.append(f"  {name:38s} {seconds / steps:7.3f} s  {seconds / total:6.1%}")
    lines.append(f"top {top} op types:")
    for op, seconds in sorted(by_op.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"  {op:38s} {seconds / steps:7.3f} s  {seconds / total:6.1%}")
    return lines
