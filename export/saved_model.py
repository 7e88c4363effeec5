"""A trained Keras CNN as a TF Serving SavedModel, and the serving-contract checks.

The SavedModel holds one `tf.function` with a fixed input signature:

    serving_default(images: uint8 [batch, H, W, 3])
        -> logits: float32 [batch, classes]
           probabilities: float32 [batch, classes]   (softmax of logits)
           classes: int64 [batch]                     (argmax of logits)

Preprocessing (cast, /255, minus mean, over std, with the per-channel
statistics the network records in its config, `input_mean`/`input_std`;
CIFAR-10's for a model that records none) is inside the graph, so clients
send raw pixels. The network runs in
inference mode (`training=False`: no auxiliary head, no drop-path, BN with
its moving statistics), and only the variables that graph reads are saved
(the auxiliary head's weights are left out). Nothing in the SavedModel
refers to Python code: it loads wherever TensorFlow does, including
`tensorflow_model_server`, which `check_fresh_process` and
`check_standard_ops` verify.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

import numpy as np
import tensorflow as tf

from .layout import ExportError, _one_line

SIGNATURE = "serving_default"
INPUT = "images"
OUTPUTS = {"logits": tf.float32, "probabilities": tf.float32, "classes": tf.int64}
PREDICT_METHOD = "tensorflow/serving/predict"
# Ops that call back into the Python interpreter: TF Serving has none.
PYTHON_OPS = frozenset({"PyFunc", "PyFuncStateless", "EagerPyFunc"})


# ----------------------------------------------------------------- Keras side


def load_keras_model(path: str):
    """Loads a `.keras` file written by `model.save` (dprime_tf layers registered)."""
    import keras

    import dprime_tf.spaces.cnn.network  # noqa: F401  registers the custom layers for deserialization
    try:
        return keras.saving.load_model(path, compile=False)
    except Exception as e:  # keras raises many types for a bad archive or config
        raise ExportError(f"cannot load Keras model {path}: {_one_line(e)}") from None


def model_image_size(model) -> tuple[int, int] | None:
    """(height, width) the model was built for, or None if it does not say."""
    shape = None
    try:
        shape = model.input_shape  # functional models
    except (AttributeError, ValueError):
        shapes = getattr(model, "_build_shapes_dict", None) or {}  # subclassed models built with build()
        if len(shapes) == 1:
            shape = next(iter(shapes.values()))
    if isinstance(shape, list) and shape and isinstance(shape[0], (list, tuple)):
        shape = shape[0] if len(shape) == 1 else None
    if shape is None or len(shape) != 4:
        return None
    if shape[1] is None or shape[2] is None:
        return None
    if shape[3] not in (None, 3):
        raise ExportError(f"the model takes {shape[3]}-channel images; the export serves RGB (3 channels)")
    return int(shape[1]), int(shape[2])


def model_statistics(model) -> tuple[tuple, tuple]:
    """(mean, std) the model was trained with: its config's input_mean/input_std,
    else (a model saved before they were recorded) CIFAR-10's."""
    from dprime_tf.data.images import model_statistics as statistics
    return statistics(model)


def normalize(images, model=None):
    """The data pipeline's preprocessing: uint8 -> (x/255 - mean) / std, with
    `model`'s statistics (model_statistics; CIFAR-10's if model is None)."""
    from dprime_tf.data.images import normalize as data_normalize
    return data_normalize(images, *model_statistics(model))


def serving_function(model, image_size):
    """The tf.function TF Serving runs: uint8 images in, the three outputs out."""
    height, width = image_size
    spec = tf.TensorSpec([None, height, width, 3], tf.uint8, name=INPUT)

    @tf.function(input_signature=[spec])
    def serve(images):
        logits = model(normalize(images, model), training=False)
        if isinstance(logits, (list, tuple)) or logits.shape.rank != 2:
            raise ExportError("the model must return one logits tensor (batch, classes) in inference mode, "
                              f"got {logits!r}")
        logits = tf.cast(logits, tf.float32)
        return {
            "logits": tf.identity(logits, name="logits"),
            "probabilities": tf.nn.softmax(logits, name="probabilities"),
            "classes": tf.argmax(logits, axis=-1, output_type=tf.int64, name="classes"),
        }

    return serve


