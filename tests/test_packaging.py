"""The installable package (pyproject.toml): metadata, console scripts, the
export/ and configs/ mapping into dprime_tf, package data, and the shipped
flagfiles working from any directory. Fast: nothing is installed or built;
one subprocess parses every flagfile with its command's real flags."""

from __future__ import annotations

import ast
import fnmatch
import json
import os
import re
import subprocess
import sys
import tomllib

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
with open(os.path.join(ROOT, "pyproject.toml"), "rb") as _f:
    PYPROJECT = tomllib.load(_f)
SETUPTOOLS = PYPROJECT["tool"]["setuptools"]
PACKAGE_DIR = SETUPTOOLS.get("package-dir", {})

SCRIPTS = {
    "dprime-search": "dprime_tf.search",
    "dprime-train": "dprime_tf.train",
    "dprime-evaluate": "dprime_tf.evaluate",
    "dprime-tune": "dprime_tf.tune",
    "dprime-bench": "dprime_tf.bench",
    "dprime-export": "dprime_tf.export.__main__",
    "dprime-show": "dprime_tf.show",
    "dprime-study": "dprime_tf.study",
}

# The command each shipped flagfile is written for (a new flagfile needs a line here).
RNN_TRAIN = "dprime_tf.train_rnn" if os.path.exists(os.path.join(ROOT, "dprime_tf", "train_rnn.py")) \
    else "dprime_tf.train"
FLAGFILE_COMMAND = {
    "quick.flags": "dprime_tf.search",
    "cifar.flags": "dprime_tf.search",
    "cifar100.flags": "dprime_tf.search",
    "darts.flags": "dprime_tf.search",
    "ptb.flags": "dprime_tf.search",
    "ptb_quick.flags": "dprime_tf.search",
    "cifar_eval.flags": "dprime_tf.train",
    "train_quick.flags": "dprime_tf.train",
    "ptb_train.flags": RNN_TRAIN,
    "ptb_train_quick.flags": RNN_TRAIN,
    "tune.flags": "dprime_tf.tune",
    "study_cifar.flags": "dprime_tf.study",
    "study_cpu.flags": "dprime_tf.study",
    "study_smoke.flags": "dprime_tf.study",
}


def source_dir(package: str) -> str:
    """The checkout's folder of an installed package name, through pyproject's package-dir
    (dprime_tf.export -> export/, dprime_tf.configs -> configs/)."""
    parts = package.split(".")
    for i in range(len(parts), 0, -1):
        prefix = ".".join(parts[:i])
        if prefix in PACKAGE_DIR:
            return os.path.join(ROOT, PACKAGE_DIR[prefix], *parts[i:])
    return os.path.join(ROOT, PACKAGE_DIR.get("", ""), *parts)


def source_file(module: str) -> str:
    package, _, name = module.rpartition(".")
    return os.path.join(source_dir(package), name + ".py")


def parse(path: str) -> ast.Module:
    with open(path, encoding="utf-8") as f:
        return ast.parse(f.read(), path)


def flag_lines(path: str) -> dict:
    """`--name=value` lines of a flagfile as {name: value} (a bare `--name` is "true")."""
    out = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line.startswith("-"):
                name, _, value = line.lstrip("-").partition("=")
                out[name] = value or "true"
    return out


def test_metadata_and_version():
    import dprime_tf
    project = PYPROJECT["project"]
    assert project["name"] == "dprime-tf"
    assert project["requires-python"] == ">=3.11"
    assert "version" in project["dynamic"] and "version" not in project
    assert SETUPTOOLS["dynamic"]["version"] == {"attr": "dprime_tf.__version__"}
    assert re.fullmatch(r"\d+\.\d+\.\d+", dprime_tf.__version__)
    # setuptools reads the version statically: it must be a plain string assignment
    static = [node.value.value for node in parse(os.path.join(ROOT, "dprime_tf", "__init__.py")).body
              if isinstance(node, ast.Assign) and [t.id for t in node.targets if isinstance(t, ast.Name)]
              == ["__version__"] and isinstance(node.value, ast.Constant)]
    assert static == [dprime_tf.__version__]
    with open(os.path.join(ROOT, "CITATION.cff"), encoding="utf-8") as f:
        citation = f.read()
    assert re.search(rf"^version: \"?{re.escape(dprime_tf.__version__)}\"?$", citation, re.M)
    assert "preferred-citation:" in citation and "2106.11655" in citation
    assert project["license"] == "Apache-2.0"
    with open(os.path.join(ROOT, "LICENSE"), encoding="utf-8") as f:
        license_text = f.read()
    assert "Apache License" in license_text and "Version 2.0, January 2004" in license_text


