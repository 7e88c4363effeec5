"""Paths and TF Serving's models.config, without TensorFlow.

Everything here runs before TensorFlow is imported, so that the usual
mistakes (a missing model, an existing version, a malformed models.config)
fail in a fraction of a second with a one-line `ExportError`. The outputs
are written through `dprime_tf.atomic.Staging` (hidden `.tmp-` siblings,
renamed into place after all checks passed; TF Serving only loads numeric
version directories, so it never sees a temporary one).
"""

from __future__ import annotations

import os
import re
import zipfile

from dprime_tf.errors import UserError

MODEL_FILE = "model.keras"  # inside a training run directory
MODELS_CONFIG = "models.config"  # inside the export base directory
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*\Z")


class ExportError(UserError):
    """An export cannot proceed or did not pass its checks; the message says why."""


# ----------------------------------------------------------------- inputs


def resolve_model_path(spec: str) -> str:
    """A `.keras` file, or a training run directory holding `model.keras` -> the file's path.

    Checks that the file is a readable zip archive with a Keras config, so
    a truncated or foreign file fails before TensorFlow is imported.
    """
    if not spec:
        raise ExportError("--model is required: a trained .keras file or a training run directory")
    path = os.path.abspath(os.path.expanduser(spec))
    if os.path.isdir(path):
        candidate = os.path.join(path, MODEL_FILE)
        if not os.path.isfile(candidate):
            raise ExportError(f"run directory {spec} has no {MODEL_FILE} (has the training run finished?)")
        path = candidate
    elif not os.path.exists(path):
        raise ExportError(f"model {spec} does not exist (pass a .keras file or a training run directory)")
    elif not path.endswith(".keras"):
        raise ExportError(f"model {spec} is not a .keras file (pass a .keras file or a training run directory)")
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
        raise ExportError(f"model file {path} is not a valid .keras archive ({_one_line(e)})") from None
    if bad is not None:
        raise ExportError(f"model file {path} is corrupt (bad CRC for {bad})")
    if "config.json" not in names:
        raise ExportError(f"model file {path} is not a Keras model archive (no config.json inside)")
    return path


def validate_name(name: str) -> str:
    if not name or not _NAME.match(name):
        raise ExportError(f"--name={name!r} must be letters, digits, '.', '_' or '-', starting with a letter "
                          "or digit (it is a directory name and part of the serving URL)")
    return name


def validate_version(version) -> int:
    """TF Serving versions are non-negative integers (the directory names)."""
    text = str(version).strip()
    if isinstance(version, bool) or not re.fullmatch(r"[0-9]+", text):
        raise ExportError(f"--version={version!r} must be a non-negative integer")
    return int(text)


def version_dir(base: str, name: str, version: int) -> str:
    return os.path.join(os.path.abspath(os.path.expanduser(base)), name, str(int(version)))


def check_destinations(paths, overwrite: bool) -> None:
    """Each existing destination needs --overwrite."""
    for path in paths:
        if path and os.path.lexists(path) and not overwrite:
            what = "version directory" if os.path.isdir(path) else "file"
            raise ExportError(f"{what} {path} already exists (pass --overwrite to replace it)")


def _one_line(error) -> str:
    text = " ".join(str(error).split())
    return text or type(error).__name__


# ----------------------------------------------------------------- models.config
#
# TF Serving's --model_config_file is a text-format ModelServerConfig:
#
#   model_config_list {
#     config {
#       name: "cifar"
#       base_path: "/abs/path/exports/cifar"
#       model_platform: "tensorflow"
#     }
#   }
#
# Read, edited and written with tensorflow-serving-api's ModelServerConfig
# proto: other entries keep their order and fields (version policies,
# labels); comments are lost (text_format does not keep them).


def _config_proto():
    try:
        from google.protobuf import text_format
        from tensorflow_serving.config import model_server_config_pb2
    except ImportError:
        raise ExportError("writing models.config needs TF Serving's protos: "
                          "pip install tensorflow-serving-api") from None
    return text_format, model_server_config_pb2


def validate_models_config(text: str, path: str = MODELS_CONFIG):
    """The ModelServerConfig proto of `text`; ExportError naming `path` if it does not parse."""
    text_format, pb2 = _config_proto()
    try:
        return text_format.Parse(text, pb2.ModelServerConfig())
    except text_format.ParseError as e:
        where = f" at line {e.GetLine()}, column {e.GetColumn()}" if e.GetLine() else ""
        raise ExportError(f"{path}: not a valid TF Serving models.config{where} "
                          f"({_one_line(re.sub(r'^[0-9:]+ : ', '', str(e)))}); fix the file or move it away") from None


def models_config_text(existing: str | None, name: str, base_path: str, path: str = MODELS_CONFIG) -> str:
    """The models.config text with `name` served from `base_path` (platform "tensorflow").

    `existing` is the current file's text (None when there is none); other
    entries are kept in their order. Raises ExportError for a file this
    cannot edit (invalid, not a model_config_list, `name` listed twice).
    """
    config = validate_models_config(existing or "", path)
    kind = config.WhichOneof("config")
    if kind not in (None, "model_config_list"):
        raise ExportError(f"{path}: has a {kind}; only a model_config_list can be updated "
                          "(edit the file by hand or use another --output_dir)")
    entries = [c for c in config.model_config_list.config if c.name == name]
    if len(entries) > 1:
        raise ExportError(f"{path}: lists model {name!r} {len(entries)} times; fix the file by hand")
    entry = entries[0] if entries else config.model_config_list.config.add(name=name)
    entry.base_path = base_path
    entry.ClearField("model_type")  # the deprecated spelling of model_platform; TF Serving refuses both
    entry.model_platform = "tensorflow"
    text_format, _ = _config_proto()
    return text_format.MessageToString(config, as_utf8=True)


def read_models_config(path: str) -> str | None:
    if not os.path.exists(path):
        return None
    try:
        if os.path.getsize(path) > 1 << 20:
            raise ExportError(f"{path} is larger than 1 MiB: not a models.config; fix the file or move it away")
        with open(path, encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise ExportError(f"cannot read {path}: {_one_line(e)}") from None


def plan_models_config(base: str, name: str) -> tuple[str, str, str | None]:
    """(path, new text, old text or None) for adding `name` to `<base>/models.config`."""
    base = os.path.abspath(os.path.expanduser(base))
    path = os.path.join(base, MODELS_CONFIG)
    old = read_models_config(path)
    return path, models_config_text(old, name, os.path.join(base, name), path), old
