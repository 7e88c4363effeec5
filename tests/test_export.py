"""The export package: `python -m export` (SavedModel for TF Serving + ONNX),
its serving-contract checks, the REST/gRPC client and the file-level
guarantees (atomic writes, models.config merging, one-line errors).

One tiny network (every primitive in both cell types) is exported once
through the command line by a module-scoped fixture; the tests inspect that
export. TF Serving itself is not installable here: the client is checked
against a local HTTP server that validates requests against TF Serving's
documented REST format and a real gRPC PredictionService server, both
answering with the exported SavedModel.
"""

import json
import os
import re
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import tensorflow as tf

from dprime_tf.spaces.cnn.genotype import Genotype
from dprime_tf.spaces.cnn.network import build_cifar_network
from export import client, layout
from export import onnx as onnx_export
from export import pipeline, saved_model
from export.layout import ExportError

# Keras' own model.save on NumPy 2 (not this package's code).
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAME, VERSION = "tiny", 1
TOL = 1e-4

# Every primitive in both cells, the reduction cell's at stride 2 (edges reading inputs 0/1).
ALL_OPS = Genotype(
    normal=(("max_pool_3x3", 0), ("avg_pool_3x3", 1), ("skip_connect", 0), ("sep_conv_3x3", 2),
            ("sep_conv_5x5", 1), ("dil_conv_3x3", 3), ("dil_conv_5x5", 0), ("skip_connect", 4)),
    normal_concat=(2, 3, 4, 5),
    reduce=(("max_pool_3x3", 0), ("avg_pool_3x3", 1), ("skip_connect", 0), ("sep_conv_3x3", 1),
            ("sep_conv_5x5", 0), ("dil_conv_3x3", 1), ("dil_conv_5x5", 0), ("sep_conv_3x3", 4)),
    reduce_concat=(3, 4, 5),
)
OTHER_MODELS = """# served next to ours; must survive the export untouched
model_config_list {
  config {
    name: 'other'
    base_path: '/srv/models/other'
    model_platform: 'tensorflow'
    model_version_policy { specific { versions: 3 } }
  }
}
"""


def run_cli(module, *args, timeout=600):
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def tree(path):
    """{relative path: (size, mtime_ns) for files, None for directories} of everything under `path`."""
    out = {}
    for d, dirs, files in os.walk(path):
        for name in dirs:
            out[os.path.relpath(os.path.join(d, name), path)] = None
        for name in files:
            st = os.lstat(os.path.join(d, name))
            out[os.path.relpath(os.path.join(d, name), path)] = (st.st_size, st.st_mtime_ns)
    return out


# ----------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A fake training run directory: model.keras (random weights, moved BN statistics), genotype.json, flags.txt."""
    path = tmp_path_factory.mktemp("run")
    model = build_cifar_network(ALL_OPS, init_channels=8, layers=5, auxiliary=True, drop_path_prob=0.3)
    # Non-trivial BN moving statistics, so inference mode differs from training mode.
    for w in model.weights:
        if "moving_mean" in w.path:
            w.assign(tf.constant(np.random.default_rng(1).normal(0, 0.1, w.shape), tf.float32))
        elif "moving_variance" in w.path:
            w.assign(tf.constant(np.random.default_rng(2).uniform(0.5, 1.5, w.shape), tf.float32))
    model.save(str(path / "model.keras"))
    (path / "genotype.json").write_text(ALL_OPS.to_json())
    (path / "flags.txt").write_text("--init_channels=8\n--layers=5\n")
    return path


@pytest.fixture(scope="module")
def keras_model(run_dir):
    return saved_model.load_keras_model(str(run_dir / "model.keras"))


@pytest.fixture(scope="module")
def exported(tmp_path_factory, run_dir):
    """`python -m export` once, into a base directory whose models.config already serves another model."""
    base = tmp_path_factory.mktemp("exports")
    (base / "models.config").write_text(OTHER_MODELS)
    onnx_path = base / f"{NAME}-{VERSION}.onnx"
    proc = run_cli("export", f"--model={run_dir}", f"--output_dir={base}", f"--name={NAME}",
                   f"--version={VERSION}", f"--onnx={onnx_path}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {"base": base, "dir": base / NAME / str(VERSION), "onnx": onnx_path, "stdout": proc.stdout,
            "stderr": proc.stderr}


