"""The ``datapipe`` command line. Exit codes: 0 all good; 2 bad config or usage (one clear
message, no traceback); 3 finished, some items failed (all others written); 1 internal failure.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
from collections.abc import Sequence
from typing import TYPE_CHECKING

from datapipe.errors import ConfigError, ExecutorError, StoreBusyError, StoreError

if TYPE_CHECKING:
    import argparse

EXIT_OK, EXIT_INTERNAL, EXIT_USAGE, EXIT_ITEMS = 0, 1, 2, 3
#: what a shell reports for a writer whose reader went away (128 + SIGPIPE)
EXIT_PIPE = 141


def build_parser() -> argparse.ArgumentParser:
    """The ``datapipe`` argument parser (see :mod:`datapipe.cli.parser`)."""
    from datapipe.cli.parser import build_parser as build

    return build()


def _setup_logging(verbose: bool, quiet: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not verbose:
        logging.getLogger("datapipe").setLevel(logging.WARNING if quiet else logging.INFO)
        for noisy in ("distributed", "dask"):
            logging.getLogger(noisy).setLevel(logging.WARNING)


def _closed_stdout() -> int:
    """The reader of stdout went away (``datapipe manifest OUT | head -1``): end quietly.
    As Python's docs recommend, stdout is pointed at devnull so the final flush cannot fail."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return EXIT_PIPE


def main(argv: Sequence[str] | None = None) -> int:
    from datapipe.cli.commands import UsageError

    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args.verbose, args.quiet)
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
        return code
    except BrokenPipeError:
        return _closed_stdout()
    except (ConfigError, StoreBusyError, StoreError, UsageError) as exc:
        print(f"datapipe: error: {exc}", file=sys.stderr)
        if args.verbose:
            traceback.print_exc()
        return EXIT_USAGE
    except ExecutorError as exc:
        print(f"datapipe: error: {exc}", file=sys.stderr)
        if args.verbose:
            traceback.print_exc()
        return exc.exit_code
    except KeyboardInterrupt:
        print("datapipe: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130
    except Exception as exc:  # the last line of defence: one line, traceback on request
        print(f"datapipe: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
        if args.verbose:
            traceback.print_exc()
        else:
            print("(run with --verbose for the traceback)", file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
