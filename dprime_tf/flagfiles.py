"""Where the shipped absl flagfiles are.

In a checkout they are the repository's `configs/` folder; once installed
(`pip install .`) the same files are package data, `dprime_tf/configs/` in
site-packages. Every shipped flagfile is self-contained (no nested
`--flagfile=` include, whose path absl would resolve against the working
directory), so any of them works from any working directory:

    import dprime_tf
    dprime_tf.config_path("quick.flags")   # absolute path of quick.flags
    dprime_tf.configs_dir()                # the folder holding all of them

    python -m dprime_tf.flagfiles              # the paths of all shipped flagfiles
    python -m dprime_tf.flagfiles quick.flags  # the path of one, e.g. in
    dprime-search --flagfile="$(python -m dprime_tf.flagfiles quick.flags)" --output_dir=run

Nothing here imports TensorFlow.
"""

from __future__ import annotations

import os
import sys

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
SUFFIX = ".flags"


def configs_dir() -> str:
    """Absolute path of the folder of shipped flagfiles: `dprime_tf/configs`
    when installed, the checkout's `configs/` when run from the source tree."""
    for candidate in (os.path.join(_PACKAGE_DIR, "configs"),                   # installed (package data)
                      os.path.join(os.path.dirname(_PACKAGE_DIR), "configs")):  # source checkout
        if os.path.isdir(candidate) and any(name.endswith(SUFFIX) for name in os.listdir(candidate)):
            return candidate
    raise FileNotFoundError(f"no shipped flagfiles next to {_PACKAGE_DIR} (incomplete installation?)")


def flagfile_names() -> list[str]:
    """Sorted file names of the shipped flagfiles (`cifar.flags`, `quick.flags`, ...)."""
    return sorted(name for name in os.listdir(configs_dir()) if name.endswith(SUFFIX))


def config_path(name: str) -> str:
    """Absolute path of the shipped flagfile `name` (`"quick.flags"` or just `"quick"`),
    for `--flagfile=`. Raises FileNotFoundError naming the available ones."""
    file = name if name.endswith(SUFFIX) else name + SUFFIX
    if os.path.basename(file) != file:
        raise FileNotFoundError(f"{name!r}: give a shipped flagfile's name, not a path")
    path = os.path.join(configs_dir(), file)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no shipped flagfile {file!r}; available: {', '.join(flagfile_names())}")
    return path


def main(argv=None) -> int:
    """`python -m dprime_tf.flagfiles [NAME ...]`: the path of each named
    flagfile, or of every shipped one; exit 2 on an unknown name."""
    names = sys.argv[1:] if argv is None else list(argv)
    try:
        for name in names or flagfile_names():
            print(config_path(name))
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