@pytest.fixture(scope="module")
def sm_run(exported):
    return saved_model.load(str(exported["dir"]))


@pytest.fixture(scope="module")
def onnx_run(exported):
    return onnx_export.load(str(exported["onnx"]))


def keras_logits(model, images):
    return np.asarray(model(saved_model.normalize(images), training=False))


# ----------------------------------------------------------------- layout


def test_genotype_covers_every_op_in_both_cells():
    ops = {"max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3",
           "dil_conv_5x5"}
    assert {op for op, _ in ALL_OPS.normal} == ops
    assert {op for op, i in ALL_OPS.reduce if i < 2} == ops


def test_tf_serving_layout_and_models_config(exported):
    base, version_dir = exported["base"], exported["dir"]
    assert (version_dir / "saved_model.pb").is_file()
    assert (version_dir / "variables" / "variables.index").is_file()
    assert list((version_dir / "variables").glob("variables.data-*"))
    assert sorted(os.listdir(base / NAME)) == [str(VERSION)]  # no temporaries left
    assert not [p for p in os.listdir(base) if p.startswith(".")]
    # Readable by a model server running as another user (not mkdtemp's 0700).
    umask = os.umask(0o022)
    os.umask(umask)
    assert os.stat(version_dir).st_mode & 0o777 == 0o777 & ~umask
    assert os.stat(exported["onnx"]).st_mode & 0o777 == 0o666 & ~umask

    entries = parse_models_config((base / "models.config").read_text())
    assert list(entries) == ["other", NAME]  # the other entry kept, first
    assert entries["other"] == parse_models_config(OTHER_MODELS)["other"]
    assert entries[NAME].base_path == str(base / NAME) and os.path.isabs(entries[NAME].base_path)
    assert entries[NAME].model_platform == "tensorflow"
    assert list(entries["other"].model_version_policy.specific.versions) == [3]


def test_cli_prints_the_figures(exported):
    out = exported["stdout"]
    assert re.search(r"Keras vs SavedModel: max \|diff\| \S+, classes agree", out)
    assert re.search(r"Keras vs ONNX: +max \|diff\| \S+, classes agree", out)
    assert "all standard TensorFlow ops" in out
    assert "fresh process" in out
    assert f"wrote {exported['dir']}" in out


# ----------------------------------------------------------------- contract


def test_signature(exported):
    found = saved_model.check_signature(str(exported["dir"]), (32, 32))
    assert found["inputs"] == {"images": ("uint8", [-1, 32, 32, 3])}
    assert found["outputs"] == {"logits": ("float32", [-1, 10]), "probabilities": ("float32", [-1, 10]),
                                "classes": ("int64", [-1])}
    # The same through the Python loader.
    sig = tf.saved_model.load(str(exported["dir"])).signatures["serving_default"]
    args, kwargs = sig.structured_input_signature
    assert not args and list(kwargs) == ["images"]
    assert kwargs["images"].dtype == tf.uint8 and kwargs["images"].shape.as_list() == [None, 32, 32, 3]
    assert {k: v.dtype for k, v in sig.structured_outputs.items()} == {
        "logits": tf.float32, "probabilities": tf.float32, "classes": tf.int64}


def test_auxiliary_head_is_not_exported(exported, keras_model):
    reader = tf.train.load_checkpoint(str(exported["dir"] / "variables" / "variables"))
    saved = [k for k in reader.get_variable_to_shape_map() if "VARIABLE_VALUE" in k]
    aux = len(keras_model.auxiliary_head.weights)
    assert aux > 0 and len(saved) == len(keras_model.weights) - aux - 1  # minus drop_path_prob


