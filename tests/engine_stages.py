"""Small stages for the re-run tests: they count their calls in a log file, so a test can
see which items were decoded, even in worker processes. Not registered: tests build their
pipelines from instances."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
from pydantic import Field as PField

from datapipe.errors import ItemError
from datapipe.fields import Field
from datapipe.stage import Context, FilePath, Fit, Map, Params, Record, Sink


class ReadParams(Params):
    log: str = PField("", description="Append each key read to this file ('' to not log).")


class ReadBytes(Map):
    """The file's byte count; logs each call; raises for keys containing 'bad'."""

    name = "test.read_bytes"
    description = "Byte count of the file, with a call log."
    Params = ReadParams
    CONSUMES = (Field("path", "str", ""),)
    PRODUCES = (Field("nbytes", "int64", "1"),)

    def process(self, record: Record, ctx: Context) -> Record:
        if self.params.log:
            with open(self.params.log, "a") as fh:
                fh.write(record["key"] + "\n")
        if "bad" in record["key"]:
            raise ItemError("corrupt", "bad on purpose")
        return {"nbytes": np.array([os.path.getsize(record["path"])], dtype=np.int64)}


class MeanBytes(Fit):
    """Learns the mean of ``nbytes``."""

    name = "test.mean_bytes"
    description = "Fits the mean byte count."
    CONSUMES = (Field("nbytes", "int64", "1"),)

    def fit(self, keys: Sequence[str], view: Mapping[str, Sequence[Any]], ctx: Context) -> dict:
        return {"mean": float(np.mean([v[0] for v in view["nbytes"]]))}


class CenterParams(Params):
    fit_node: str = "fit"


class CenterBytes(Map):
    """``nbytes`` minus the fitted mean."""

    name = "test.center_bytes"
    description = "Subtracts the fitted mean byte count."
    Params = CenterParams
    CONSUMES = (Field("nbytes", "int64", "1"),)
    PRODUCES = (Field("centered", "float64", "1"),)

    def process(self, record: Record, ctx: Context) -> Record:
        return {"centered": record["nbytes"] - ctx.fitted[self.params.fit_node]["mean"]}


class OffsetParams(Params):
    table: FilePath = PField(description="A text file holding one integer.")


class AddOffset(Map):
    """``nbytes`` plus the integer written in the ``table`` file (a FilePath param)."""

    name = "test.add_offset"
    description = "Adds the integer of a file named by a param."
    Params = OffsetParams
    CONSUMES = (Field("nbytes", "int64", "1"),)
    PRODUCES = (Field("shifted", "int64", "1"),)

    def process(self, record: Record, ctx: Context) -> Record:
        offset = int(ctx.resolve(self.params.table).read_text())
        return {"shifted": record["nbytes"] + offset}


class TallyParams(Params):
    note: str = PField("", description="Has no effect on the items.")


class Tally(Sink):
    """Counts the committed samples and writes what its context gave it to its folder."""

    name = "test.tally"
    description = "Counts committed samples into its own folder."
    Params = TallyParams

    def consume(self, records: Iterator[Record], ctx: Context) -> dict:
        keys = sorted(r["key"] for r in records)
        assert ctx.out_dir is not None and ctx.out_dir.is_dir()
        assert ctx.run_dir is not None and (ctx.run_dir / "manifest.sqlite").exists()
        (ctx.out_dir / "seen.txt").write_text("\n".join(keys))
        return {
            "n": len(keys),
            "digest": ctx.samples_digest,
            "shards": len(ctx.shards),
            "out_dir": str(ctx.out_dir),
        }
