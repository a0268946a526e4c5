"""The ``datapipe`` command line. Exit codes: 0 all good; 2 bad config or usage (one clear
message, no traceback); 3 finished, some items failed (all others written); 1 internal failure.
"""

from __future__ import annotations

import argparse
import logging
import sys
import traceback
from collections.abc import Sequence

from datapipe.errors import ConfigError, ExecutorError, StoreBusyError, StoreError

EXIT_OK, EXIT_INTERNAL, EXIT_USAGE, EXIT_ITEMS = 0, 1, 2, 3


def build_parser() -> argparse.ArgumentParser:
    from datapipe.cli import commands

    parser = argparse.ArgumentParser(prog="datapipe", description=__doc__.split("\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logs and tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:
        logging.getLogger("datapipe").setLevel(logging.INFO)
        for noisy in ("distributed", "dask"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return int(args.func(args) or 0)
    except (ConfigError, StoreBusyError, StoreError) as exc:
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
