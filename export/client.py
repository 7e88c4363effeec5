"""A small client for TF Serving's predict APIs (REST and gRPC).

    python -m export.client --server=localhost:8501 --name=cifar [--version=1] image1.jpg image2.png
    python -m export.client --server=localhost:8500 --name=cifar --grpc image1.jpg

    from export.client import predict
    result = predict("localhost:8501", "cifar", ["cat.jpg"])          # REST
    result = predict("localhost:8500", "cifar", batch, grpc=True)     # gRPC, uint8 (N, H, W, 3)
    result.classes, result.probabilities, result.logits

Images: file paths (decoded to RGB and, when their size differs from the
model's, resized with bilinear antialiased filtering and rounded, as the
training data pipeline does) or uint8 numpy arrays (H, W, 3) / (N, H, W, 3)
already at the model's size. The model's size comes from the server's
model metadata unless `image_size` is given.

REST: `POST <server>/v1/models/<model>[/versions/<N>]:predict` with the
columnar ("inputs") body by default,
    {"signature_name": "serving_default", "inputs": {"images": [N x H x W x 3 ints]}}
answered by {"outputs": {"logits": [[...]], "probabilities": [[...]], "classes": [...]}};
`rest_format="row"` sends {"instances": [{"images": [H x W x 3]}, ...]} instead,
answered by {"predictions": [{"logits": [...], "probabilities": [...], "classes": c}, ...]}.
Metadata: `GET <server>/v1/models/<model>[/versions/<N>]/metadata`.

gRPC: `tensorflow.serving.PredictionService/Predict` with a PredictRequest
(model_spec name / signature_name / optional version, input `images` a
uint8 TensorProto made by tf.make_tensor_proto); needs the
tensorflow-serving-api package. Metadata: GetModelMetadata.

Only the request timeout bounds a call; there are no retries. Only the
command line (`main`) imports the project (dprime_tf, for its one-line
errors): the functions above can be copied to a client machine with numpy
(and TensorFlow for files or gRPC).
"""

from __future__ import annotations

import dataclasses
import json
import os
import urllib.error
import urllib.request

import numpy as np

SIGNATURE = "serving_default"
INPUT = "images"
DEFAULT_TIMEOUT = 30.0
GRPC_MAX_MESSAGE = 64 * 1024 * 1024


class ClientError(Exception):
    """A request could not be made or the server refused it (one-line message)."""


@dataclasses.dataclass
class Prediction:
    classes: np.ndarray  # int64 (N,)
    probabilities: np.ndarray  # float32 (N, classes)
    logits: np.ndarray  # float32 (N, classes)

    def top_k(self, k=3):
        """[(class, probability), ...] per image, most likely first."""
        order = np.argsort(-self.probabilities, axis=-1, kind="stable")[:, :k]
        return [[(int(c), float(p[c])) for c in row] for row, p in zip(order, self.probabilities)]


# ----------------------------------------------------------------- images


def load_images(items, image_size) -> np.ndarray:
    """File paths and/or uint8 arrays -> one uint8 (N, H, W, 3) batch at `image_size` (h, w)."""
    if isinstance(items, np.ndarray):
        items = [items] if items.ndim == 3 else list(items)
    batch = []
    for item in items:
        if isinstance(item, (str, os.PathLike)):
            image = _decode_file(os.fspath(item), image_size)
        else:
            image = np.asarray(item)
            if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
                raise ClientError(f"an image array must be uint8 (H, W, 3), got {image.dtype} {image.shape}")
            if tuple(image.shape[:2]) != tuple(image_size):
                image = _resize(image, image_size)
        batch.append(image)
    if not batch:
        raise ClientError("no images to send")
    return np.stack(batch)