def test_onnx_signature(exported):
    found = onnx_export.check_signature(str(exported["onnx"]), (32, 32))
    assert found["opset"] == onnx_export.DEFAULT_OPSET == 17
    assert found["inputs"] == {"images": ("uint8", ["batch", 32, 32, 3])}
    assert found["outputs"] == {"logits": ("float32", ["batch", 10]), "probabilities": ("float32", ["batch", 10]),
                                "classes": ("int64", ["batch"])}


def test_parity_keras_saved_model_onnx(keras_model, sm_run, onnx_run):
    images = pipeline.random_images(8, (32, 32), seed=123)
    expected = keras_logits(keras_model, images)
    assert np.ptp(expected) > 0.1  # outputs that can tell a broken graph apart
    sm, ox = sm_run(images), onnx_run(images)
    for outputs in (sm, ox):
        assert np.max(np.abs(outputs["logits"] - expected)) < TOL
        np.testing.assert_array_equal(outputs["classes"], np.argmax(expected, -1))
        np.testing.assert_allclose(outputs["probabilities"], tf.nn.softmax(expected).numpy(), atol=1e-5)
    # The comparison is sensitive to the preprocessing: un-normalized pixels give other logits.
    raw = np.asarray(keras_model(images.astype("float32"), training=False))
    assert np.max(np.abs(raw - expected)) > 1e-3


@pytest.mark.parametrize("batch", [1, 7])
def test_dynamic_batch(keras_model, sm_run, onnx_run, batch):
    images = pipeline.random_images(batch, (32, 32), seed=batch)
    expected = keras_logits(keras_model, images)
    for outputs in (sm_run(images), onnx_run(images)):
        assert outputs["logits"].shape == (batch, 10) and outputs["classes"].shape == (batch,)
        assert np.max(np.abs(outputs["logits"] - expected)) < TOL


def test_loads_in_a_fresh_process_without_the_project(exported, sm_run):
    images = pipeline.random_images(3, (32, 32), seed=5)
    expected = sm_run(images)
    result = saved_model.check_fresh_process(str(exported["dir"]), images, expected, TOL)
    assert result["project_on_path"] == []  # python -I from a temporary directory
    assert result["max_abs_diff"] <= TOL
    np.testing.assert_array_equal(result["outputs"]["classes"], expected["classes"])


def test_only_standard_ops(exported):
    ops = saved_model.check_standard_ops(str(exported["dir"]))
    assert {"Conv2D", "DepthwiseConv2dNative", "MaxPool", "AvgPool", "Softmax", "ArgMax", "Cast"} <= set(ops)
    assert not set(ops) & saved_model.PYTHON_OPS


def test_op_check_rejects_python_and_custom_ops(tmp_path):
    class WithPython(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32)])
        def serve(self, x):
            return {"y": tf.py_function(lambda a: a * 2.0, [x], tf.float32)}

    module = WithPython()
    path = str(tmp_path / "py")
    tf.saved_model.save(module, path, signatures={"serving_default": module.serve})
    ops, _ = saved_model.graph_ops(path)
    assert "EagerPyFunc" in ops  # inside a library function, not the top graph
    with pytest.raises(ExportError, match="EagerPyFunc"):
        saved_model.check_standard_ops(path)

    # A custom op (as a tf.load_op_library kernel would appear).
    proto = saved_model.read_proto(path)
    for function in proto.meta_graphs[0].graph_def.library.function:
        for node in function.node_def:
            if node.op == "EagerPyFunc":
                node.op = "DprimeCustomOp"
    with open(os.path.join(path, "saved_model.pb"), "wb") as f:
        f.write(proto.SerializeToString())
    with pytest.raises(ExportError, match="DprimeCustomOp"):
        saved_model.check_standard_ops(path)


# ----------------------------------------------------------------- failures


