"""The argument parser of the ``datapipe`` command: every sub-command and option, with help
that fits an 80-column terminal. Run-setting limits come from the pipeline schema."""

from __future__ import annotations

import argparse
from pathlib import Path

from datapipe.api import EXECUTORS, limit_text
from datapipe.cli import commands as c
from datapipe.demo.demos import DEFAULT_OUT

DESCRIPTION = "datapipe: turn images, videos and point clouds into sharded training data."
EPILOG = """\
-v and -q also work after the command (datapipe run p.yaml --out OUT -q).

exit codes:
  0  all good
  1  internal failure (--verbose shows the traceback)
  2  bad config or usage: one clear message, no traceback
  3  finished, but some items failed; all others are written
"""


def _verbosity(parser: argparse.ArgumentParser, default: object) -> None:
    parser.add_argument(
        "-v", "--verbose", action="store_true", default=default, help="debug logs and tracebacks"
    )
    parser.add_argument(
        "-q", "--quiet", action="store_true", default=default, help="no progress or summary"
    )


def _add_pipeline_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("pipeline", metavar="PIPELINE", type=Path, help="pipeline YAML file")
    p.add_argument(
        "--var", action="append", metavar="NAME=VALUE", help="set ${NAME} in the file (repeat)"
    )


def _add_exec_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--executor", default="local", choices=EXECUTORS, help="where to run")
    p.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="Dask scheduler, tcp://HOST:PORT (default: $DASK_SCHEDULER_ADDRESS, else a "
        "LocalCluster of --workers processes); needs --executor dask",
    )
    p.add_argument(
        "--workers",
        metavar="N",
        type=c.setting_type("workers", int),
        help=f"worker processes, {limit_text('workers')}; 0 runs in this process when safe "
        "(default: the file's run.workers)",
    )
    p.add_argument(
        "--timeout",
        metavar="SECONDS",
        dest="timeout_s",
        type=c.setting_type("timeout_s", float),
        help=f"time limit per item, {limit_text('timeout_s')} (default: run.timeout_s)",
    )
    p.add_argument(
        "--memory-mb",
        metavar="MIB",
        type=c.setting_type("memory_mb", int),
        help=f"memory cap per worker process, {limit_text('memory_mb')} (default: run.memory_mb)",
    )
    p.add_argument(
        "--retries",
        metavar="N",
        type=c.setting_type("retries", int),
        help=f"extra attempts for timeouts and crashes, {limit_text('retries')} "
        "(default: run.retries)",
    )
    p.add_argument(
        "--retry-errors",
        action="store_true",
        help="process again the items that failed in earlier runs (they stay failed otherwise)",
    )
    p.add_argument(
        "--epoch",
        metavar="N",
        type=c.setting_type("epoch", int),
        help=f"the epoch stages see (ctx.epoch), {limit_text('epoch')}, e.g. for a resize "
        "schedule; part of the fingerprint of epoch-dependent pipelines",
    )


def build_parser() -> argparse.ArgumentParser:
    """The whole ``datapipe`` parser."""
    parser = argparse.ArgumentParser(
        prog="datapipe",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _verbosity(parser, False)
    common = argparse.ArgumentParser(add_help=False)
    _verbosity(common, argparse.SUPPRESS)  # given after the command, or kept from before it
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, summary: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=summary, description=summary, parents=[common])

    p = command("run", "run a pipeline into a sharded output directory")
    _add_pipeline_arg(p)
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="output directory")
    _add_exec_args(p)
    p.add_argument("--report", type=Path, metavar="FILE", help="write the JSON run report here")
    p.set_defaults(func=c.cmd_run)

    p = command("validate", "check a pipeline file without reading any data")
    _add_pipeline_arg(p)
    p.set_defaults(func=c.cmd_validate)

    p = command("describe", "print the DAG; --out dag.png|svg|dot draws it")
    _add_pipeline_arg(p)
    p.add_argument(
        "--out", type=Path, metavar="FILE", help="picture of the DAG (.png, .svg or .dot)"
    )
    p.add_argument("--json", action="store_true", help="machine-readable description")
    p.set_defaults(func=c.cmd_describe)

    p = command("stages", "list every registered stage, or describe one")
    p.add_argument(
        "name", nargs="?", metavar="NAME", help="a stage: its params, fields and an example node"
    )
    p.add_argument(
        "--json", action="store_true", help="JSON: stage name -> kind, description, params"
    )
    p.set_defaults(func=c.cmd_stages)

    p = command("manifest", "summarise a run's output and list failed items")
    p.add_argument("dir", type=Path, metavar="DIR", help="output directory of a run")
    p.add_argument(
        "--limit",
        type=c.count_type(0),
        default=5,
        metavar="N",
        help="failed items shown per error class (default: 5)",
    )
    p.add_argument("--export", type=Path, metavar="FILE", help="write every row as JSON lines")
    p.set_defaults(func=c.cmd_manifest)

    p = command("show", "print the fields of samples in an output directory")
    p.add_argument("dir", type=Path, metavar="DIR", help="output directory of a run")
    p.add_argument("key", nargs="?", metavar="KEY", help="only the sample with this key")
    p.add_argument(
        "--limit", type=c.count_type(1), default=3, metavar="N", help="samples shown (default: 3)"
    )
    p.set_defaults(func=c.cmd_show)

    p = command("predict", "classify files with a trained train.* node, as JSON lines")
    p.add_argument(
        "trainer", type=Path, metavar="TRAINER_DIR", help="a trainer's folder, OUT/train/NODE"
    )
    p.add_argument("files", nargs="+", type=Path, metavar="FILE", help="files to classify")
    p.add_argument(
        "--pipeline",
        type=Path,
        metavar="FILE",
        help="the pipeline file that produced OUT (default: the copy OUT keeps)",
    )
    p.add_argument(
        "--var", action="append", metavar="NAME=VALUE", help="set ${NAME} in the file (repeat)"
    )
    p.add_argument(
        "--workers",
        metavar="N",
        type=c.count_type(1),
        help="isolated worker processes that run the Map stages, >= 1 (default: the file's "
        "run.workers, at least 1)",
    )
    p.add_argument(
        "--threads", metavar="T", type=c.count_type(1), help="torch threads for the model, >= 1"
    )
    p.add_argument(
        "--timeout",
        metavar="SECONDS",
        dest="timeout_s",
        type=c.setting_type("timeout_s", float),
        help=f"time limit per file, {limit_text('timeout_s')} (default: run.timeout_s)",
    )
    p.add_argument(
        "--epoch",
        metavar="N",
        type=c.setting_type("epoch", int),
        help="the epoch the stages see (ctx.epoch; default: the trainer's last epoch when a "
        "stage depends on it, as its validation did, else 0)",
    )
    p.add_argument(
        "--compressed",
        action="store_true",
        help="use the model of the trainer's compress: block (OUT/train/NODE/compressed/)",
    )
    p.set_defaults(func=c.cmd_predict)

    p = command("demo", "generate the built-in sample data and run the demo pipelines")
    p.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        metavar="DIR",
        help=f"demo output folder (default: {DEFAULT_OUT})",
    )
    p.add_argument(
        "--seed",
        type=c.count_type(0),
        default=0,
        metavar="N",
        help="seed of the sample data, >= 0 (default: 0)",
    )
    p.add_argument(
        "--no-train",
        action="store_true",
        help="skip the short training runs at the end (train_image, train_dct, ...)",
    )
    _add_exec_args(p)
    p.set_defaults(func=c.cmd_demo)
    return parser
