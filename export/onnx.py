"""The serving function as an ONNX model (tf2onnx), and running it with onnxruntime.

The ONNX graph is converted from the same `tf.function` the SavedModel
serves, so it has the same contract: input `images` uint8 [batch, H, W, 3]
(preprocessing inside), outputs `logits` float32 [batch, classes],
`probabilities` float32 [batch, classes], `classes` int64 [batch]; the
batch dimension is symbolic ("batch").

Opset: 17 by default (ONNX 1.12, IR version 8). tf2onnx 1.17 emits opsets
up to 18; 17 is recent enough for everything this network needs (convs,
depthwise convs as grouped convs, pools, Softmax, ArgMax) and old enough
for every maintained runtime (onnxruntime has run it since 1.12).
`--opset` picks another one in 13..18.
"""

from __future__ import annotations

import numpy as np

from .layout import ExportError, _one_line

DEFAULT_OPSET = 17
MIN_OPSET, MAX_OPSET = 13, 18  # tf2onnx 1.17's range worth using (13: Softmax on one axis)
INPUT = "images"
OUTPUTS = {"logits": "float", "probabilities": "float", "classes": "int64"}
BATCH_DIM = "batch"


def check_opset(opset) -> int:
    try:
        value = int(opset)
    except (TypeError, ValueError):
        value = None
    if value is None or not MIN_OPSET <= value <= MAX_OPSET:
        raise ExportError(f"--opset={opset} is not supported: use {MIN_OPSET}..{MAX_OPSET} "
                          f"(default {DEFAULT_OPSET}; tf2onnx 1.17 emits at most {MAX_OPSET})")
    return value


def convert(serve, path: str, opset: int = DEFAULT_OPSET) -> None:
    """Converts the serving tf.function (see export.saved_model.serving_function) and writes `path`."""
    import onnx
    import tensorflow as tf
    import tf2onnx

    spec = serve.input_signature[0]
    try:
        model_proto, _ = tf2onnx.convert.from_function(
            serve, input_signature=[tf.TensorSpec(spec.shape, spec.dtype, name=INPUT)], opset=check_opset(opset))
    except ExportError:
        raise
    except Exception as e:
        raise ExportError(f"ONNX conversion (tf2onnx, opset {opset}) failed: {_one_line(e)}") from None
    for value in list(model_proto.graph.input) + list(model_proto.graph.output):
        dims = value.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].dim_param = BATCH_DIM
    model_proto.producer_name = "dprime-tf export (tf2onnx)"
    try:
        onnx.checker.check_model(model_proto)
    except Exception as e:
        raise ExportError(f"the converted ONNX model is invalid: {_one_line(e)}") from None
    onnx.save_model(model_proto, path)


def describe(path: str) -> dict:
    """{"inputs": {name: (elem type, dims)}, "outputs": {...}, "opset": int};
    symbolic dims are given by name."""
    import onnx
    model = onnx.load(path, load_external_data=False)

    def info(values):
        out = {}
        for v in values:
            t = v.type.tensor_type
            dims = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in t.shape.dim]
            out[v.name] = (onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name, dims)
        return out

    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=None)
    return {"inputs": info(model.graph.input), "outputs": info(model.graph.output), "opset": opset}


def check_signature(path: str, image_size=None) -> dict:
    """Raises ExportError unless the ONNX model has the serving contract; returns `describe`."""
    found = describe(path)
    problems = []
    inputs = found["inputs"]
    if set(inputs) != {INPUT}:
        problems.append(f"inputs {sorted(inputs)}")
    else:
        dtype, dims = inputs[INPUT]
        if dtype != "uint8" or len(dims) != 4 or not isinstance(dims[0], str) or dims[3] != 3 \
                or (image_size is not None and dims[1:3] != list(image_size)):
            problems.append(f"input {INPUT} is {dtype} {dims}")
    outputs = found["outputs"]
    if set(outputs) != set(OUTPUTS):
        problems.append(f"outputs {sorted(outputs)}")
    else:
        for name, dtype in OUTPUTS.items():
            got, dims = outputs[name]
            expected = "float32" if dtype == "float" else dtype
            if got != expected or len(dims) != (1 if name == "classes" else 2) or not isinstance(dims[0], str):
                problems.append(f"output {name} is {got} {dims}")
    if problems:
        raise ExportError(f"{path}: the ONNX model breaks the serving contract: " + "; ".join(problems))
    return found


def session(path: str, threads: int | None = None):
    import onnxruntime as ort
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    options.log_severity_level = 3
    return ort.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"])


def load(path: str):
    """A callable numpy uint8 images -> {name: numpy array} running the ONNX model."""
    sess = session(path)
    names = [o.name for o in sess.get_outputs()]

    def run(images):
        values = sess.run(names, {INPUT: np.asarray(images, dtype=np.uint8)})
        return dict(zip(names, values))

    return run