def _decode_file(path, image_size):
    import tensorflow as tf
    try:
        with open(path, "rb") as f:
            blob = f.read()
    except OSError as e:
        raise ClientError(f"cannot read image {path}: {e.strerror}") from None
    try:
        image = tf.io.decode_image(blob, channels=3, expand_animations=False).numpy()
    except (tf.errors.OpError, ValueError):
        raise ClientError(f"cannot decode image {path} (not a JPEG/PNG/BMP/GIF file)") from None
    return image if tuple(image.shape[:2]) == tuple(image_size) else _resize(image, image_size)


def _resize(image, size):
    """As dprime_tf.data.images does for a dataset's images of another size."""
    import tensorflow as tf
    resized = tf.image.resize(image, size, method="bilinear", antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8).numpy()


# ----------------------------------------------------------------- REST


def _base_url(server):
    server = server.rstrip("/")
    return server if server.startswith(("http://", "https://")) else "http://" + server


def rest_url(server, model, version=None, verb=":predict") -> str:
    """http://host:port/v1/models/<model>[/versions/<N>]:predict (verb "/metadata" for metadata)."""
    path = f"/v1/models/{model}" + (f"/versions/{int(version)}" if version is not None else "")
    return _base_url(server) + path + verb


def rest_request_body(images, rest_format="columnar", signature=SIGNATURE) -> dict:
    images = np.asarray(images, dtype=np.uint8)
    if rest_format == "columnar":
        return {"signature_name": signature, "inputs": {INPUT: images.tolist()}}
    if rest_format == "row":
        return {"signature_name": signature, "instances": [{INPUT: image.tolist()} for image in images]}
    raise ValueError(f"rest_format must be 'columnar' or 'row', got {rest_format!r}")


def parse_rest_response(body: dict) -> Prediction:
    """TF Serving's predict response, columnar ("outputs") or row ("predictions") -> Prediction."""
    if "outputs" in body:
        outputs = body["outputs"]
        if not isinstance(outputs, dict):
            raise ClientError("the server answered with one unnamed output; expected logits, probabilities, classes")
    elif "predictions" in body:
        rows = body["predictions"]
        if not rows or not isinstance(rows[0], dict):
            raise ClientError("the server answered with unnamed predictions; expected logits, probabilities, classes")
        outputs = {k: [row[k] for row in rows] for k in rows[0]}
    else:
        raise ClientError(f"unexpected response from the server (keys {sorted(body)})")
    return _prediction(outputs)


def _prediction(outputs) -> Prediction:
    missing = [k for k in ("classes", "probabilities", "logits") if k not in outputs]
    if missing:
        raise ClientError(f"the response lacks {', '.join(missing)} (is this a dprime-tf export?)")
    try:
        prediction = Prediction(classes=np.asarray(outputs["classes"], dtype=np.int64).reshape(-1),
                                probabilities=np.asarray(outputs["probabilities"], dtype=np.float32),
                                logits=np.asarray(outputs["logits"], dtype=np.float32))
    except (ValueError, TypeError, OverflowError) as e:  # ragged lists, strings, nested objects
        detail = " ".join(str(e).split(". ")[0].split())[:120]
        raise ClientError(f"the server's response has malformed outputs ({detail}): "
                          "expected classes [N], probabilities and logits [N, classes]") from None
    n = len(prediction.classes)
    if (prediction.probabilities.ndim != 2 or prediction.logits.shape != prediction.probabilities.shape
            or len(prediction.probabilities) != n):
        raise ClientError(f"the server's response has mismatched outputs (classes {n}, probabilities "
                          f"{list(prediction.probabilities.shape)}, logits {list(prediction.logits.shape)})")
    return prediction


def _http(url, body=None, timeout=DEFAULT_TIMEOUT) -> dict:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method="GET" if data is None else "POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as e:
        try:
            detail = json.loads(e.read()).get("error", "")
        except (ValueError, AttributeError):
            detail = ""
        raise ClientError(f"{url}: HTTP {e.code}{': ' + ' '.join(str(detail).split()) if detail else ''}") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise ClientError(f"{url}: {reason}") from None
    except ValueError:
        raise ClientError(f"{url}: the server did not answer with JSON") from None


