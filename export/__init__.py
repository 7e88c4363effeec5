"""Exporting trained DARTS-PRIME CNNs for serving.

    python -m export --model=<run dir or .keras> --output_dir=<base> --name=<name> --version=<N> [--onnx=<file>]
    python -m export.client --server=localhost:8501 --model=<name> image.jpg ...
    python -m export.bench --export_dir=<base>/<name>/<N> --onnx=<file>

Modules: `pipeline` (export_model: load, stage, convert, check, commit),
`saved_model` (the serving SavedModel and its contract checks), `onnx`
(tf2onnx conversion, onnxruntime), `layout` (paths and
models.config; no TensorFlow), `client` (TF Serving REST/gRPC client),
`bench` (SavedModel vs onnxruntime throughput). See BUILD.md (Serving a trained model).

Importing this package does not import TensorFlow.
"""

from .layout import ExportError  # noqa: F401