def save(model, export_dir: str, image_size) -> "tf.types.experimental.PolymorphicFunction":
    """Writes the SavedModel into `export_dir` (created or empty) and returns the serving function."""
    serve = serving_function(model, image_size)
    try:
        concrete = serve.get_concrete_function()
    except ExportError:
        raise
    except Exception as e:
        raise ExportError(f"cannot trace the model for serving at {image_size[0]}x{image_size[1]}: "
                          f"{_one_line(e)}") from None
    module = tf.Module()
    # Track exactly the variables the inference graph reads (the auxiliary
    # head's are not). The function is saved as the signature only (Python
    # users call `.signatures["serving_default"]`); attaching the
    # tf.function too would save it twice and double the save time.
    module.inference_variables = list(concrete.variables)
    tf.saved_model.save(module, export_dir, signatures={SIGNATURE: concrete})
    return serve


# ----------------------------------------------------------------- SavedModel side


def read_proto(export_dir: str):
    """The SavedModel protocol buffer (saved_model.pb)."""
    from tensorflow.core.protobuf import saved_model_pb2
    path = os.path.join(export_dir, "saved_model.pb")
    proto = saved_model_pb2.SavedModel()
    try:
        with open(path, "rb") as f:
            proto.ParseFromString(f.read())
    except (OSError, ValueError) as e:
        raise ExportError(f"cannot read {path}: {_one_line(e)}") from None
    return proto


def load(export_dir: str):
    """A callable numpy uint8 images -> {name: numpy array} running the serving signature."""
    signature = tf.saved_model.load(export_dir).signatures[SIGNATURE]

    def run(images):
        outputs = signature(**{INPUT: tf.constant(np.asarray(images, dtype=np.uint8))})
        return {k: v.numpy() for k, v in outputs.items()}

    return run


def check_signature(export_dir: str, image_size=None) -> dict:
    """The serving_default SignatureDef as TF Serving reads it: returns
    {"inputs": {name: (dtype, shape)}, "outputs": {...}, "method": ...};
    raises ExportError unless it is the contract of this module."""
    proto = read_proto(export_dir)
    if len(proto.meta_graphs) != 1:
        raise ExportError(f"{export_dir}: expected one MetaGraph, found {len(proto.meta_graphs)}")
    signatures = proto.meta_graphs[0].signature_def
    if SIGNATURE not in signatures:
        raise ExportError(f"{export_dir}: no '{SIGNATURE}' signature (has {sorted(signatures)})")
    sig = signatures[SIGNATURE]

    def describe(infos):
        return {name: (tf.dtypes.as_dtype(info.dtype).name,
                       None if info.tensor_shape.unknown_rank else [d.size for d in info.tensor_shape.dim])
                for name, info in infos.items()}

    found = {"inputs": describe(sig.inputs), "outputs": describe(sig.outputs), "method": sig.method_name}
    problems = []
    if set(found["inputs"]) != {INPUT}:
        problems.append(f"inputs {sorted(found['inputs'])} (expected ['{INPUT}'])")
    else:
        dtype, shape = found["inputs"][INPUT]
        if dtype != "uint8" or shape is None or len(shape) != 4 or shape[0] != -1 or shape[3] != 3 \
                or (image_size is not None and shape[1:3] != list(image_size)):
            problems.append(f"input {INPUT} is {dtype} {shape}")
    if set(found["outputs"]) != set(OUTPUTS):
        problems.append(f"outputs {sorted(found['outputs'])} (expected {sorted(OUTPUTS)})")
    else:
        for name, dtype in OUTPUTS.items():
            got, shape = found["outputs"][name]
            rank = 1 if name == "classes" else 2
            if got != dtype.name or shape is None or len(shape) != rank or shape[0] != -1:
                problems.append(f"output {name} is {got} {shape}")
    if found["method"] != PREDICT_METHOD:
        problems.append(f"method {found['method']!r}")
    if problems:
        raise ExportError(f"{export_dir}: the {SIGNATURE} signature breaks the serving contract: "
                          + "; ".join(problems))
    return found


def graph_ops(export_dir: str) -> tuple[set, set]:
    """(op types used anywhere in the MetaGraph, names of its library functions)."""
    ops, functions = set(), set()
    for meta_graph in read_proto(export_dir).meta_graphs:
        graph = meta_graph.graph_def
        functions.update(f.signature.name for f in graph.library.function)
        ops.update(node.op for node in graph.node)
        for function in graph.library.function:
            ops.update(node.op for node in function.node_def)
    return ops, functions


