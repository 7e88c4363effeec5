"""Paths, atomic staging and TF Serving's models.config, without TensorFlow.

Everything here runs before TensorFlow is imported, so that the usual
mistakes (a missing model, an existing version, a malformed models.config)
fail in a fraction of a second with a one-line `ExportError`.

Atomicity: every output is first written to a hidden temporary sibling of
its destination (`.tmp-<name>-XXXX`, same directory, hence same file
system) and renamed into place only after all checks passed. TF Serving
only loads numeric version directories, so it never sees a temporary one.
Replacing an existing version (`--overwrite`) renames the old one aside,
renames the new one in, then deletes the old one: for a moment (two
renames) the version is absent, which a polling model server at worst
notices as an unload and a reload.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
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


# ----------------------------------------------------------------- staging


class Staging:
    """Temporary siblings of destinations, renamed into place by `commit()`.

        with Staging() as stage:
            tmp = stage.temp_dir(final_dir)     # write into tmp ...
            stage.commit()                      # all or nothing

    Leaving the block without a successful `commit()` (an exception, a
    failed check) removes every temporary and any parent directory that
    was created for them and is still empty.
    """

    def __init__(self):
        self._pairs = []  # (temp, final)
        self._created = []  # directories this staging created, parents first
        self._committed = False

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.cleanup()
        return False

    def _makedirs(self, directory):
        missing = []
        d = os.path.abspath(directory)
        while not os.path.isdir(d):
            missing.append(d)
            parent = os.path.dirname(d)
            if parent == d:
                break
            d = parent
        for d in reversed(missing):
            try:
                os.mkdir(d)
            except FileExistsError:
                if not os.path.isdir(d):
                    raise ExportError(f"cannot create directory {d}: a file is in the way") from None
                continue
            except OSError as e:
                raise ExportError(f"cannot create directory {d}: {e.strerror}") from None
            self._created.append(d)

    def temp_dir(self, final: str) -> str:
        parent, base = os.path.split(os.path.abspath(final))
        self._makedirs(parent)
        try:
            temp = tempfile.mkdtemp(prefix=f".tmp-{base}-", dir=parent)
        except OSError as e:
            raise ExportError(f"cannot write in {parent}: {e.strerror}") from None
        os.chmod(temp, 0o777 & ~_umask())  # mkdtemp's 0700 would hide it from a model server's user
        self._pairs.append((temp, os.path.abspath(final)))
        return temp

    def temp_file(self, final: str) -> str:
        parent, base = os.path.split(os.path.abspath(final))
        self._makedirs(parent)
        try:
            fd, temp = tempfile.mkstemp(prefix=f".tmp-{base}-", dir=parent)
        except OSError as e:
            raise ExportError(f"cannot write in {parent}: {e.strerror}") from None
        os.close(fd)
        os.chmod(temp, 0o666 & ~_umask())  # as open() would create it, not mkstemp's 0600
        self._pairs.append((temp, os.path.abspath(final)))
        return temp

    def commit(self) -> None:
        """Moves every temporary onto its destination, in creation order; if
        one move fails, the ones done are undone (previous contents restored).

        A file replaces its destination atomically (os.replace), keeping a
        hard link to the previous file for the undo. A directory cannot be
        replaced in one step: the previous one is renamed aside first.
        """
        for temp, _ in self._pairs:
            _fsync_tree(temp)
        done = []  # (final, backup or None)
        try:
            for temp, final in self._pairs:
                backup = None
                if os.path.lexists(final):
                    backup = _unique_sibling(final, ".old-")
                    if os.path.isdir(final) or os.path.isdir(temp):
                        os.rename(final, backup)
                    else:
                        try:
                            os.link(final, backup)
                        except OSError:  # no hard links on this file system
                            shutil.copy2(final, backup)
                try:
                    os.replace(temp, final)
                except BaseException:
                    _restore(final, backup)
                    raise
                done.append((final, backup))
        except BaseException:
            for final, backup in reversed(done):
                _restore(final, backup)
            raise
        self._committed = True
        self._pairs = []
        for _, backup in done:
            if backup:
                _remove(backup)
        _fsync_dirs({os.path.dirname(final) for final, _ in done})

    def cleanup(self) -> None:
        for temp, _ in self._pairs:
            _remove(temp)
        self._pairs = []
        if not self._committed:
            for d in reversed(self._created):
                try:
                    os.rmdir(d)
                except OSError:
                    pass
        self._created = []


def _unique_sibling(path, prefix):
    parent, base = os.path.split(path)
    for _ in range(100):
        candidate = os.path.join(parent, f"{prefix}{base}-{os.urandom(4).hex()}")
        if not os.path.lexists(candidate):
            return candidate
    raise ExportError(f"cannot find a free temporary name next to {path}")


def _restore(final, backup):
    """Puts `backup` (a previous `final`, or None if there was none) back in place."""
    if backup is None:
        _remove(final)
    elif os.path.isdir(backup) or os.path.isdir(final):
        if os.path.lexists(final) and final != backup:
            _remove(final)
        os.rename(backup, final)
    else:
        os.replace(backup, final)


def _umask():
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _remove(path):
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        try:
            os.remove(path)
        except OSError:
            pass


def _fsync_tree(path):
    """Best effort: data on disk before the rename makes it visible."""
    paths = [path] if os.path.isfile(path) else [os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs]
    for p in paths:
        try:
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError:
            pass


def _fsync_dirs(dirs):
    for d in dirs:
        try:
            fd = os.open(d, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError:
            pass


def write_text_atomically(path: str, text: str) -> None:
    """Writes a file through a temporary sibling and a rename."""
    with Staging() as stage:
        temp = stage.temp_file(path)
        with open(temp, "w") as f:
            f.write(text)
        stage.commit()


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
# The editor below works on tokens so that other models' entries, their
# extra fields (version policies, labels) and comments are kept byte for
# byte; only this model's name/base_path/model_platform are added or
# changed. When tensorflow-serving-api is installed the result is also
# parsed with its ModelServerConfig proto.

_TOKEN = re.compile(r"""
    (?P<space>\s+)
  | (?P<comment>\#[^\n]*)
  | (?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
  | (?P<word>[A-Za-z0-9_.+-]+)
  | (?P<punct>[{}<>:;,\[\]])
""", re.VERBOSE)
_CLOSE = {"{": "}", "<": ">"}


class _Field:
    def __init__(self, name, start, value=None, open_=None, close=None, fields=None):
        self.name, self.start = name, start  # token index of the name
        self.value = value  # token index of a scalar value
        self.open, self.close, self.fields = open_, close, fields  # message fields


def _tokenize(text, path):
    tokens, pos = [], 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m:
            line = text.count("\n", 0, pos) + 1
            raise ExportError(f"{path}: cannot parse models.config at line {line} (unexpected {text[pos]!r})")
        if m.lastgroup not in ("space", "comment"):
            tokens.append((m.lastgroup, m.group(), m.start(), m.end()))
        pos = m.end()
    return tokens


def _parse_fields(tokens, i, closing, path):
    fields = []
    while True:
        if i >= len(tokens):
            if closing is None:
                return fields, i
            raise ExportError(f"{path}: models.config ends inside a block (missing '{closing}')")
        kind, text, _, _ = tokens[i]
        if closing is not None and text == closing:
            return fields, i
        if text in (";", ","):
            i += 1
            continue
        if kind != "word":
            raise ExportError(f"{path}: cannot parse models.config near {text!r}")
        start = i
        i += 1
        if i < len(tokens) and tokens[i][1] == ":":
            i += 1
        if i >= len(tokens):
            raise ExportError(f"{path}: models.config ends after field {text!r}")
        if tokens[i][1] in _CLOSE:
            open_ = i
            sub, close = _parse_fields(tokens, i + 1, _CLOSE[tokens[i][1]], path)
            fields.append(_Field(text, start, open_=open_, close=close, fields=sub))
            i = close + 1
        elif tokens[i][0] in ("string", "word"):
            value = i
            i += 1
            while i < len(tokens) and tokens[i][0] == "string" and tokens[value][0] == "string":
                i += 1  # adjacent string literals concatenate
            fields.append(_Field(text, start, value=value))
        else:
            raise ExportError(f"{path}: cannot parse models.config near {tokens[i][1]!r}")


def _unquote(text):
    body = text[1:-1]
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "t": "\t"}.get(m.group(1), m.group(1)), body)


def _quote(value):
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _config_block(name, base_path, indent="  "):
    inner = indent * 2
    return (f"{indent}config {{\n{inner}name: {_quote(name)}\n{inner}base_path: {_quote(base_path)}\n"
            f"{inner}model_platform: \"tensorflow\"\n{indent}}}\n")


def models_config_text(existing: str | None, name: str, base_path: str, path: str = MODELS_CONFIG) -> str:
    """The models.config text with `name` served from `base_path` (platform "tensorflow").

    `existing` is the current file's text (None when there is none); other
    entries are kept as they are. Raises ExportError for a file this
    cannot edit (not a model_config_list, two entries with the same name).
    """
    if not existing or not existing.strip() or not _tokenize(existing, path):
        prefix = existing.rstrip("\n") + "\n" if existing and existing.strip() else ""
        return prefix + "model_config_list {\n" + _config_block(name, base_path) + "}\n"
    tokens = _tokenize(existing, path)
    top, _ = _parse_fields(tokens, 0, None, path)
    lists = [f for f in top if f.name == "model_config_list"]
    others = sorted({f.name for f in top if f.name != "model_config_list"})
    if others:
        raise ExportError(f"{path}: has {', '.join(others)}; only a model_config_list can be updated "
                          "(edit the file by hand or use another --output_dir)")
    if len(lists) != 1 or lists[0].fields is None:
        raise ExportError(f"{path}: expected one model_config_list {{ ... }} block")
    block = lists[0]
    entries = []
    for field in block.fields:
        if field.name != "config" or field.fields is None:
            raise ExportError(f"{path}: unexpected {field.name!r} in model_config_list")
        names = [f for f in field.fields if f.name == "name" and f.value is not None]
        if names and tokens[names[0].value][0] == "string" and _unquote(tokens[names[0].value][1]) == name:
            entries.append(field)
    if len(entries) > 1:
        raise ExportError(f"{path}: lists model {name!r} {len(entries)} times; fix the file by hand")
    edits = []  # (start char, end char, replacement)
    if entries:
        entry = entries[0]
        wanted = {"base_path": base_path, "model_platform": "tensorflow"}
        for key, value in wanted.items():
            present = [f for f in entry.fields if f.name == key and f.value is not None]
            if key == "model_platform" and not present and any(f.name == "model_type" for f in entry.fields):
                continue  # the deprecated model_type already names the platform
            if present:
                tok = tokens[present[0].value]
                if tok[0] != "string" or _unquote(tok[1]) != value:
                    edits.append((tok[2], tok[3], _quote(value)))
            else:
                close = tokens[entry.close]
                edits.append((close[2], close[2], f"  {key}: {_quote(value)}\n  "))
    else:
        close = tokens[block.close]
        line_start = existing.rfind("\n", 0, close[2]) + 1
        if existing[line_start:close[2]].strip():  # '}' shares its line: start a new one
            edits.append((close[2], close[2], "\n" + _config_block(name, base_path)))
        else:
            edits.append((line_start, line_start, _config_block(name, base_path)))
    text = existing
    for start, end, replacement in sorted(edits, reverse=True):
        text = text[:start] + replacement + text[end:]
    return text


def validate_models_config(text: str, path: str = MODELS_CONFIG):
    """Parses the text with TF Serving's ModelServerConfig proto when
    tensorflow-serving-api is installed; returns the proto or None."""
    try:
        from google.protobuf import text_format
        from tensorflow_serving.config import model_server_config_pb2
    except ImportError:
        return None
    config = model_server_config_pb2.ModelServerConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as e:
        raise ExportError(f"{path}: not a valid TF Serving ModelServerConfig ({_one_line(e)})") from None
    return config


def read_models_config(path: str) -> str | None:
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            return f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise ExportError(f"cannot read {path}: {_one_line(e)}") from None


def plan_models_config(base: str, name: str) -> tuple[str, str, str | None]:
    """(path, new text, old text or None) for adding `name` to `<base>/models.config`;
    validates the existing file up front."""
    base = os.path.abspath(os.path.expanduser(base))
    path = os.path.join(base, MODELS_CONFIG)
    old = read_models_config(path)
    if old is not None:
        validate_models_config(old, path)
    new = models_config_text(old, name, os.path.join(base, name), path)
    validate_models_config(new, path)
    return path, new, old