def test_dependency_ranges_accept_the_pinned_lock():
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
    project = PYPROJECT["project"]
    ranges = {}
    for spec in [*project["dependencies"], *sum(project["optional-dependencies"].values(), [])]:
        req = Requirement(spec)
        if canonicalize_name(req.name) != "dprime-tf":
            ranges.setdefault(canonicalize_name(req.name), []).append(req.specifier)
    with open(os.path.join(ROOT, "requirements.txt"), encoding="utf-8") as f:
        pins = [Requirement(line.split("#")[0].strip()) for line in f if line.split("#")[0].strip()]
    for pin in pins:
        (version,) = [s.version for s in pin.specifier if s.operator == "=="]
        name = canonicalize_name(pin.name)
        assert name in ranges, f"{pin.name} is pinned in requirements.txt but not a dependency or extra"
        for specifier in ranges[name]:
            assert specifier.contains(version), f"{pin.name}=={version} is outside {specifier}"
    extras = project["optional-dependencies"]
    assert {"tfds", "tune", "export", "serving", "dev"} <= set(extras)


def test_console_scripts_are_zero_argument_functions_of_the_command_modules():
    scripts = PYPROJECT["project"]["scripts"]
    assert {name: target.partition(":")[0] for name, target in scripts.items()} == SCRIPTS
    for name, target in scripts.items():
        module, _, function = target.partition(":")
        path = source_file(module)
        assert os.path.isfile(path), (name, path)
        tree = parse(path)
        defs = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == function]
        assert len(defs) == 1, f"{path} defines no top-level {function}() for {name}"
        args = defs[0].args
        assert not args.posonlyargs and len(args.args) == len(args.defaults) and all(
            d is not None for d in args.kw_defaults), f"{name}: {function}() must be callable without arguments"
        # `python -m` keeps working: the module still has its __main__ block
        assert any(isinstance(n, ast.If) and "__main__" in ast.unparse(n.test) for n in tree.body), path


def test_packages_cover_the_tree_and_install_no_generic_top_level_names():
    packages = SETUPTOOLS["packages"]
    assert all(p == "dprime_tf" or p.startswith("dprime_tf.") for p in packages), packages
    for package in packages:
        assert os.path.isdir(source_dir(package)), package
    on_disk = {os.path.relpath(d, ROOT).replace(os.sep, ".")
               for d, dirs, files in os.walk(os.path.join(ROOT, "dprime_tf"))
               if "__pycache__" not in d and any(f.endswith(".py") for f in files)}
    missing = on_disk - set(packages)
    assert not missing, f"add {sorted(missing)} to [tool.setuptools] packages in pyproject.toml"
    assert PACKAGE_DIR.get("dprime_tf.export") == "export"
    assert PACKAGE_DIR.get("dprime_tf.configs") == "configs"
    assert "" not in PACKAGE_DIR  # nothing else from the repository root (tests/, export/ as `export`)


def test_package_data_files_exist_and_are_shipped():
    package_data = SETUPTOOLS["package-data"]
    needed = {"dprime_tf.data": ["cifar10_sample.npz", "ptb_sample.txt.gz"]}
    for package, files in needed.items():
        for name in files:
            path = os.path.join(source_dir(package), name)
            assert os.path.isfile(path) and os.path.getsize(path) > 1000, path
            assert any(fnmatch.fnmatch(name, pattern) for pattern in package_data[package]), name
    sources = "".join(open(os.path.join(ROOT, "dprime_tf", "data", m), encoding="utf-8").read()
                      for m in ("images.py", "text.py"))
    assert re.search(r"SAMPLE_PATH = .*__file__.*\"cifar10_sample\.npz\"", sources)
    assert re.search(r"SAMPLE_PATH = .*__file__.*\"ptb_sample\.txt\.gz\"", sources)
    flagfiles = sorted(f for f in os.listdir(source_dir("dprime_tf.configs")) if f.endswith(".flags"))
    assert flagfiles and all(any(fnmatch.fnmatch(f, p) for p in package_data["dprime_tf.configs"])
                             for f in flagfiles)


