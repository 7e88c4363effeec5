"""Shared plumbing of the absl command lines: one-line errors, quiet TF logs."""

from __future__ import annotations

import os
import sys


def quiet_tensorflow():
    """Hide TensorFlow's C++ start-up chatter (CUDA probing, oneDNN notices):
    set the log level and import TensorFlow now, quietly."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import_tensorflow_quietly()
    import warnings
    warnings.filterwarnings("ignore", message=".*`shuffle=True` was passed.*")


def import_tensorflow_quietly():
    """Imports TensorFlow with file descriptor 2 sent to a temporary file: its
    C++ start-up lines (CUDA probing) appear before any log level applies, and
    would surround a command line's one-line error. Replayed if the import fails."""
    import tempfile
    if "tensorflow" in sys.modules:
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow  # noqa: F401
        except BaseException:
            os.dup2(saved, 2)
            captured.seek(0)
            os.write(2, captured.read())
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def run_main(main):
    """absl.app.run(main), turning UserError into `error: <message>` and exit 2."""
    from absl import app

    from dprime_tf.errors import UserError

    def wrapped(argv):
        from absl import logging
        logging.set_verbosity(logging.ERROR)  # library warnings would break one-line errors
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
