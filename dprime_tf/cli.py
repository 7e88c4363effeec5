"""Shared plumbing of the absl command lines: one-line errors, quiet TF logs."""

from __future__ import annotations

import os
import sys


def quiet_tensorflow():
    """Hide TensorFlow's C++ start-up chatter (CUDA probing, oneDNN notices)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import warnings
    warnings.filterwarnings("ignore", message=".*`shuffle=True` was passed.*")


def run_main(main):
    """absl.app.run(main), turning UserError into `error: <message>` and exit 2."""
    from absl import app

    from dprime_tf.errors import UserError

    def wrapped(argv):
        from absl import logging
        logging.set_verbosity(logging.WARNING)
        try:
            return main(argv)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
        except KeyboardInterrupt:
            print("interrupted: resume with --resume and the same --output_dir", file=sys.stderr)
            sys.exit(130)

    def parse_flags(argv):
        from absl import flags
        try:
            return flags.FLAGS(argv)
        except flags.Error as e:
            print(f"error: {e} (see --helpfull)", file=sys.stderr)
            sys.exit(2)

    app.run(wrapped, flags_parser=parse_flags)