def _corrupt_archive(tmp_path, run_dir):
    """A valid zip whose Keras config names an unknown class."""
    import zipfile
    path = tmp_path / "bad_config.keras"
    with zipfile.ZipFile(run_dir / "model.keras") as src, zipfile.ZipFile(path, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename == "config.json":
                config = json.loads(data)
                config["class_name"] = "NoSuchNetwork"
                config.pop("registered_name", None)
                data = json.dumps(config).encode()
            dst.writestr(item, data)
    return path


@pytest.mark.parametrize("case", ["missing", "run_dir_without_model", "truncated_keras", "bad_keras_config",
                                  "existing_version"])
def test_bad_inputs_fail_with_one_line(case, tmp_path, run_dir, exported):
    base = exported["base"]
    version = VERSION if case == "existing_version" else 2
    onnx_path = base / f"{NAME}-{version}.onnx"
    if case == "missing":
        model = tmp_path / "no_such_run"
    elif case == "run_dir_without_model":
        model = tmp_path / "unfinished_run"
        model.mkdir()
        (model / "genotype.json").write_text(ALL_OPS.to_json())
    elif case == "truncated_keras":
        model = tmp_path / "model.keras"
        model.write_bytes((run_dir / "model.keras").read_bytes()[:50_000])
    elif case == "bad_keras_config":
        model = _corrupt_archive(tmp_path, run_dir)
    else:
        model = run_dir
    before = tree(base)
    proc = run_cli("export", f"--model={model}", f"--export_base={base}", f"--name={NAME}",
                   f"--version={version}", f"--onnx={onnx_path}")
    assert proc.returncode == 2
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    expected = {"missing": "does not exist", "run_dir_without_model": "has no model.keras",
                "truncated_keras": "not a valid .keras archive", "bad_keras_config": "cannot load Keras model",
                "existing_version": "already exists"}[case]
    assert expected in lines[0]
    assert tree(base) == before  # nothing written, nothing touched


def test_failed_parity_leaves_nothing_behind(tmp_path, run_dir, monkeypatch):
    """A SavedModel that drifts from Keras fails the export; an existing version it was to replace survives."""
    base = tmp_path / "exports"
    old_version = base / NAME / "1"
    old_version.mkdir(parents=True)
    (old_version / "saved_model.pb").write_bytes(b"previous export")
    onnx_path = base / "tiny.onnx"
    onnx_path.write_bytes(b"previous onnx")
    before = tree(base)

    real_load = saved_model.load

    def drifting_load(path):
        run = real_load(path)
        return lambda images: {**run(images), "logits": run(images)["logits"] + 1e-3}

    monkeypatch.setattr(saved_model, "load", drifting_load)
    with pytest.raises(ExportError, match=r"parity check failed.*nothing was written"):
        pipeline.export_model(str(run_dir), str(base), NAME, 1, onnx_path=str(onnx_path), overwrite=True,
                              fresh_process_check=False, log=lambda s: None)
    assert tree(base) == before
    assert (old_version / "saved_model.pb").read_bytes() == b"previous export"

    # Without the fault, --overwrite replaces the version (ONNX left out to save time).
    monkeypatch.setattr(saved_model, "load", real_load)
    result = pipeline.export_model(str(run_dir), str(base), NAME, 1, overwrite=True, fresh_process_check=False,
                                   log=lambda s: None)
    assert result.parity.ok and result.parity.keras_vs_saved_model < TOL
    assert sorted(os.listdir(base / NAME)) == ["1"] and (old_version / "variables").is_dir()
    saved_model.check_signature(str(old_version), (32, 32))
    assert onnx_path.read_bytes() == b"previous onnx"
    assert "base_path" in (base / "models.config").read_text()
    assert not [p for p in os.listdir(base) if p.startswith(".")]


def test_flag_validation_is_fast_and_one_line(tmp_path, tmp_path_factory, run_dir):
    corrupt = tmp_path_factory.mktemp("corrupt")
    (corrupt / "models.config").write_text("model_config_list { config { name: 'a' }\n")
    for args, message in [((f"--model={run_dir}", f"--output_dir={tmp_path}", "--name=a/b", "--version=1"),
                           "--name"),
                          ((f"--model={run_dir}", f"--output_dir={tmp_path}", "--name=m", "--version=v1"),
                           "--version"),
                          ((f"--model={run_dir}", f"--output_dir={tmp_path}", "--name=m", "--version=1",
                            "--opset=9"), "--opset"),
                          ((f"--output_dir={tmp_path}",), "--model, --name, --version are required"),
                          ((f"--model={run_dir}", f"--output_dir={corrupt}", "--name=m", "--version=1"),
                           f"{corrupt / 'models.config'}: not a valid TF Serving models.config at line 1")]:
        proc = run_cli("export", *args)
        assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1 and message in proc.stderr, proc.stderr
    assert os.listdir(tmp_path) == []
    assert os.listdir(corrupt) == ["models.config"]


@pytest.mark.parametrize("module", ["export", "export.client", "export.bench"])
@pytest.mark.parametrize("args", [("--nosuchflag",), ()])
def test_bad_flags_are_one_line_with_exit_code_2(module, args):
    """Unknown flags and missing required ones, before TensorFlow loads."""
    proc = run_cli(module, *args, timeout=120)
    lines = proc.stderr.splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert ("nosuchflag" if args else "required") in lines[0]


# ----------------------------------------------------------------- models.config


def parse_models_config(text):
    """{name: ModelConfig} through TF Serving's own proto (tensorflow-serving-api)."""
    pytest.importorskip("tensorflow_serving.config.model_server_config_pb2")
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2
    config = text_format.Parse(text, model_server_config_pb2.ModelServerConfig())
    return {c.name: c for c in config.model_config_list.config}


def test_models_config_editing():
    parse = parse_models_config
    fresh = layout.models_config_text(None, "m", "/x/m")
    assert parse(fresh)["m"].base_path == "/x/m"
    added = layout.models_config_text(OTHER_MODELS, "m", "/x/m")
    assert list(parse(added)) == ["other", "m"] and parse(added)["other"] == parse(OTHER_MODELS)["other"]
    assert layout.models_config_text(added, "m", "/x/m") == added  # idempotent
    moved = layout.models_config_text(added, "other", "/new/other")
    entries = parse(moved)
    assert list(entries) == ["other", "m"] and entries["other"].base_path == "/new/other"
    assert list(entries["other"].model_version_policy.specific.versions) == [3]  # kept
    assert "# served next to ours" not in moved  # text_format drops comments (BUILD.md says so)
    legacy = parse(layout.models_config_text("model_config_list { config { name: 'm' model_type: TENSORFLOW } }",
                                             "m", "/m"))["m"]
    assert legacy.model_platform == "tensorflow" and not legacy.model_type  # TF Serving refuses both set
    one_line = 'model_config_list { config { name: "a" base_path: "/a" model_platform: "tensorflow" } }'
    assert sorted(parse(layout.models_config_text(one_line, "b", "/b"))) == ["a", "b"]
    assert parse(layout.models_config_text("# nothing yet\n", "b", '/we"ird\\path'))["b"].base_path == '/we"ird\\path'
    for bad, message in [("model_config_list { config { name: 'a' }", "not a valid TF Serving models.config"),
                         ("custom_model_config { }", "only a model_config_list can be updated"),
                         ("model_config_list { config { name: 'm' } config { name: 'm' } }", "lists model 'm' 2")]:
        with pytest.raises(ExportError, match=f"^/x/models.config: .*{message}") as error:
            layout.models_config_text(bad, "m", "/m", "/x/models.config")
        assert "\n" not in str(error.value)


# ----------------------------------------------------------------- client


class FakeTFServing(BaseHTTPRequestHandler):
    """TF Serving's REST API for one model, per its documentation
    (https://www.tensorflow.org/tfx/serving/api_rest): validates the
    request strictly and answers from the exported SavedModel."""

    model_name = NAME
    versions = (VERSION,)
    run = None  # SavedModel runner
    signature = None  # {"inputs": ..., "outputs": ...} JSON of the SignatureDef
    requests = []

    def log_message(self, *args):
        pass

    def _reply(self, code, body):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _route(self, suffix):
        m = re.fullmatch(r"/v1/models/([^/:]+)(?:/versions/(\d+))?" + re.escape(suffix), self.path)
        if not m:
            return None
        if m.group(1) != self.model_name or (m.group(2) and int(m.group(2)) not in self.versions):
            self._reply(404, {"error": f"Servable not found for request: Specific({m.group(1)}, {m.group(2)})"})
            return False
        return m.group(2) or str(max(self.versions))

    def do_GET(self):
        version = self._route("/metadata")
        if version is None:
            return self._reply(404, {"error": "Malformed request: GET " + self.path})
        if version:
            self._reply(200, {"model_spec": {"name": self.model_name, "signature_name": "", "version": version},
                              "metadata": {"signature_def": {"signature_def": {"serving_default": self.signature}}}})

    def do_POST(self):
        version = self._route(":predict")
        if version is None:
            return self._reply(404, {"error": "Malformed request: POST " + self.path})
        if not version:
            return
        length = int(self.headers.get("Content-Length", 0))
        assert 0 < length < 50_000_000
        body = json.loads(self.rfile.read(length))
        type(self).requests.append((self.path, body))
        try:
            assert body.get("signature_name", "serving_default") == "serving_default"
            assert ("inputs" in body) != ("instances" in body), "exactly one of inputs / instances"
            assert set(body) <= {"signature_name", "inputs", "instances"}
            if "inputs" in body:
                assert set(body["inputs"]) == {"images"}
                images = np.array(body["inputs"]["images"])
            else:
                assert all(isinstance(i, dict) and set(i) == {"images"} for i in body["instances"])
                images = np.array([i["images"] for i in body["instances"]])
            assert images.dtype.kind == "i" and images.ndim == 4 and images.shape[1:] == (32, 32, 3)
            assert images.min() >= 0 and images.max() <= 255
        except AssertionError as e:
            return self._reply(400, {"error": f"Malformed request: {e}"})
        outputs = {k: v.tolist() for k, v in self.run(images.astype(np.uint8)).items()}
        if "inputs" in body:
            self._reply(200, {"outputs": outputs})
        else:
            self._reply(200, {"predictions": [{k: outputs[k][i] for k in outputs} for i in range(len(images))]})


@pytest.fixture(scope="module")
def rest_server(exported, sm_run):
    from google.protobuf import json_format
    proto = saved_model.read_proto(str(exported["dir"]))
    FakeTFServing.run = staticmethod(sm_run)
    FakeTFServing.signature = json_format.MessageToDict(  # TF Serving keeps proto field names
        proto.meta_graphs[0].signature_def["serving_default"], preserving_proto_field_name=True)
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeTFServing)
    server.timeout = 5
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


