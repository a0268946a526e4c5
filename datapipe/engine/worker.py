"""Child process main: builds an ItemRunner from the parent's payload, caps its own memory,
then answers tasks until its input pipe closes. Started by :mod:`datapipe.engine.pool`.

The protocol runs over two inherited pipe fds (never stdout, which stage code may print to).
Tasks arrive pickled (the parent is trusted); results go back as :mod:`datapipe.engine.wire`
messages, data only, so a child taken over by a crafted file cannot run code in the parent.
"""

from __future__ import annotations

import os
import resource
import sys
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from datapipe.engine.runner import ItemResult, ItemTask


def _cap_memory(memory_mb: int) -> None:
    if memory_mb <= 0:
        return
    limit = memory_mb * 2**20
    # RLIMIT_DATA counts heap and anonymous mmaps (Linux >= 4.7), not the shared libraries
    # mapped by imports, so a cap near the real working set does not break `import torch`.
    for which in (resource.RLIMIT_DATA,):
        _soft, hard = resource.getrlimit(which)
        new_hard = limit if hard == resource.RLIM_INFINITY else min(limit, hard)
        resource.setrlimit(which, (min(limit, new_hard), new_hard))


def _message(result: ItemResult, task: ItemTask) -> bytes:
    """``result`` on the wire; an error row for the item when it cannot be sent."""
    from datapipe.engine.runner import ItemResult
    from datapipe.engine.wire import WireError, encode_result

    try:
        return encode_result(result)
    except WireError as exc:
        error = ("invalid", f"the result cannot be sent to the parent: {exc}", "WireError")
    except MemoryError:
        error = ("oom", "ran out of memory sending the result", "MemoryError")
    return encode_result(
        ItemResult.error(
            task.key,
            None,
            *error,
            hash=result.hash,
            elapsed_s=result.elapsed_s,
            attempt=result.attempt,
            stage_s=result.stage_s,
        )
    )


#: the parent's request to close the open shard (see :mod:`datapipe.engine.child_shards`)
FLUSH = "flush"


def main(argv: list[str]) -> int:
    fd_in, fd_out, memory_mb = int(argv[0]), int(argv[1]), int(argv[2])
    os.dup2(2, 1)  # anything printed by stage code goes to stderr
    tasks = Connection(fd_in, readable=True, writable=False)
    results = Connection(fd_out, readable=False, writable=True)
    from datapipe.engine.child_shards import ChildShards
    from datapipe.engine.runner import ItemRunner
    from datapipe.engine.wire import encode_ready

    pipeline, fitted, epoch, target = tasks.recv()
    runner = ItemRunner(pipeline, fitted, epoch)
    shards = ChildShards(target, argv[3]) if target is not None else None
    _cap_memory(memory_mb)
    results.send_bytes(encode_ready(os.getpid()))
    try:
        while True:
            try:
                task = tasks.recv()
            except EOFError:  # the parent is gone: what is not in a closed shard is not kept
                return 0
            if task is None:
                return 0
            if task == FLUSH:
                for message in shards.close() if shards is not None else []:
                    results.send_bytes(message)
                continue
            if shards is not None and task.flush_after:  # a suspect: in a shard of its own
                for message in shards.close():
                    results.send_bytes(message)
            result = runner.run(task)
            after: list[bytes] = []
            if shards is not None and task.encode and result.status == "ok" and result.samples:
                after = shards.add(result)
            if shards is not None and task.flush_after and not after:
                after = shards.close()
            results.send_bytes(_message(result, task))
            for message in after:
                results.send_bytes(message)
    finally:
        if shards is not None:
            shards.abort()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
