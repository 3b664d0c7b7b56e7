"""The `charnn` command: argparse subcommands mapped onto plain library functions (one module
per group of commands: training.py, text.py, lab.py; common.py what they share).

Nothing below this module reads sys.argv. A user mistake (CharnnError, or a flag argparse
rejects) is one line on stderr and exit status 2; a bug is a traceback and exit status 1.
Flags are kebab-case spellings of the settings' field names; a flag not given keeps the
setting's default (or, with --resume, the run's saved value).
"""

from __future__ import annotations

import argparse
import os
import sys

from charnn.cli.common import EXIT_INTERRUPTED, EXIT_USER_ERROR, Parser
from charnn.cli.lab import add_capacity, add_cells, add_memorize, add_serve
from charnn.cli.text import add_eval, add_sample, add_score
from charnn.cli.training import add_export, add_prepare, add_train
from charnn.errors import CharnnError


# --- main -------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    from charnn import __version__

    parser = Parser(prog="charnn", description="Character-level recurrent language models.")
    parser.add_argument("--version", action="version", version=f"charnn {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True
    add_train(sub)
    add_sample(sub)
    add_eval(sub)
    add_score(sub)
    add_export(sub)
    add_serve(sub)
    add_prepare(sub)
    add_memorize(sub)
    add_capacity(sub)
    add_cells(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from charnn.train.distributed import ReportedByRankZero

    try:
        args = build_parser().parse_args(argv)
        return args.func(args)
    except ReportedByRankZero:
        return EXIT_USER_ERROR  # rank 0 of a torchrun job printed it
    except CharnnError as e:
        print(f"charnn: error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("charnn: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (charnn sample ... | head): not an error.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
