"""Export a trained model for TF Serving (SavedModel) and, optionally, ONNX.

    python -m export --model=runs/cifar --export_base=exports --name=cifar --version=1 \
        [--onnx=exports/cifar-1.onnx] [--overwrite] [--opset=17]

writes exports/cifar/1/ (saved_model.pb, variables/), adds or updates the
'cifar' entry of exports/models.config, checks the export (signature,
standard ops only, Keras/SavedModel/ONNX parity, loading in a fresh process
without the project) and prints the figures. Any failure: `error: <reason>`
on stderr, exit code 2, nothing written.
"""

import os
import sys
import tempfile

from absl import flags

FLAGS = flags.FLAGS
flags.DEFINE_string("model", None, "Trained model: a .keras file, or a training run directory with model.keras.")
flags.DEFINE_string("export_base", None, "Base directory of the exports (TF Serving's model base paths' parent, "
                    "where models.config is).")
flags.DEFINE_alias("output_dir", "export_base")  # its name before 0.3 (--output_dir is a run directory elsewhere)
flags.DEFINE_string("name", None, "Model name: the directory under --export_base and the name clients use.")
flags.DEFINE_integer("version", None, "Version number: the directory <export_base>/<name>/<version>.")
flags.DEFINE_string("onnx", None, "Also write an ONNX model to this file.")
flags.DEFINE_bool("overwrite", False, "Replace an existing version directory / ONNX file.")
flags.DEFINE_integer("opset", 17, "ONNX opset (13..18).")
flags.DEFINE_integer("image_size", None, "Input height and width; default: the size the model was built for.")
flags.DEFINE_float("tolerance", 1e-4, "Maximum |difference| of logits allowed between Keras, SavedModel and ONNX.")
flags.DEFINE_integer("parity_images", 8, "Random uint8 images in the parity check.")
flags.DEFINE_integer("seed", 0, "Seed of the parity check's images.")
flags.DEFINE_bool("fresh_process_check", True,
                  "Also load and run the SavedModel in a fresh Python process that cannot import the project.")
flags.DEFINE_bool("tf_logs", False, "Show TensorFlow's native (C++) log lines on stderr.")


class _NativeStderr:
    """Sends file descriptor 2 (TensorFlow's C++ logging) to a temporary
    file while Python's sys.stderr keeps the terminal, so a failed export
    prints exactly one line; `replay()` shows the captured lines."""

    def __init__(self):
        sys.stderr.flush()
        self.saved = os.dup(2)
        self.file = tempfile.TemporaryFile()
        os.dup2(self.file.fileno(), 2)
        self.python_stderr = sys.stderr
        sys.stderr = os.fdopen(os.dup(self.saved), "w", buffering=1)

    def restore(self):
        sys.stderr.flush()
        sys.stderr.close()
        sys.stderr = self.python_stderr
        os.dup2(self.saved, 2)
        os.close(self.saved)

    def replay(self):
        self.file.seek(0)
        data = self.file.read()
        if data:
            os.write(2, data)


def main(argv):
    from dprime_tf.cli import no_positional_arguments
    from dprime_tf.errors import UserError

    no_positional_arguments(argv)
    missing = [f"--{f}" for f in ("model", "export_base", "name", "version") if getattr(FLAGS, f) is None]
    if missing:
        raise UserError(f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} required "
                        "(see python -m export --helpshort)")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    native = None if FLAGS.tf_logs else _NativeStderr()
    failure = None
    try:
        from .pipeline import export_model
        export_model(FLAGS.model, FLAGS.export_base, FLAGS.name, FLAGS.version, onnx_path=FLAGS.onnx,
                     overwrite=FLAGS.overwrite, opset=FLAGS.opset, image_size=FLAGS.image_size,
                     tolerance=FLAGS.tolerance, parity_images=FLAGS.parity_images, seed=FLAGS.seed,
                     fresh_process_check=FLAGS.fresh_process_check, log=lambda s: print(s, flush=True))
    except BaseException as e:
        failure = e
        raise
    finally:
        if native:
            native.restore()
            if failure is not None and not isinstance(failure, (UserError, SystemExit, KeyboardInterrupt)):
                native.replay()  # an unexpected failure: show everything for the bug report


def console_main():
    """The `dprime-export` console script (installed as dprime_tf.export): `python -m export`."""
    from dprime_tf.cli import run_main
    run_main(main)


if __name__ == "__main__":
    console_main()