def _image_files(tmp_path):
    rng = np.random.default_rng(7)
    paths, arrays = [], []
    for i, (h, w) in enumerate([(32, 32), (40, 48)]):
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        path = tmp_path / f"image{i}.png"
        path.write_bytes(tf.io.encode_png(image).numpy())
        paths.append(str(path))
        arrays.append(image)
    return paths, arrays


@pytest.mark.parametrize("rest_format", ["columnar", "row"])
def test_rest_client(rest_server, sm_run, rest_format):
    FakeTFServing.requests.clear()
    images = pipeline.random_images(3, (32, 32), seed=11)
    result = client.predict(rest_server, NAME, images, version=VERSION, rest_format=rest_format, timeout=30)
    expected = sm_run(images)
    np.testing.assert_array_equal(result.classes, expected["classes"])
    np.testing.assert_allclose(result.logits, expected["logits"], atol=1e-6)
    np.testing.assert_allclose(result.probabilities, expected["probabilities"], atol=1e-6)
    (path, body), = FakeTFServing.requests
    assert path == f"/v1/models/{NAME}/versions/{VERSION}:predict"
    assert ("inputs" if rest_format == "columnar" else "instances") in body
    assert body["signature_name"] == "serving_default"


def test_rest_client_files_and_errors(rest_server, sm_run, tmp_path):
    paths, arrays = _image_files(tmp_path)
    FakeTFServing.requests.clear()
    result = client.predict(rest_server, NAME, paths, timeout=30)  # size from the metadata, latest version
    (path, _), = FakeTFServing.requests
    assert path == f"/v1/models/{NAME}:predict"
    batch = client.load_images(paths, (32, 32))
    np.testing.assert_array_equal(batch[0], arrays[0])  # decoded losslessly, not resized
    assert batch[1].shape == (32, 32, 3) and abs(float(batch[1].mean()) - float(arrays[1].mean())) < 10
    np.testing.assert_array_equal(result.classes, sm_run(batch)["classes"])
    assert len(result.top_k(3)) == 2 and len(result.top_k(3)[0]) == 3

    with pytest.raises(client.ClientError, match="HTTP 404: Servable not found"):
        client.predict(rest_server, "no_such_model", arrays[:1], image_size=32, timeout=30)
    with pytest.raises(client.ClientError, match="127.0.0.1"):
        client.predict("127.0.0.1:1", NAME, arrays[:1], image_size=32, timeout=5)  # nothing listens on port 1


