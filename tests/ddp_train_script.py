"""README's "Training on a cluster" example, as tests/test_train_ddp.py runs it (2 ranks, gloo):

    torchrun --nproc-per-node 2 tests/ddp_train_script.py TRAIN_OUT VAL_OUT CKPT RESULTS [reselect]

The README's lines appear here in order (the test checks it); the others record, for the
test, the keys each rank reads per epoch, its result and its weights in RESULTS. With
``reselect``, fit re-chooses half the training samples every epoch by EL2N.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from datapipe.models import resnet
from datapipe.stream import from_shards
from datapipe.train import TrainConfig, fit
from datapipe.train.data import key_labels
from datapipe.train.reselect import ReselectConfig, Reselection


class Seen(torch.utils.data.IterableDataset):
    """A stream that records the keys of each epoch's last pass (fit's normalisation
    statistics are a shorter first pass over epoch 0)."""

    def __init__(self, dataset: Any) -> None:
        super().__init__()
        self.dataset, self.collate = dataset, dataset.collate
        self.keys: dict[int, list[str]] = {}

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)

    def select(self, keys: Any) -> int:
        return self.dataset.select(keys)

    def __len__(self) -> int:
        return len(self.dataset)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        keys = self.keys[self.dataset.epoch] = []
        for sample in self.dataset:
            keys.append(sample["key"])
            yield sample


def reselection(out: str) -> Reselection:
    """Half the training samples, re-chosen every epoch by EL2N, each rank scoring all."""
    every = {"rank": 0, "world_size": 1}  # all keys on every rank, not this rank's share
    labels = key_labels(from_shards(out, shuffle=False, fields=["label_id"], **every))
    keys = sorted(labels)
    score_data = from_shards(out, shuffle=False, fields=["image", "label_id"], **every)
    config = ReselectConfig(every=1, fraction=0.5, score="el2n")
    return Reselection(config, keys, [labels[k] for k in keys], score_data, seed=0)


results = Path(sys.argv[4])
# -- README ----------------------------------------------------------------------------------
train_out, val_out, ckpt = sys.argv[1:4]
dist.init_process_group("gloo")  # RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT from torchrun
fields = ["image", "label_id"]
train = from_shards(train_out, seed=0, fields=fields)  # this rank's share of every epoch
train = Seen(train)
val = from_shards(val_out, shuffle=False, fields=fields, even="none")  # each sample once
torch.manual_seed(0)
net = resnet(depth=8, width=8, num_classes=4)
initial = {k: v.clone() for k, v in net.state_dict().items()}
reselect = reselection(train_out) if sys.argv[5:] == ["reselect"] else None
result = fit(
    net,  # fit wraps it in DistributedDataParallel
    DataLoader(train, batch_size=8, collate_fn=train.collate),
    DataLoader(val, batch_size=32, collate_fn=val.collate),
    TrainConfig(epochs=3, batch_size=8, lr=0.05, threads=1, seed=0),
    checkpoint_dir=ckpt,  # on shared storage; only rank 0 writes it
    reselect=reselect,
)
if dist.get_rank() == 0:
    print(result.final["val_accuracy"], result.config.mean, result.config.std)
# -- end of README ---------------------------------------------------------------------------
rank = dist.get_rank()
torch.save(initial, results / f"initial{rank}.pt")
torch.save(net.state_dict(), results / f"rank{rank}.pt")
timings = ("train_s", "data_s", "val_s", "rescore_s")
report = {
    "rank": rank,
    "world_size": dist.get_world_size(),
    "seen": {str(epoch): keys for epoch, keys in train.keys.items()},
    "history": [{k: v for k, v in r.items() if k not in timings} for r in result.history],
    "final": result.final,
    "config": result.config.to_dict(),
    "steps": result.steps,
    "params": result.params,
    "macs": result.macs,
    "skipped": result.skipped,
    "subsets": [entry["keys"] for entry in reselect.log] if reselect is not None else [],
}
(results / f"rank{rank}.json").write_text(json.dumps(report))
dist.destroy_process_group()
