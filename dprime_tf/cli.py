"""Shared plumbing of the absl command lines: one-line errors, quiet TF logs."""

from __future__ import annotations

import os
import sys


def quiet_tensorflow():
    """`prepare_tensorflow()`, then import TensorFlow now, quietly."""
    prepare_tensorflow()
    import_tensorflow_quietly()


def prepare_tensorflow():
    """Before TensorFlow loads: hide its C++ start-up chatter (CUDA probing,
    oneDNN notices) and, for a command line asking for --deterministic, turn
    oneDNN's CPU kernels off (only possible before the import). Imports nothing
    heavy: a command line calls this at its top, checks its flags, and only then
    imports TensorFlow (`import_tensorflow_quietly`), so bad input fails in a
    fraction of a second instead of after TensorFlow's seconds of start-up."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if "tensorflow" not in sys.modules and deterministic_requested(sys.argv):
        os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    import warnings
    warnings.filterwarnings("ignore", message=".*`shuffle=True` was passed.*")


def deterministic_requested(argv) -> bool:
    """Whether `argv` (flagfiles expanded; with --resume, the run's flags.txt first)
    sets --deterministic. Read before the flags are parsed: oneDNN's CPU kernels
    give results that vary in the last bits from process to process (measured:
    FI 1e-7 apart at the first step, growing through a search), and they can only
    be switched off (TF_ENABLE_ONEDNN_OPTS=0) before TensorFlow is imported. With
    them off, op determinism and one thread, two processes compute bitwise the
    same search, and a resumed run repeats the uninterrupted one."""
    from absl import flags
    try:
        args = flags.FlagValues().read_flags_from_files(list(argv[1:]), force_gnu=False)
    except Exception:  # noqa: BLE001  (a bad flagfile is reported by the real parse)
        return False

    def scan(args, value=False):
        resume, output_dir = False, None
        for arg in args:
            name, _, given = arg.lstrip("-").partition("=")
            if name == "deterministic":
                value = given.lower() not in ("false", "0", "no")
            elif name == "nodeterministic":
                value = False
            elif name == "resume":
                resume = given.lower() not in ("false", "0", "no")
            elif name == "output_dir":
                output_dir = given
        return value, resume, output_dir

    value, resume, output_dir = scan(args)
    saved = os.path.join(output_dir or "", "flags.txt")
    if resume and output_dir and os.path.isfile(saved):  # the run's flags, then the command line's
        try:
            value = scan(args, scan(flags.FlagValues().read_flags_from_files([f"--flagfile={saved}"]))[0])[0]
        except Exception:  # noqa: BLE001
            pass
    return value


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
    settle_garbage_collector()


# Young-generation threshold of Python's cyclic garbage collector (CPython's default: 700).
GC_YOUNG_THRESHOLD = 10_000


def settle_garbage_collector():
    """Once TensorFlow is imported: its modules' millions of objects move out of the
    collector's reach (`gc.freeze`), and the young generation is collected after
    10,000 allocations instead of 700. Tracing a step's graph allocates Python objects
    by the million and keeps most of them, so with the defaults each of the frequent
    full collections walked TensorFlow's modules again: a tiny search's process spent
    1.9 s of its ~22 s CPU collecting, now 0.9 s, at the same peak memory. Garbage
    is still collected, in fewer and shorter passes."""
    import gc
    gc.freeze()
    young, middle, old = gc.get_threshold()
    gc.set_threshold(max(young, GC_YOUNG_THRESHOLD), middle, old)


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

    from dprime_tf.cli_help import help_exits_zero
    app.run(wrapped, flags_parser=help_exits_zero(parse_flags))


# -- flag plumbing shared by the search / train / evaluate command lines -------

def no_positional_arguments(argv):
    from dprime_tf.errors import UserError
    if len(argv) > 1:
        raise UserError(f"unexpected arguments {' '.join(argv[1:])} (flags start with --)")


def reload_flags_for_resume(FLAGS):
    """With --resume: the run's own flags.txt first, then what this command line changes
    (so `--resume --output_dir=<run>` continues the run as it was started)."""
    from absl import flags

    from dprime_tf.errors import UserError
    if not FLAGS.resume:
        return
    if not FLAGS.output_dir:
        raise UserError("--resume needs the --output_dir of the run to continue")
    saved = os.path.join(FLAGS.output_dir, "flags.txt")
    if os.path.exists(saved):
        from dprime_tf.validation import read_config_file
        read_config_file(saved, "flags file")  # a size cap; not UTF-8: one line
        FLAGS.unparse_flags()
        try:
            FLAGS([sys.argv[0], f"--flagfile={saved}"] + sys.argv[1:])
        except flags.Error as e:
            FLAGS.unparse_flags()  # back to the command line's flags: absl reads some after main returns
            FLAGS(sys.argv)
            raise UserError(f"{saved}: {e} (fix or delete that file)") from None


def module_flags_text(FLAGS, module_name: str, exclude=(), extra=()) -> str:
    """The flags defined by `module_name` (minus `exclude`) as a flagfile, plus `extra` lines."""
    own = {f.name for f in FLAGS.get_key_flags_for_module(sys.modules[module_name])} - set(exclude)

    def name(line):  # "--x=1" -> x; a false boolean is written "--nox"
        name = line.lstrip("-").split("=")[0]
        return name[2:] if name not in own and name.startswith("no") else name
    lines = [line for line in FLAGS.flags_into_string().splitlines() if name(line) in own]
    return "".join(f"{line}\n" for line in sorted([*lines, *extra]))


def default_run_dir(kind: str) -> str:
    import time
    return os.path.join("runs", f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}")