def check_standard_ops(export_dir: str) -> list[str]:
    """Sorted op types of the SavedModel (graph and every library function);
    raises ExportError if one calls back into Python or is not a core
    TensorFlow op (one of `tf.raw_ops`), e.g. a custom op library's."""
    ops, functions = graph_ops(export_dir)
    ops -= functions  # calls of the SavedModel's own functions
    python = sorted(ops & PYTHON_OPS)
    if python:
        raise ExportError(f"{export_dir}: the graph calls Python ({', '.join(python)}); "
                          "TF Serving cannot run it (replace tf.py_function / tf.numpy_function with TF ops)")
    unknown = sorted(op for op in ops if not hasattr(tf.raw_ops, op))
    if unknown:
        raise ExportError(f"{export_dir}: the graph uses ops that are not standard TensorFlow ops "
                          f"({', '.join(unknown)}); TF Serving's standard build cannot run them")
    return sorted(ops)


# Runs in a fresh, isolated interpreter (python -I, cwd a temporary
# directory): the project's packages are not importable there (and are
# blocked outright, in case they are installed into the environment).
_FRESH_SCRIPT = r"""
import importlib.abc, importlib.util, json, sys
export_dir, inputs, outputs = sys.argv[1:4]
on_path = [p for p in ("dprime_tf", "export") if importlib.util.find_spec(p) is not None]

class _Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("dprime_tf", "export"):
            raise ImportError(f"{name} is blocked in the serving check")
        return None

sys.meta_path.insert(0, _Block())
try:
    import dprime_tf
except ImportError:
    pass
else:
    raise SystemExit("dprime_tf is importable in the clean process")
import numpy as np
import tensorflow as tf
signature = tf.saved_model.load(export_dir).signatures["serving_default"]
images = np.load(inputs)["images"]
result = {k: v.numpy() for k, v in signature(images=tf.constant(images)).items()}
np.savez(outputs, **result)
print(json.dumps({"project_on_path": on_path,
                  "project_modules": sorted(m for m in sys.modules if m.split(".")[0] in ("dprime_tf", "export"))}))
"""


def check_fresh_process(export_dir: str, images, expected: dict | None = None, tolerance: float = 1e-4,
                        timeout: float = 600) -> dict:
    """Loads the SavedModel in a fresh `python -I` process (temporary cwd,
    no PYTHONPATH, `dprime_tf` and `export` unimportable) and runs it on
    `images`. Returns {"outputs": {...}, "max_abs_diff": float or None,
    "project_on_path": [...]}; raises ExportError if the process fails or
    its logits differ from `expected["logits"]` by more than `tolerance`.
    """
    import json
    images = np.asarray(images, dtype=np.uint8)
    with tempfile.TemporaryDirectory(prefix="dprime-serving-check-") as work:
        inputs, outputs = os.path.join(work, "in.npz"), os.path.join(work, "out.npz")
        np.savez(inputs, images=images)
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
        try:
            proc = subprocess.run([sys.executable, "-I", "-c", _FRESH_SCRIPT, os.path.abspath(export_dir),
                                   inputs, outputs], cwd=work, env=env, capture_output=True, text=True,
                                  timeout=timeout)
        except subprocess.TimeoutExpired:
            raise ExportError(f"loading {export_dir} in a fresh process took over {timeout:.0f} s") from None
        if proc.returncode != 0:
            lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
            raise ExportError(f"{export_dir} does not load and run in a fresh process without the project: "
                              f"{lines[-1] if lines else 'exit code ' + str(proc.returncode)}")
        info = json.loads(proc.stdout.strip().splitlines()[-1])
        with np.load(outputs) as data:
            result = {k: data[k] for k in data.files}
    if info["project_modules"]:
        raise ExportError(f"loading {export_dir} imported {info['project_modules']}")
    diff = None
    if expected is not None:
        diff = float(np.max(np.abs(result["logits"] - np.asarray(expected["logits"]))))
        if not diff <= tolerance or not np.array_equal(result["classes"], expected["classes"]):
            raise ExportError(f"{export_dir} gives other outputs in a fresh process "
                              f"(logits max |diff| {diff:.3g}, tolerance {tolerance:g})")
    return {"outputs": result, "max_abs_diff": diff, "project_on_path": info["project_on_path"]}
