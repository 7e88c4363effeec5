"""`--help`, `--helpshort`, `--helpfull` and `--helpxml` exit with status 0.

absl prints the usage and exits with status 1 when one of its help flags is
parsed (absl.app.HelpFlag and friends call sys.exit(1) from inside
`FLAGS(argv)`); a command line that answers `--helpfull` should exit 0, as
other tools (and installers' smoke checks) expect. Wrap the flags parser
given to absl.app.run:

    app.run(main, flags_parser=help_exits_zero(parse_flags))

Inside `FLAGS(argv)` nothing but a help flag exits (bad flags raise
flags.Error), so with a parser that reports flags.Error with another status
(dprime_tf.cli.run_main's exits 2) a SystemExit(1) coming out of it is a
help request. Do not wrap absl's default `parse_flags_with_usage`: it exits
1 on a bad flag too.
"""

from __future__ import annotations

import functools


def help_exits_zero(parse_flags):
    """`parse_flags` (argv -> remaining argv), with absl's help exit status 1 turned into 0."""

    @functools.wraps(parse_flags)
    def parse(argv):
        try:
            return parse_flags(argv)
        except SystemExit as e:
            if e.code == 1:
                raise SystemExit(0) from None
            raise

    return parse
