"""Streaming PyTorch datasets over a run's shards or a live pipeline.

- :func:`from_shards` reads the samples ``datapipe run`` wrote (random access into the tar
  shards, one global permutation per epoch);
- :func:`from_pipeline` runs the pipeline's Map stages on the fly in DataLoader workers;
- :class:`Collate` batches their samples, padding variable-size arrays and adding masks by
  the fields' declared shapes; each dataset's ``collate`` attribute is the one for its fields
  (:func:`collate` infers from each batch instead).

Both datasets are ``torch.utils.data.IterableDataset`` s with ``set_epoch(epoch)`` and a
``len()`` per rank. Each epoch every sample (item) appears exactly once across DataLoader
workers and distributed ranks when ``world_size`` divides their number; otherwise ``even``
decides (``"pad"``, the default: some repeat; ``"drop"``: some wait for the next epoch;
``"none"``: rank lengths differ by one), see :mod:`datapipe.stream.split`. A bad sample is
skipped, recorded, never read again and replaced so rank lengths stay equal, see
:mod:`datapipe.stream.base`.

Samples are dicts: ``key`` (str), arrays as tensors (``torch.from_numpy``), JSON scalars as
Python ints, floats and strings.

Examples
--------
>>> from torch.utils.data import DataLoader
>>> from datapipe.stream import from_shards
>>> ds = from_shards("out", seed=0, specs="pipeline.yaml")  # doctest: +SKIP
>>> loader = DataLoader(ds, batch_size=64, num_workers=4, collate_fn=ds.collate)  # doctest: +SKIP
>>> for epoch in range(10):  # doctest: +SKIP
...     ds.set_epoch(epoch)
...     for batch in loader:
...         images, labels = batch["image"], batch["label_id"]
"""

from datapipe.stream.collate import Collate, collate
from datapipe.stream.pipeline_dataset import PipelineDataset, from_pipeline
from datapipe.stream.shard_dataset import ShardDataset, from_shards

__all__ = ["Collate", "PipelineDataset", "ShardDataset", "collate", "from_pipeline", "from_shards"]