def test_shipped_flagfiles_are_found_and_self_contained():
    import dprime_tf
    from dprime_tf import flagfiles
    assert os.path.samefile(dprime_tf.configs_dir(), os.path.join(ROOT, "configs"))
    names = flagfiles.flagfile_names()
    assert set(names) == set(FLAGFILE_COMMAND), "map every shipped flagfile to its command in FLAGFILE_COMMAND"
    for name in names:
        path = dprime_tf.config_path(name)
        assert os.path.isabs(path) and os.path.isfile(path)
        assert dprime_tf.config_path(name.removesuffix(".flags")) == path
        # absl resolves a nested --flagfile against the working directory, not the including file
        assert not any(n in ("flagfile", "fromenv", "tryfromenv") for n in flag_lines(path)), \
            f"{name} includes another file: inline its flags so it works from any directory"
    with pytest.raises(FileNotFoundError, match="quick.flags"):
        dprime_tf.config_path("no_such_config")
    with pytest.raises(FileNotFoundError):
        dprime_tf.config_path("../README.md")


def test_darts_flags_is_cifar_flags_with_plain_darts():
    cifar = flag_lines(os.path.join(ROOT, "configs", "cifar.flags"))
    darts = flag_lines(os.path.join(ROOT, "configs", "darts.flags"))
    assert set(darts) == set(cifar)
    assert {k: v for k, v in darts.items() if cifar[k] != v} == {
        "schedule": "fixed", "schedfreq": "1", "split": "half", "reg": "none"}


_PARSE_SCRIPT = r"""
import importlib, json, sys
from absl import flags
FLAGS = flags.FLAGS
baseline = set(FLAGS)
errors = {}
for module, paths in json.loads(sys.argv[1]):
    # a fresh import of the command: its flags only (commands share flag names)
    for name in [n for n in sys.modules if n == "dprime_tf" or n.startswith("dprime_tf.")]:
        del sys.modules[name]
    for name in set(FLAGS) - baseline:
        delattr(FLAGS, name)
    importlib.import_module(module)
    for path in paths:
        try:
            FLAGS(["prog", "--flagfile=" + path])
        except flags.Error as e:
            errors[path] = f"{module}: {e}"
        FLAGS.unparse_flags()
print(json.dumps(errors))
"""


def test_every_shipped_flagfile_parses_with_its_commands_flags_from_another_directory(tmp_path):
    from dprime_tf.flagfiles import config_path
    plan = {}
    for name, module in FLAGFILE_COMMAND.items():
        plan.setdefault(module, []).append(config_path(name))
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run([sys.executable, "-c", _PARSE_SCRIPT, json.dumps(sorted(plan.items()))],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {}


def test_export_imports_itself_relatively():
    """export/ is installed as dprime_tf.export: no module may import it as `export`."""
    for folder in ("export", "dprime_tf"):
        for d, _, files in os.walk(os.path.join(ROOT, folder)):
            for file in (f for f in files if f.endswith(".py")):
                for node in ast.walk(parse(os.path.join(d, file))):
                    names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                             [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
                    assert not any(n == "export" or n.startswith("export.") for n in names), \
                        f"{os.path.join(d, file)}:{node.lineno}: import export relatively"


def test_export_imports_under_the_installed_name():
    import importlib
    import importlib.util
    saved = {n: m for n, m in sys.modules.items() if n == "dprime_tf.export" or n.startswith("dprime_tf.export.")}
    spec = importlib.util.spec_from_file_location("dprime_tf.export", os.path.join(ROOT, "export", "__init__.py"),
                                                  submodule_search_locations=[os.path.join(ROOT, "export")])
    try:
        package = importlib.util.module_from_spec(spec)
        sys.modules["dprime_tf.export"] = package
        spec.loader.exec_module(package)
        pipeline = importlib.import_module("dprime_tf.export.pipeline")
        assert pipeline.ExportError is package.ExportError
        assert pipeline.layout.__name__ == "dprime_tf.export.layout"
    finally:
        for name in [n for n in sys.modules if n == "dprime_tf.export" or n.startswith("dprime_tf.export.")]:
            del sys.modules[name]
        sys.modules.update(saved)


def test_flagfiles_command_prints_paths(capsys):
    from dprime_tf import flagfiles
    assert flagfiles.main(["quick"]) == 0
    assert capsys.readouterr().out.strip() == flagfiles.config_path("quick.flags")
    assert flagfiles.main(["nope"]) == 2
    assert "available:" in capsys.readouterr().err


def test_help_exits_zero_wrapper():
    from dprime_tf.cli_help import help_exits_zero

    def exits(code):
        def parser(argv):
            sys.exit(code)
        return parser

    assert help_exits_zero(lambda argv: argv[1:])(["prog", "x"]) == ["x"]
    for code, expected in ((1, 0), (2, 2), (0, 0)):
        with pytest.raises(SystemExit) as e:
            help_exits_zero(exits(code))(["prog"])
        assert e.value.code == expected