def rest_image_size(server, model, version=None, timeout=DEFAULT_TIMEOUT, signature=SIGNATURE):
    """(height, width) of the `images` input, from the model metadata."""
    body = _http(rest_url(server, model, version, "/metadata"), timeout=timeout)
    try:
        sig = body["metadata"]["signature_def"]["signature_def"][signature]
        info = sig["inputs"][INPUT]
        dims = (info["tensor_shape"] if "tensor_shape" in info else info["tensorShape"])["dim"]
        return _size_from_dims([int(d.get("size", -1)) for d in dims])
    except (KeyError, TypeError, ValueError):
        raise ClientError(f"the metadata of model {model!r} has no {signature} signature with an "
                          f"'{INPUT}' input") from None


def _size_from_dims(dims):
    if len(dims) != 4 or dims[1] < 1 or dims[2] < 1:
        raise ClientError(f"the model's input has shape {dims}; pass the image size explicitly")
    return dims[1], dims[2]


def predict_rest(server, model, images, version=None, image_size=None, rest_format="columnar",
                 timeout=DEFAULT_TIMEOUT, signature=SIGNATURE) -> Prediction:
    if image_size is None:
        image_size = rest_image_size(server, model, version, timeout, signature)
    batch = load_images(images, image_size)
    body = _http(rest_url(server, model, version), rest_request_body(batch, rest_format, signature), timeout)
    return parse_rest_response(body)


# ----------------------------------------------------------------- gRPC


def _grpc_modules():
    try:
        import grpc
        from tensorflow_serving.apis import get_model_metadata_pb2, predict_pb2, prediction_service_pb2_grpc
    except ImportError as e:
        raise ClientError(f"gRPC needs the tensorflow-serving-api package ({e})") from None
    return grpc, predict_pb2, get_model_metadata_pb2, prediction_service_pb2_grpc


def grpc_predict_request(images, model, version=None, signature=SIGNATURE):
    """The PredictRequest for a uint8 (N, H, W, 3) batch."""
    import tensorflow as tf
    _, predict_pb2, _, _ = _grpc_modules()
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature
    if version is not None:
        request.model_spec.version.value = int(version)
    request.inputs[INPUT].CopyFrom(tf.make_tensor_proto(np.asarray(images, dtype=np.uint8), dtype=tf.uint8))
    return request


def _grpc_call(server, method, request, timeout):
    grpc, _, _, services = _grpc_modules()
    options = [("grpc.max_receive_message_length", GRPC_MAX_MESSAGE),
               ("grpc.max_send_message_length", GRPC_MAX_MESSAGE)]
    with grpc.insecure_channel(server, options=options) as channel:
        stub = services.PredictionServiceStub(channel)
        try:
            return getattr(stub, method)(request, timeout=timeout)
        except grpc.RpcError as e:
            details = " ".join(str(e.details() or "").split())
            raise ClientError(f"{server}: gRPC {method} failed: {e.code().name}"
                              f"{': ' + details if details else ''}") from None


def grpc_image_size(server, model, version=None, timeout=DEFAULT_TIMEOUT, signature=SIGNATURE):
    _, _, metadata_pb2, _ = _grpc_modules()
    request = metadata_pb2.GetModelMetadataRequest()
    request.model_spec.name = model
    if version is not None:
        request.model_spec.version.value = int(version)
    request.metadata_field.append("signature_def")
    response = _grpc_call(server, "GetModelMetadata", request, timeout)
    signatures = metadata_pb2.SignatureDefMap()
    if "signature_def" not in response.metadata or not response.metadata["signature_def"].Unpack(signatures) \
            or signature not in signatures.signature_def or INPUT not in signatures.signature_def[signature].inputs:
        raise ClientError(f"the metadata of model {model!r} has no {signature} signature with an '{INPUT}' input")
    shape = signatures.signature_def[signature].inputs[INPUT].tensor_shape
    return _size_from_dims([d.size for d in shape.dim])