def test_client_cli(rest_server, tmp_path):
    paths, _ = _image_files(tmp_path)
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(f"class{i}" for i in range(10)))
    proc = run_cli("export.client", f"--server={rest_server}", f"--name={NAME}", f"--labels={labels}",
                   "--top_k=2", *paths, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 2 and all(re.match(r".*image\d\.png: class\d \(class\d 0\.\d+, class\d 0\.\d+\)$", l)
                                   for l in lines), proc.stdout
    proc = run_cli("export.client", f"--server={rest_server}", "--model=missing", "--image_size=32", paths[0],
                   timeout=300)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "Traceback" not in proc.stderr


def test_grpc_client(exported, sm_run):
    grpc = pytest.importorskip("grpc")
    pytest.importorskip("tensorflow_serving.apis.prediction_service_pb2_grpc")
    from concurrent import futures

    from tensorflow_serving.apis import get_model_metadata_pb2, predict_pb2, prediction_service_pb2_grpc

    proto = saved_model.read_proto(str(exported["dir"]))
    seen = []

    class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
        def Predict(self, request, context):
            seen.append(request)
            if request.model_spec.name != NAME:
                context.abort(grpc.StatusCode.NOT_FOUND, f"Servable not found for request: Latest({request.model_spec.name})")
            tensor = request.inputs["images"]
            if set(request.inputs) != {"images"} or tensor.dtype != tf.uint8.as_datatype_enum:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, "expected one uint8 input 'images'")
            outputs = sm_run(tf.make_ndarray(tensor))
            response = predict_pb2.PredictResponse()
            response.model_spec.CopyFrom(request.model_spec)
            response.model_spec.version.value = VERSION
            for key, value in outputs.items():
                response.outputs[key].CopyFrom(tf.make_tensor_proto(value))
            return response

        def GetModelMetadata(self, request, context):
            signatures = get_model_metadata_pb2.SignatureDefMap()
            signatures.signature_def["serving_default"].CopyFrom(proto.meta_graphs[0].signature_def["serving_default"])
            response = get_model_metadata_pb2.GetModelMetadataResponse()
            response.model_spec.name = request.model_spec.name
            response.metadata["signature_def"].Pack(signatures)
            return response

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(PredictionService(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        address = f"127.0.0.1:{port}"
        images = pipeline.random_images(4, (32, 32), seed=3)
        result = client.predict(address, NAME, images, version=VERSION, grpc=True, timeout=30)
        expected = sm_run(images)
        np.testing.assert_array_equal(result.classes, expected["classes"])
        np.testing.assert_allclose(result.logits, expected["logits"], atol=1e-6)
        request = seen[-1]
        assert request.model_spec.name == NAME and request.model_spec.signature_name == "serving_default"
        assert request.model_spec.version.value == VERSION
        assert [d.size for d in request.inputs["images"].tensor_shape.dim] == [4, 32, 32, 3]
        with pytest.raises(client.ClientError, match="NOT_FOUND"):
            client.predict(address, "other", images, grpc=True, image_size=32, timeout=30)
    finally:
        server.stop(grace=None).wait(timeout=10)