def predict_grpc(server, model, images, version=None, image_size=None, timeout=DEFAULT_TIMEOUT,
                 signature=SIGNATURE) -> Prediction:
    import tensorflow as tf
    if image_size is None:
        image_size = grpc_image_size(server, model, version, timeout, signature)
    batch = load_images(images, image_size)
    response = _grpc_call(server, "Predict", grpc_predict_request(batch, model, version, signature), timeout)
    return _prediction({k: tf.make_ndarray(v) for k, v in response.outputs.items()})


def predict(server, model, images, version=None, grpc=False, image_size=None, timeout=DEFAULT_TIMEOUT,
            rest_format="columnar", signature=SIGNATURE) -> Prediction:
    """Classifies `images` with the model served at `server` (REST port 8501, gRPC port 8500 by default)."""
    if isinstance(image_size, int):
        image_size = (image_size, image_size)
    if grpc:
        return predict_grpc(server, model, images, version, image_size, timeout, signature)
    return predict_rest(server, model, images, version, image_size, rest_format, timeout, signature)


# ----------------------------------------------------------------- command line


def main(argv):
    """The command line (python -m export.client): ClientError and bad flags are
    one-line errors with exit code 2 (dprime_tf.cli.run_main)."""
    from absl import flags

    from dprime_tf.cli import import_tensorflow_quietly
    from dprime_tf.errors import UserError
    FLAGS = flags.FLAGS
    if not FLAGS.name:
        raise UserError("--name is required: the model name in TF Serving's models.config")
    if len(argv) < 2:
        raise UserError("give one or more image files after the flags")
    labels = None
    if FLAGS.labels:
        try:
            with open(FLAGS.labels) as f:
                labels = [line.strip() for line in f if line.strip()]
        except OSError as e:
            raise UserError(f"cannot read --labels={FLAGS.labels}: {e.strerror}") from None
    server = FLAGS.server or ("localhost:8500" if FLAGS.grpc else "localhost:8501")
    import_tensorflow_quietly()  # image files are decoded with TensorFlow: no C++ start-up lines
    try:
        result = predict(server, FLAGS.name, argv[1:], version=FLAGS.version, grpc=FLAGS.grpc,
                         image_size=FLAGS.image_size, timeout=FLAGS.timeout, rest_format=FLAGS.rest_format)
    except ClientError as e:
        raise UserError(" ".join(str(e).split())) from None
    for path, top in zip(argv[1:], result.top_k(FLAGS.top_k)):
        shown = ", ".join(f"{_label(c, labels)} {p:.3f}" for c, p in top)
        print(f"{path}: {_label(top[0][0], labels)} ({shown})")


def _label(c, labels):
    return labels[c] if labels and c < len(labels) else str(c)


def _define_flags():
    from absl import flags
    flags.DEFINE_string("server", None, "host:port of TF Serving (default localhost:8501, or localhost:8500 "
                        "with --grpc); http(s):// prefixes are allowed for REST.")
    flags.DEFINE_string("name", None, "Model name (as in models.config; python -m export's --name).")
    flags.DEFINE_alias("model", "name")  # its name before 0.3 (--model is a model file elsewhere)
    flags.DEFINE_integer("version", None, "Model version (default: the latest served).")
    flags.DEFINE_bool("grpc", False, "Use the gRPC API instead of REST.")
    flags.DEFINE_integer("image_size", None, "Input size; default: read from the model metadata.")
    flags.DEFINE_enum("rest_format", "columnar", ["columnar", "row"], "REST body: 'inputs' or 'instances'.")
    flags.DEFINE_integer("top_k", 3, "Classes shown per image.")
    flags.DEFINE_string("labels", None, "Text file with one class name per line.")
    flags.DEFINE_float("timeout", DEFAULT_TIMEOUT, "Seconds per request.")


def console_main():
    from dprime_tf.cli import run_main
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    _define_flags()
    run_main(main)


if __name__ == "__main__":
    console_main()
